"""A spec runs only the code the user chose: ``uses: module:Name`` resolves from the pipeline's folder,
its project, ``TUNEPIPE_PLUGIN_PATH`` or a package that declares ``tunepipe.stages`` entry points;
anything else is refused before it is imported, and a plugin that fails to load is a user error
naming it. Real files, the real CLI (in a separate process where an import side effect matters)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_plugin_package import pipeline as installed_pipeline
from test_plugin_package import site  # noqa: F401 - the built and installed example plugin package

SUPPORT = Path(__file__).parent / "support"
ZEN = "Beautiful is better than ugly"


def plugin_code(cls: str, text: str) -> str:
    """A small real plugin class that writes ``text`` to out/data.txt."""
    return textwrap.dedent(f"""\
        from tunepipe.plugins import Port

        class {cls}:
            name = "{cls.lower()}"
            version = "1"
            description = "writes a fixed text"
            params_schema = {{"type": "object", "additionalProperties": False, "properties": {{}}}}
            inputs = {{}}
            outputs = {{"out": Port("data.txt")}}
            packages = ()

            def run(self, ctx, inputs, params):
                (ctx.output("out") / "data.txt").write_text("{text}")
                return {{}}
        """)


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``pipeline ARGS`` in a fresh process: an import there shows its side effects, and is not cached."""
    full = {**os.environ, "PYTHONPATH": str(SUPPORT), "NO_COLOR": "1", **(env or {})}
    full.pop("TUNEPIPE_CACHE", None)
    return subprocess.run([sys.executable, "-m", "tunepipe", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120)


def test_standard_library_modules_are_refused_before_they_are_imported(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "stages:\n"
        "  zen:\n    uses: this:s\n"
        "  popen:\n    uses: subprocess:Popen\n"
        "  timer:\n    uses: threading:Timer\n"
        "  system:\n    uses: os:system\n")
    for verb in ("validate", "run"):
        out = cli(tmp_path, verb, "p.yaml")
        assert out.returncode == 2, out.stderr
        assert ZEN not in out.stdout + out.stderr  # `this` was never imported
        assert "Traceback" not in out.stderr
        for line, module in ((3, "this"), (5, "subprocess"), (7, "threading"), (9, "os")):
            assert f"p.yaml:{line}:11: error: plugin '{module}:" in out.stderr, out.stderr
            assert f"not importing '{module}', found at " in out.stderr
        assert f"this project ({tmp_path.resolve()})" in out.stderr
        assert "add its folder to TUNEPIPE_PLUGIN_PATH" in out.stderr
    assert not (tmp_path / ".tunepipe" / "objects").exists() or not list((tmp_path / ".tunepipe" / "objects").iterdir())


def test_an_installed_package_without_tunepipe_stages_is_refused(project) -> None:
    project.spec("stages:\n  a:\n    uses: yaml:YAMLObject\n")
    result = project.run("validate", "p.yaml")
    assert result.exit_code == 2
    assert "p.yaml:3:11: error: plugin 'yaml:YAMLObject': not importing 'yaml'" in result.stderr
    assert "a package that provides tunepipe stages" in result.stderr


def test_a_virtualenv_inside_the_project_is_not_the_project_s_own_code(tmp_path: Path) -> None:
    site_dir = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"
    site_dir.mkdir(parents=True)
    marker = tmp_path / "imported.txt"
    (site_dir / "venvpkg_trust.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (tmp_path / "p.yaml").write_text("stages:\n  a:\n    uses: venvpkg_trust:Thing\n")
    out = cli(tmp_path, "validate", "p.yaml", env={"PYTHONPATH": os.pathsep.join([str(SUPPORT), str(site_dir)])})
    assert out.returncode == 2 and "not importing 'venvpkg_trust'" in out.stderr, out.stderr
    assert not marker.exists()


def test_a_module_next_to_the_pipeline_runs(project) -> None:
    project.write("nextdoor_trust.py", plugin_code("NextDoor", "from next door"))
    project.spec("stages:\n  a:\n    uses: nextdoor_trust:NextDoor\n")
    project.ok("run", "p.yaml")
    assert (project.artifact("a") / "data.txt").read_text() == "from next door"


@pytest.mark.parametrize("marker", ["pyproject.toml", ".git"])
def test_a_package_elsewhere_in_the_project_runs(project, marker: str) -> None:
    """The pipeline in project/pipelines/, its plugin in project/<package>/: the project root is the
    nearest folder with pyproject.toml or .git."""
    pkg = f"myplugins_{marker.strip('.').replace('.', '_')}"
    root = project.root / "proj"
    if marker == ".git":
        (root / ".git").mkdir(parents=True)
    else:
        project.write(f"proj/{marker}", "[project]\nname = 'proj'\n")
    project.write(f"proj/{pkg}/__init__.py", "")
    project.write(f"proj/{pkg}/stage.py", plugin_code("Deep", "from the project"))
    project.write("proj/pipelines/p.yaml", f"stages:\n  a:\n    uses: {pkg}.stage:Deep\n")
    project.ok("validate", "proj/pipelines/p.yaml")
    project.ok("run", "proj/pipelines/p.yaml")


def test_without_a_project_marker_only_the_pipeline_s_folder_counts(tmp_path: Path) -> None:
    (tmp_path / "sibling_trust.py").write_text(plugin_code("Sib", "x"))
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.yaml").write_text("stages:\n  a:\n    uses: sibling_trust:Sib\n")
    out = cli(tmp_path / "pipelines", "validate", "p.yaml", env={"PYTHONPATH": f"{SUPPORT}{os.pathsep}{tmp_path}"})
    assert out.returncode == 2 and "not importing 'sibling_trust'" in out.stderr, out.stderr


@pytest.mark.parametrize(("code", "expect"), [
    ("raise RuntimeError('no config file')\n", "importing 'failing_plug' failed: RuntimeError: no config file (at "),
    ("import sys\nsys.exit(3)\n", "importing 'failing_plug' failed: SystemExit: 3 (at "),
    ("import not_installed_anywhere_xyz\n",
     "importing 'failing_plug' failed: No module named 'not_installed_anywhere_xyz'"),
    ("class P:\n    def __init__(self, size):\n        self.size = size\n",
     "creating P() failed: TypeError: P.__init__() missing 1 required positional argument: 'size'"),
], ids=["raises", "sys-exit", "missing-dependency", "constructor-needs-arguments"])
def test_a_plugin_that_fails_to_load_is_a_user_error_naming_it(tmp_path: Path, code: str, expect: str) -> None:
    (tmp_path / "failing_plug.py").write_text(code)
    (tmp_path / "p.yaml").write_text("stages:\n  a:\n    uses: failing_plug:P\n")
    for verb in ("validate", "run"):
        out = cli(tmp_path, verb, "p.yaml")
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr
        assert "p.yaml:3:11: error: plugin 'failing_plug:P': " in out.stderr
        assert expect in out.stderr, out.stderr


def test_tunepipe_plugin_path_makes_a_shared_folder_usable(project, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = project.root.parent / f"{project.root.name}-shared"
    shared.mkdir()
    (shared / "shared_trust.py").write_text(plugin_code("Shared", "shared"))
    project.spec("stages:\n  a:\n    uses: shared_trust:Shared\n")
    monkeypatch.delenv("TUNEPIPE_PLUGIN_PATH")
    assert "no module named 'shared_trust'" in project.run("validate", "p.yaml").stderr
    monkeypatch.syspath_prepend(str(shared))  # importable, but not chosen as a plugin folder
    refused = project.run("validate", "p.yaml")
    assert refused.exit_code == 2 and "not importing 'shared_trust'" in refused.stderr
    monkeypatch.setenv("TUNEPIPE_PLUGIN_PATH", os.pathsep.join(["/no/such/folder", str(shared)]))
    project.ok("run", "p.yaml")
    assert (project.artifact("a") / "data.txt").read_text() == "shared"


def test_tunepipe_plugin_path_alone_makes_the_folder_importable(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "shared_only_trust.py").write_text(plugin_code("Shared", "shared"))
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "p.yaml").write_text("stages:\n  a:\n    uses: shared_only_trust:Shared\n")
    out = cli(tmp_path / "proj", "run", "p.yaml", env={"TUNEPIPE_PLUGIN_PATH": str(shared)})
    assert out.returncode == 0, out.stderr


def test_the_installed_plugin_package_is_usable_by_module_name(site: Path, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "notes.txt").write_text("quiet\n")
    (tmp_path / "p.yaml").write_text(
        "stages:\n  a:\n    uses: tp_example:Shout\n    inputs: {src: notes.txt}\n")
    out = installed_pipeline(site, tmp_path, "run", "p.yaml")
    assert out.returncode == 0, out.stderr
    listing = installed_pipeline(site, tmp_path, "stages", "tp_example:Shout")
    assert listing.returncode == 0 and "from   tp-example 0.3.0" in listing.stdout, listing.stdout
