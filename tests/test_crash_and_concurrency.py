"""Separate processes: plugin code changes, kill -9 at every commit point, and concurrent runs."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

PLUGIN = '''
from tunepipe.plugins import Port


class Shout:
    name = "shout"
    version = "{version}"
    description = "upper-cases a text"
    params_schema = {{"type": "object", "properties": {{"text": {{"type": "string", "default": "hi"}}}}}}
    inputs = {{}}
    outputs = {{"out": Port("text")}}
    packages = ()

    def run(self, ctx, inputs, params):
        from myplug.helpers import shout{comment}

        (ctx.output("out") / "t.txt").write_text(shout(params["text"]))
        return {{}}
'''


def _run(project, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Exit code, stdout (the run's result: stage lines, summary), stderr (running lines, reasons, messages)."""
    proc = project.subprocess(*args, env=env)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_plugin_code_helper_and_version_changes_invalidate(project) -> None:
    project.write("myplug/__init__.py", "")
    project.write("myplug/helpers.py", "def shout(t):\n    return t.upper()\n")
    project.write("myplug/stage.py", PLUGIN.format(version="1", comment=""))
    project.spec("stages:\n  s:\n    uses: myplug.stage:Shout\n")
    assert "s         done" in _run(project, "run", "p.yaml")[1]
    assert "s         cached" in _run(project, "run", "p.yaml")[1]
    project.write("myplug/stage.py", PLUGIN.format(version="1", comment="  # a comment changes nothing"))
    assert "s         cached" in _run(project, "run", "p.yaml")[1]
    project.write("myplug/helpers.py", "def shout(t):\n    return t.upper() + '!'\n")
    rc, out, err = _run(project, "run", "p.yaml", "--explain")
    assert rc == 0 and "s         done" in out and "because plugin code changed" in err
    project.write("myplug/stage.py", PLUGIN.format(version="2", comment=""))
    rc, out, err = _run(project, "run", "p.yaml", "--explain")
    assert "because plugin version 1 -> 2" in err
    info = json.loads(project.ok("show", "p.yaml", "s", "--json").stdout)
    assert (Path(info["outputs"]["out"]["path"]) / "t.txt").read_text() == "HI!"


CRASH_SPEC = """
stages:
  a:
    uses: tp_testplugins:Big
    with: {mb: 6, hold_while: HOLD}
  b:
    uses: tp_testplugins:Emit
    inputs: {src: a.out}
    with: {text: "!"}
"""


def _outputs(project, cache: str) -> dict[str, str]:
    out = {}
    for stage in ("a", "b"):
        info = json.loads(project.ok("show", "p.yaml", stage, "--json", "--cache-dir", cache).stdout)
        out[stage] = info["outputs"]["out"]["digest"]
    return out


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["inside-plugin", "sigint", "sigterm", "after-plugin", "after-publish",
                                   "after-record"])
def test_kill_9_at_any_point_then_a_rerun_completes_identically(project, point: str) -> None:
    hold = project.root / "hold"
    held = point in ("inside-plugin", "sigint", "sigterm")
    project.spec(CRASH_SPEC.replace("HOLD", str(hold) if held else "''"))
    assert _run(project, "run", "p.yaml", "--cache-dir", "ref")[0] == 0
    reference = _outputs(project, "ref")
    Path(str(hold) + ".started").unlink(missing_ok=True)

    if held:
        hold.write_text("wait")
        proc = project.subprocess("run", "p.yaml")
        _wait_for(Path(str(hold) + ".started"))
        sig = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}.get(point, signal.SIGKILL)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        hold.unlink()
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.returncode == 130 and "interrupted: stopping" in err, err
    else:
        proc = project.subprocess("run", "p.yaml", env={"TUNEPIPE_CRASHPOINT": point})
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL

    # Whatever was published is whole: every artifact matches its digest.
    verify = project.run("cache", "verify", "p.yaml")
    assert verify.exit_code == 0 and "ok: the cache is consistent" in verify.stdout

    rc, out, err = _run(project, "run", "p.yaml")
    assert rc == 0, err
    if point == "inside-plugin":
        assert "took over the lock of stage 'a'" in err and "which died" in err
    if point == "after-record":
        assert "a         cached" in out
    assert _outputs(project, ".tunepipe") == reference
    assert list((project.cache / "tmp").iterdir()) == []
    assert project.run("cache", "verify", "p.yaml").exit_code == 0


@pytest.mark.slow
def test_two_concurrent_runs_compute_each_key_once(project) -> None:
    hold = project.root / "hold"
    hold.write_text("wait")
    spy = project.root / "spy.txt"
    project.spec(CRASH_SPEC.replace("HOLD", str(hold)))
    first = project.subprocess("run", "p.yaml", env={"TP_SPY": str(spy)})
    _wait_for(Path(str(hold) + ".started"))
    second_err = project.root / "second.err"
    with open(second_err, "w") as err_file:
        second = project.subprocess("run", "p.yaml", env={"TP_SPY": str(spy)}, stdout=subprocess.DEVNULL,
                                    stderr=err_file)
        deadline = time.monotonic() + 60
        while "waiting for stage 'a'" not in second_err.read_text():
            assert time.monotonic() < deadline and second.poll() is None, second_err.read_text()
            time.sleep(0.05)
        hold.unlink()
        _, err1 = first.communicate(timeout=120)
        second.wait(timeout=120)
    err2 = second_err.read_text()
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "is computing it" in err2
    ran = [line.split()[0] for line in spy.read_text().splitlines()]
    assert sorted(ran) == ["a", "b"]  # each key computed once across both processes
    assert project.run("cache", "verify", "p.yaml").exit_code == 0


@pytest.mark.slow
def test_concurrent_runs_started_together_agree(project) -> None:
    spy = project.root / "spy.txt"
    stages = "\n".join(f"  s{i}:\n    uses: tp_testplugins:Emit\n    with: {{text: '{i}', sleep: 0.05}}\n"
                       + (f"    inputs: {{src: s{i - 1}.out}}\n" if i else "") for i in range(4))
    project.spec("stages:\n" + stages)
    procs = [project.subprocess("run", "p.yaml", "-j", "2", env={"TP_SPY": str(spy)}) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    ran = sorted(line.split()[0] for line in spy.read_text().splitlines())
    assert ran == ["s0", "s1", "s2", "s3"]


LOCAL_PLUGIN = '''
from tunepipe.plugins import Port


class Echo:
    name = "echo"
    version = "1"
    description = "writes what the helper next to the pipeline says"
    params_schema = {"type": "object"}
    inputs = {}
    outputs = {"out": Port("text")}
    packages = ()

    def run(self, ctx, inputs, params):
        import localhelper  # a lazy import of a sibling module, found next to the pipeline file

        (ctx.output("out") / "t.txt").write_text(localhelper.TEXT)
        return {}
'''


def test_a_project_plugin_and_the_sibling_modules_it_imports_are_fingerprinted(project) -> None:
    project.write("localplug.py", LOCAL_PLUGIN)
    project.write("localhelper.py", "TEXT = 'one'\n")
    project.spec("stages:\n  s:\n    uses: localplug:Echo\n")
    rc, out, err = _run(project, "run", "p.yaml")
    assert rc == 0 and "s         done" in out, out + err
    assert "s         cached" in _run(project, "run", "p.yaml")[1]
    project.write("localhelper.py", "TEXT = 'two'\n")
    rc, out, err = _run(project, "run", "p.yaml", "--explain")
    assert "because plugin code changed" in err, out + err
    info = json.loads(project.ok("show", "p.yaml", "s", "--json").stdout)
    assert (Path(info["outputs"]["out"]["path"]) / "t.txt").read_text() == "two"
