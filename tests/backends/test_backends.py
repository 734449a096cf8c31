"""The backend seam in the process: the registry (built-ins, entry points, broken ones), the
settings the backends add to the stages, the refusal of another backend's settings with a third
backend, export, the replier contract, and that the stages dispatch by name lookup only.

tests/test_plugin_package.py adds a backend from an installed package and trains and evaluates it
through the real CLI."""

from __future__ import annotations

import ast
import json
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from tunepipe import modelref
from tunepipe.backends import params as B
from tunepipe.backends.contract import Backend, Settings
from tunepipe.backends.local import LocalBackend
from tunepipe.backends.openai import OpenAIBackend
from tunepipe.backends.registry import Backends, installed
from tunepipe.errors import PluginError, UserError
from tunepipe.replies import Decoding, Prompt, Replier, Reply, stream
from tunepipe.spec.schema import with_defaults
from tunepipe.stages.train import Train

SRC = Path(__file__).parents[2] / "src" / "tunepipe"


class Third:
    """A minimal third backend: its own settings in a block, nothing optional."""

    name = "third"
    description = "a test backend"
    defaults = {"model": "m", "epochs": 1, "batch_size": 1}
    train_settings = Settings({"third": {"type": "object", "default": {}, "properties": {"knob": {"default": 1}}}},
                              block="third", operational=("third.knob",), secrets={"third.key_env": "THIRD_KEY"})
    reply_settings = Settings()

    def train(self, ctx: Any, data: Any, params: Any, out: Path) -> dict[str, Any]:
        return {}

    def replier(self, ctx: Any, model: Any, *, base: bool, settings: Any, http_client: Any = None) -> Any:
        return Echo()


class Echo:
    name = "echo"

    def identity(self) -> dict[str, Any]:
        return {"backend": "echo"}

    def info(self) -> dict[str, Any]:
        return {}

    def reply(self, prompts: Any, decoding: Decoding, *, done: Any = None) -> list[Reply]:
        out = [Reply(p.messages[-1]["content"][::-1]) for p in prompts]
        for i, r in enumerate(out):
            if done is not None:
                done(i, r)
        return out

    def close(self) -> None:
        pass


def with_entry_points(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str, **names: str) -> Backends:
    """Backends whose installed ones are ``names`` (entry-point name -> ``module:attr``), with a
    module ``tp_fake_backend`` holding ``source``."""
    (tmp_path / "tp_fake_backend.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "tp_fake_backend", raising=False)
    found = [EntryPoint(name=n, value=v, group="tunepipe.backends") for n, v in names.items()]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: found if group == "tunepipe.backends" else [])
    return Backends()


# --- the registry ------------------------------------------------------------------------------------

def test_the_built_ins_come_first_and_follow_the_contract() -> None:
    backends = installed()
    assert backends.names()[:2] == ["local", "openai"]
    assert isinstance(backends.get("local"), LocalBackend) and isinstance(backends.get("openai"), OpenAIBackend)
    assert all(isinstance(b, Backend) for b in backends.all())
    assert backends.distribution("local") is None


def test_an_unknown_backend_names_the_installed_ones() -> None:
    with pytest.raises(UserError, match="unknown backend 'nope': the installed backends are local, openai"):
        Backends(group="tunepipe.no-such-group").get("nope")


def test_an_installed_backend_is_loaded_from_its_entry_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    module = ("from tunepipe.backends.contract import Settings\n\n"
              "class Third:\n"
              "    name, description = 'third', 'a test backend'\n"
              "    defaults = {'model': 'm', 'epochs': 1, 'batch_size': 1}\n"
              "    train_settings = reply_settings = Settings()\n"
              "    def train(self, ctx, data, params, out): return {}\n"
              "    def replier(self, ctx, model, *, base, settings, http_client=None): return None\n")
    backends = with_entry_points(monkeypatch, tmp_path, module, third="tp_fake_backend:Third")
    assert backends.names() == ["local", "openai", "third"]
    assert backends.get("third").description == "a test backend"
    assert backends.get("third") is backends.get("third")  # loaded once


def test_a_backend_that_fails_to_load_is_named_with_its_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backends = with_entry_points(monkeypatch, tmp_path, "x = 1\nraise RuntimeError('no GPU driver')\n",
                                 broken="tp_fake_backend:Broken")
    with pytest.raises(PluginError, match=r"backend 'broken' \(tp_fake_backend:Broken of an installed package\) "
                                          r"could not be loaded: RuntimeError: no GPU driver \(at .*tp_fake_backend.py:2\)"):
        backends.get("broken")


def test_a_backend_off_the_contract_says_what_it_misses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backends = with_entry_points(monkeypatch, tmp_path, "class Half:\n    name = 'other'\n", half="tp_fake_backend:Half")
    with pytest.raises(PluginError) as e:
        backends.get("half")
    text = str(e.value)
    assert "does not follow the backend contract: 'name' must be 'half' (its entry-point name), not 'other'" in text
    assert "'train_settings' must be a tunepipe.backends.contract.Settings" in text
    assert "'train' must be a method" in text and "docs/backends.md" in text


def test_a_package_may_not_take_a_built_in_s_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backends = with_entry_points(monkeypatch, tmp_path, "", local="tp_fake_backend:Local")
    with pytest.raises(PluginError, match="registers a backend named 'local', the name of a built-in backend"):
        backends.names()


# --- what the backends add to the stages ---------------------------------------------------------------

def test_the_train_stage_is_made_of_the_backends_settings() -> None:
    props = Train.params_schema["properties"]
    assert list(props)[:5] == ["backend", "model", "epochs", "batch_size", "seed"]
    assert set(LocalBackend.train_settings.properties) | {"openai"} == set(props) - set(list(props)[:5])
    assert Train.operational == ("device", "threads", "save_every", "openai.poll_seconds", "openai.max_cost_usd",
                                 "openai.api_key_env", "openai.prices", "openai.context_limits")
    assert Train.packages == ("torch", "transformers", "peft")


def test_a_third_backend_s_settings_are_refused_with_the_others_and_theirs_with_it() -> None:
    local, openai, third = LocalBackend(), OpenAIBackend(), Third()
    every = [local, openai, third]
    schema = {"type": "object", "properties": {"backend": {"default": "local"}, **B.properties(every, B.TRAIN)}}
    defaults = with_defaults(schema, {})

    def problems(chosen: Backend, **given: Any) -> list[tuple[tuple[Any, ...], str, str]]:
        params = with_defaults(schema, given)
        return [(p.path, p.message, p.hint) for p in B.foreign_settings(params, chosen, every, defaults)]

    assert problems(local, third={"knob": 2}) == [(("third", "knob"), "only applies to backend: third",
                                                   "remove it or set backend: third")]
    assert problems(third, merge=True, openai={"suffix": "x"}) == [
        (("merge",), "only applies to backend: local", "remove it or set backend: local"),
        (("openai", "suffix"), "only applies to backend: openai", "remove it or set backend: openai")]
    assert problems(openai, third={"knob": 1}) == []  # its default: nothing was set
    assert B.operational(every, B.TRAIN)[-1] == "third.knob"
    assert B.secret_env([third], B.TRAIN, {"third": {"key_env": "MY_KEY"}}) == ["MY_KEY"]
    assert B.secret_env([third], B.TRAIN, {}) == ["THIRD_KEY"]


# --- export ------------------------------------------------------------------------------------------

def local_model(folder: Path, kind: str = "lora") -> modelref.ModelRef:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    (folder / "tokenizer" / "chat_template.jinja").write_text("{{ messages }}")
    modelref.write(folder, {"backend": "local", "base_model": "smollm2-135m-instruct", "kind": kind,
                            "adapter": "adapter" if kind == "lora" else None, "tokenizer": "tokenizer"})
    return modelref.read(folder, name="train.model")


def test_a_local_model_exports_its_adapter_with_the_tokenizer(tmp_path: Path) -> None:
    ref = local_model(tmp_path / "model")
    done = LocalBackend().export(ref, "hf-adapter", tmp_path / "out")
    assert done.files == ("README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                          "tokenizer.json")
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert "chat template" in done.note


@pytest.mark.parametrize("fmt", ["merged", "gguf"])
def test_a_model_whose_files_do_not_load_is_a_clear_error(tmp_path: Path, fmt: str) -> None:
    """(tests/hf/test_export.py exports real models in every format)"""
    with pytest.raises(UserError, match="cannot load the tokenizer of model"):
        LocalBackend().export(local_model(tmp_path / "model"), fmt, tmp_path / "out")


def test_export_refusals_say_why(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown export format 'onnx': use one of hf-adapter, merged, gguf"):
        LocalBackend().export(local_model(tmp_path / "a"), "onnx", tmp_path / "out")
    with pytest.raises(UserError, match="was fully fine-tuned .* no LoRA adapter"):
        LocalBackend().export(local_model(tmp_path / "b", kind="full"), "hf-adapter", tmp_path / "out")


def test_an_openai_model_exports_its_reference_since_the_weights_stay_at_openai(tmp_path: Path) -> None:
    modelref.write(tmp_path / "model", {"backend": "openai", "base_model": "gpt-4o-mini-2024-07-18",
                                        "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:org:marv:abc"})
    done = OpenAIBackend().export(modelref.read(tmp_path / "model"), "hf-adapter", tmp_path / "out")
    assert done.files == ("model.json",) and "stay at OpenAI" in done.note
    assert json.loads((tmp_path / "out" / "model.json").read_text())["fine_tuned_model"].startswith("ft:")


# --- the model reference -----------------------------------------------------------------------------

def test_the_model_reference_is_written_with_its_format_and_checked_when_read(tmp_path: Path) -> None:
    path = modelref.write(tmp_path, {"backend": "local", "base_model": "m", "format": "old"})
    assert json.loads(path.read_text()) == {"format": "tunepipe-model/1", "backend": "local", "base_model": "m"}
    with pytest.raises(ValueError, match="needs backend"):
        modelref.write(tmp_path, {"base_model": "m"})
    path.write_text(json.dumps({"format": "tunepipe-model/1", "backend": "local"}))
    with pytest.raises(UserError, match="model.json has no base_model: train the model again"):
        modelref.read(tmp_path)
    path.write_text("{")
    with pytest.raises(UserError, match="is not valid JSON"):
        modelref.read(tmp_path)


# --- the replier contract ----------------------------------------------------------------------------

def test_stream_falls_back_to_the_whole_reply() -> None:
    prompt = Prompt([{"role": "user", "content": "abc"}])
    assert isinstance(Echo(), Replier)
    assert list(stream(Echo(), prompt, Decoding())) == ["cba"]

    class Streaming(Echo):
        def stream(self, prompt: Prompt, decoding: Decoding) -> Any:
            yield from "cba"

    assert list(stream(Streaming(), prompt, Decoding())) == ["c", "b", "a"]


# --- dispatch by name only ---------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["stages/train.py", "stages/evaluate.py", "evaluation/run.py",
                                    "evaluation/inputs.py"])
def test_the_stages_never_test_a_backend_s_name(module: str) -> None:
    """They dispatch through the registry: no ``backend == "openai"`` branch may come back."""
    tree = ast.parse((SRC / module).read_text())
    names = {"local", "openai"}
    compared = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
                for side in (node.left, *node.comparators)
                if isinstance(side, ast.Constant) and side.value in names]
    assert compared == [], f"{module} compares with a backend's name at lines {compared}"


def test_the_documented_third_backend_follows_the_contract() -> None:
    """docs/backends.md's example (a shorter tests/plugin_package/src/tp_example/backend.py) is a backend."""
    import re

    from tunepipe.backends.registry import check_backend

    doc = (SRC.parents[1] / "docs" / "backends.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", doc, flags=re.S)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/backends.md", "exec"), namespace)
    wrapped = check_backend("wrapped", namespace["Wrapped"](), "docs/backends.md")
    every = [LocalBackend(), OpenAIBackend(), wrapped]
    assert list(B.properties(every, B.TRAIN))[-1] == "wrapped"
    assert wrapped.resolve({"epochs": "auto", "batch_size": 2, "lora": True})["epochs"] == 3
