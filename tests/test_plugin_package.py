"""A third-party plugin package, end to end: tests/plugin_package/ is built into a wheel (offline,
with the hatchling of this environment), installed into a folder, and used by `pipeline` in a
separate process with only PYTHONPATH pointing at that folder: entry-point discovery, `pipeline
stages` naming its distribution and version, its pipeline fragment included as package data
(with the fragment's own relative paths), and a run."""

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
    env = {**os.environ, "PYTHONPATH": str(site), "NO_COLOR": "1"}
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
