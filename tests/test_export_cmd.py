"""`pipeline export` and the export stage through the real CLI: a train stage's model out of the
cache (through its backend's export), any other stage's outputs as writable copies, an OpenAI
model as its reference, and every bad call as one clear line with exit 2."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from aimock import aimock, aimock_factory, aimock_server  # noqa: F401,F811  (pytest fixtures)
from model_out import LOCAL, SYSTEM, train_on_aimock, trained, varied  # noqa: F401  (fixtures too)

EXPORT = """\
  export:
    uses: export
    inputs: {model: train.model, examples: split.train}
    with: {format: FORMAT}
"""


def _front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_a_train_stage_exports_its_adapter_with_a_model_card(trained) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = trained.ok("export", "p.yaml", "--to", "out")
    files = result.stdout.split()
    assert "out/adapter_config.json" in files and "out/README.md" in files and "out/tokenizer.json" in files
    out = trained.root / "out"
    assert all(os.access(f, os.W_OK) for f in out.rglob("*"))  # writable copies, unlike the cache's
    card = _front_matter(out / "README.md")
    assert card["base_model"].endswith("base")
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "20" in text  # examples that trained it
    base = AutoModelForCausalLM.from_pretrained(trained.root / "base")
    PeftModel.from_pretrained(base, out)
    assert not list(trained.root.glob(".out.export-*"))  # nothing left beside it


def test_the_target_must_be_empty_unless_forced_and_is_replaced_whole(trained) -> None:
    (trained.root / "out").mkdir()
    (trained.root / "out" / "old.txt").write_text("x")
    result = trained.run("export", "p.yaml", "--to", "out")
    assert result.exit_code == 2 and "--to out is not empty" in result.output and "--force" in result.output
    assert (trained.root / "out" / "old.txt").exists()
    trained.ok("export", "p.yaml", "--to", "out", "--force")
    assert not (trained.root / "out" / "old.txt").exists() and (trained.root / "out" / "README.md").exists()


def test_another_stage_is_copied_out_one_folder_per_output(trained) -> None:
    trained.ok("export", "p.yaml", "split", "--to", "data-out")
    assert (trained.root / "data-out" / "train" / "train.jsonl").is_file()
    assert (trained.root / "data-out" / "validation" / "validation.jsonl").is_file()
    result = trained.run("export", "p.yaml", "split", "--to", "x", "--format", "gguf")
    assert result.exit_code == 2 and "stage 'split' produces no model" in result.output


@pytest.mark.parametrize("args, message", [
    (["--to", "p.yaml"], "Directory 'p.yaml' is a file"),
    (["nope", "--to", "x"], "p.yaml has no stage 'nope'"),
    (["--to", "x", "--quantize", "f16"], "--quantize needs --format gguf"),
    (["--to", "x", "--format", "zip"], "Invalid value for '--format'"),
])
def test_bad_calls_are_one_clear_line_and_exit_2(trained, args: list[str], message: str) -> None:
    result = trained.run("export", "p.yaml", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_target_is_refused(trained) -> None:
    locked = trained.root / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        result = trained.run("export", "p.yaml", "--to", "locked/out")
    finally:
        locked.chmod(stat.S_IRWXU)
    assert result.exit_code == 2 and "cannot write in" in result.output


def test_an_unwritable_target_is_refused_even_for_root(trained) -> None:
    result = trained.run("export", "p.yaml", "--to", "/proc/tunepipe-export")
    assert result.exit_code == 2 and "--to /proc/tunepipe-export: cannot write in /proc" in result.output


def test_the_export_stage_is_cached_and_its_parameters_checked(trained) -> None:
    trained.spec(LOCAL + EXPORT.replace("FORMAT", "hf-adapter"))
    first = trained.ok("run", "p.yaml")
    assert "export    done" in first.stdout and "format=hf-adapter" in first.stdout
    assert "export    cached" in trained.ok("run", "p.yaml").stdout
    folder = trained.artifact("export", "model")
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "README.md").is_file()
    card = (folder / "README.md").read_text(encoding="utf-8")
    digest = json.loads(trained.ok("show", "p.yaml", "split", "--json").stdout)["outputs"]["train"]["digest"]
    assert digest in card  # the data it was trained on
    trained.spec(LOCAL + EXPORT.replace("FORMAT", "merged").replace("merged}", "merged, quantize: f16}"))
    result = trained.run("validate", "p.yaml")
    assert result.exit_code == 2 and "quantize" in result.output and "applies to format gguf only" in result.output


def test_an_openai_model_exports_its_reference_and_says_why(project, aimock,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    train_on_aimock(project, aimock, monkeypatch, "sk-test-export")
    result = project.ok("export", "p.yaml", "--to", "out", "--format", "merged")
    assert "stay at OpenAI" in result.stderr and "model.json" in result.stdout
    ref = json.loads((project.root / "out" / "model.json").read_text())
    assert ref["backend"] == "openai" and ref["fine_tuned_model"].startswith("ft:")
    assert "sk-test-export" not in "".join(p.read_text() for p in (project.root / "out").rglob("*") if p.is_file())
    assert SYSTEM  # the same data as the chat tests


def test_gguf_on_the_spot_with_a_modelfile_whose_system_prompt_is_the_trainings(trained) -> None:
    result = trained.ok("export", "p.yaml", "--to", "gguf", "--format", "gguf", "--quantize", "f16")
    assert sorted(Path(p).name for p in result.stdout.split()) == ["Modelfile", "README.md", "model-f16.gguf"]
    modelfile = (trained.root / "gguf" / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./model-f16.gguf" in modelfile and f'SYSTEM """{SYSTEM}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    bad = trained.run("export", "p.yaml", "--to", "x", "--system", "Hi")
    assert bad.exit_code == 2 and "--system needs --format gguf" in bad.output


def test_the_export_stage_writes_merged_weights_that_load_without_peft(trained) -> None:
    trained.spec(LOCAL + EXPORT.replace("FORMAT", "merged"))
    trained.ok("run", "p.yaml")
    folder = trained.artifact("export", "model")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert _front_matter(folder / "README.md")["library_name"] == "transformers"
