"""A third-party plugin package, end to end: tests/plugin_package/ is built into a wheel (offline,
with the hatchling of this environment), installed into a folder, and used by `pipeline` in a
separate process with PYTHONPATH pointing at that folder: entry-point discovery, `pipeline
stages` naming its distribution and version, its pipeline fragment included as package data
(with the fragment's own relative paths), a run, and its model backend `wrapped` (the backend
seam, from outside tunepipe: listed by the train stage, its settings checked, trained and
evaluated through the train and evaluate stages)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent / "plugin_package"


def _pip(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "pip", *args, "--no-index", "--no-deps", "-q",
                          "--disable-pip-version-check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import hatchling  # noqa: F401
    except ImportError:
        pytest.fail("building the example plugin package needs hatchling in this environment "
                    "(it is in tunepipe's `test` extra): pip install -e '.[test]'")
    tmp = tmp_path_factory.mktemp("plugin_package")
    shutil.copytree(PACKAGE, tmp / "src")  # build from a copy: the source tree stays clean
    _pip("wheel", "--no-build-isolation", "-w", str(tmp / "dist"), str(tmp / "src"))
    (wheel,) = (tmp / "dist").glob("tp_example-0.3.0-*.whl")
    _pip("install", "--target", str(tmp / "site"), str(wheel))
    return tmp / "site"


def pipeline(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("TUNEPIPE_CACHE", None)
    return subprocess.run([sys.executable, "-m", "tunepipe", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)


def test_the_installed_plugin_is_discovered_and_listed_with_its_package(site: Path, tmp_path: Path) -> None:
    assert (site / "tp_example" / "fragments" / "text.yaml").is_file()  # package data made it into the wheel
    listing = pipeline(site, tmp_path, "stages")
    assert listing.returncode == 0, listing.stderr
    block = next(b for b in listing.stdout.split("\n\n") if b.startswith("shout "))
    assert block.splitlines()[:3] == ["shout  (version 0.3.0, tp_example:Shout)", "  from   tp-example 0.3.0",
                                      "  Upper-case the text of its inputs and repeat it."]
    full = pipeline(site, tmp_path, "stages", "shout").stdout
    assert "    my_shout:\n      uses: shout\n      inputs:\n        src: [STAGE.OUTPUT]" in full
    assert "        times: 1  # How often to repeat the text" in full
    without = pipeline(tmp_path / "elsewhere", tmp_path, "stages", "shout")  # not installed there
    assert without.returncode == 2 and "unknown plugin 'shout'" in without.stderr


def test_a_pipeline_includes_the_package_s_fragment_and_runs(site: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("quiet notes\n")
    (tmp_path / "p.yaml").write_text(
        "include: [tp_example:fragments/text.yaml]\n"
        "vars: {times: 3}\n"
        "stages:\n"
        "  mine:\n"
        "    template: loud\n"
        "    params: {source: notes.txt}\n"
        "  both:\n"
        "    uses: shout\n"
        "    inputs: {src: [hello.out, mine.out]}\n"
        "    with: {suffix: '?'}\n")
    dag = pipeline(site, tmp_path, "dag", "p.yaml")
    assert dag.returncode == 0, dag.stderr
    greeting = site / "tp_example" / "fragments" / "greeting.txt"
    assert dag.stdout.splitlines() == [
        f"hello  [shout]  <- {greeting} -> src",  # relative to the fragment, inside the package
        "mine   [shout]  <- notes.txt -> src",  # relative to this file
        "both   [shout]  <- hello.out -> src, mine.out -> src",
    ]
    run = pipeline(site, tmp_path, "run", "p.yaml")
    assert run.returncode == 0, run.stderr
    shown = pipeline(site, tmp_path, "show", "p.yaml", "both", "--json")
    out = Path(json.loads(shown.stdout)["outputs"]["out"]["path"]) / "shout.txt"
    assert out.read_text() == "HELLO FROM THE PACKAGE!\nQUIET NOTES!\nQUIET NOTES!\nQUIET NOTES!?\n"
    again = pipeline(site, tmp_path, "run", "p.yaml")
    assert "ok: 3 cached" in again.stdout


def test_mistakes_with_the_package_are_reported_with_lines(site: Path, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "include:\n"
        "  - tp_example:fragments/txt.yaml\n"
        "stages:\n"
        "  a: {template: loud, params: {source: x.txt, times: 0}}\n")
    (tmp_path / "x.txt").write_text("x")
    out = pipeline(site, tmp_path, "validate", "p.yaml")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "p.yaml:2:5: error: the package 'tp_example' has no file 'fragments/txt.yaml'" in out.stderr
    assert "did you mean 'tp_example:fragments/text.yaml'?" in out.stderr
    (tmp_path / "p.yaml").write_text(
        "include: [tp_example:fragments/text.yaml]\n"
        "stages:\n"
        "  a: {template: loud, params: {source: x.txt, times: 0}}\n"
        "  hello: {with: {times: many}}\n")
    out = pipeline(site, tmp_path, "validate", "p.yaml")
    assert "p.yaml:3:54: error: stage 'a' (template loud) parameter 'times': 0 is less than the minimum of 1" \
        in out.stderr
    assert "p.yaml:4:25: error: stage 'hello' (plugin shout) parameter 'times' must be an integer" in out.stderr


# --- a model backend from outside the package ------------------------------------------------------

def _chats(path: Path, questions: list[str]) -> None:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
        {"role": "user", "content": q}, {"role": "assistant", "content": f"{q.rstrip('?')}. Obviously."}]}) + "\n"
        for q in questions))


def _train_and_evaluate(tiny: Path, backend: str, extra: str = "") -> str:
    return f"""\
stages:
  train:
    uses: train
    inputs: {{train: train.jsonl, validation: validation.jsonl, base_model: {tiny}}}
    with: {{backend: {backend}, epochs: 1, batch_size: 4, learning_rate: 0.003, seed: 5, threads: 1{extra}}}
  evaluate:
    uses: evaluate
    inputs: {{model: train.model, examples: validation.jsonl}}
    with: {{metrics: [token_f1, rouge_l], decoding: {{max_new_tokens: 6}}, device: cpu, threads: 1,
            bootstrap: {{samples: 50}}}}
"""


def test_the_package_s_backend_is_listed_and_its_settings_are_checked(site: Path, tmp_path: Path) -> None:
    listing = pipeline(site, tmp_path, "stages", "--json")
    assert listing.returncode == 0, listing.stderr
    train = next(s for s in json.loads(listing.stdout) if s["name"] == "train")
    props = train["params_schema"]["properties"]
    assert props["backend"]["enum"] == ["local", "openai", "wrapped"]
    assert "wrapped: the local backend, wrapped by tp-example" in props["backend"]["description"]
    assert props["wrapped"]["properties"]["tag"]["default"] == ""
    assert "(local default 3; openai default auto; wrapped default 3)" in props["epochs"]["description"]

    (tmp_path / "train.jsonl").write_text("{}\n")
    (tmp_path / "p.yaml").write_text(
        "stages:\n"
        "  a:\n"
        "    uses: train\n"
        "    inputs: {train: train.jsonl}\n"
        "    with: {wrapped: {tag: v1}}\n"
        "  b:\n"
        "    uses: train\n"
        "    inputs: {train: train.jsonl}\n"
        "    with: {backend: openai, lora: {r: 4}}\n"
        "  c:\n"
        "    uses: train\n"
        "    inputs: {train: train.jsonl}\n"
        "    with: {backend: wrapped, lora: {r: 4}, wrapped: {tag: v1}}\n"
        "  d:\n"
        "    uses: train\n"
        "    inputs: {train: train.jsonl}\n"
        "    with: {backend: wrapped, openai: {suffix: x}}\n")
    out = pipeline(site, tmp_path, "validate", "p.yaml")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    text = out.stderr
    assert "p.yaml:5:27: error: stage 'a' (plugin train) parameter 'wrapped.tag': only applies to backend: " \
           "wrapped" in text
    assert "hint: remove it or set backend: wrapped" in text
    assert "p.yaml:9:35: error: stage 'b' (plugin train) parameter 'lora': only applies to backend: local or " \
           "wrapped" in text  # the wrapper shares the local backend's settings
    assert "stage 'c'" not in text
    assert "p.yaml:17:47: error: stage 'd' (plugin train) parameter 'openai.suffix': only applies to backend: " \
           "openai" in text


def test_the_package_s_backend_trains_and_is_evaluated(site: Path, tmp_path: Path, tiny_model: Path) -> None:
    questions = [f"What is the capital of country number {i}?" for i in range(12)]
    _chats(tmp_path / "train.jsonl", questions[:8])
    _chats(tmp_path / "validation.jsonl", questions[8:])
    (tmp_path / "p.yaml").write_text(_train_and_evaluate(tiny_model, "wrapped", ", wrapped: {tag: v1}"))
    run = pipeline(site, tmp_path, "run", "p.yaml")
    assert run.returncode == 0, run.stderr
    assert "train     done" in run.stdout and "evaluate  done" in run.stdout

    shown = json.loads(pipeline(site, tmp_path, "show", "p.yaml", "train", "--json").stdout)
    assert shown["summary"]["tag"] == "v1"
    model = Path(shown["outputs"]["model"]["path"])
    info = json.loads((model / "model.json").read_text())
    assert info["format"] == "tunepipe-model/1" and info["backend"] == "wrapped" and info["tag"] == "v1"
    assert (model / "adapter" / "adapter_model.safetensors").is_file()
    record = json.loads(next((tmp_path / ".tunepipe" / "keys").rglob(f"{shown['key']}.json")).read_text())
    assert record["parts"]["env"]["tp-example"] == "0.3.0"  # the backend's package is in the key

    report = Path(json.loads(pipeline(site, tmp_path, "show", "p.yaml", "evaluate", "--json").stdout)
                  ["outputs"]["report"]["path"])
    doc = json.loads((report / "metrics.json").read_text())
    assert doc["backend"] == "wrapped" and doc["models"]["tuned"].endswith(" [v1]")
    assert doc["generation"]["device"] == "cpu" and doc["generation"]["tuned"]["replies"] == 4

    # the same training through the built-in local backend gives the same weights
    local = tmp_path / "local"
    local.mkdir()
    for name in ("train.jsonl", "validation.jsonl"):
        (local / name).write_text((tmp_path / name).read_text())
    (local / "p.yaml").write_text(_train_and_evaluate(tiny_model, "local"))
    assert pipeline(site, local, "run", "p.yaml", "train").returncode == 0
    same = Path(json.loads(pipeline(site, local, "show", "p.yaml", "train", "--json").stdout)
                ["outputs"]["model"]["path"])
    assert (same / "adapter" / "adapter_model.safetensors").read_bytes() == \
           (model / "adapter" / "adapter_model.safetensors").read_bytes()
    assert "ok: 2 cached" in pipeline(site, tmp_path, "run", "p.yaml").stdout
