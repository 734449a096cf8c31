"""``pipeline logs``: a stage's log from its latest run (or a given one), ``-f`` on a running stage;
``pipeline show`` names the log; an interrupted run in ``pipeline runs``."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from history_helpers import E, ids, records

SLOW = f"""
stages:
  a:
    uses: {E}
    with: {{text: "-a", sleep: SLEEP}}
  b:
    uses: {E}
    inputs: {{src: a.out}}
    with: {{text: "-b"}}
"""


def test_the_latest_log_of_a_stage_skips_runs_where_it_was_cached(hist) -> None:
    hist.ok("run", "p.yaml")
    hist.ok("run", "p.yaml", "-S", "b.text=-xyz")
    second, first = ids(hist.ok("runs", "p.yaml").stdout)
    result = hist.ok("logs", "p.yaml", "a")
    assert result.stderr.startswith(f"log of stage a in run {first} (ok): ")
    assert " INFO stage a (tp_testplugins:Emit) key " in result.stdout and " INFO wrote 4 chars\n" in result.stdout
    assert result.stdout.endswith(' {"chars": 4}\n')
    assert "wrote 8 chars" in hist.ok("logs", "p.yaml", "b").stdout  # "in-a-xyz", from the second run
    assert hist.ok("logs", "p.yaml", "b", "--run", first[:4]).stdout.count("wrote 6 chars") == 1
    result = hist.run("logs", "p.yaml", "a", "--run", second)
    assert result.exit_code == 2
    assert result.stderr == (f"error: stage 'a' has no log in run {second}: it was reused from the cache in that "
                             f"run (a cached stage writes no log); its latest log is in run {first}\n")


def test_unknown_stages_matrix_stages_and_stages_that_never_wrote_a_log(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n    matrix: {{n: [1, 2]}}\n    with: {{repeat: '${{matrix.n}}'}}\n"
                 f"  solo:\n    uses: {E}\n")
    project.ok("run", "p.yaml")
    result = project.run("logs", "p.yaml", "slo")
    assert result.exit_code == 2 and result.stderr == (
        "error: no recorded run of p.yaml has a stage 'slo'. Did you mean 'solo'? Stages: a@n=1, a@n=2, solo\n")
    result = project.run("logs", "p.yaml", "a")
    assert result.exit_code == 2 and result.stderr == (
        "error: 'a' is a matrix stage with 2 branches: name one of a@n=1, a@n=2\n")
    assert "wrote 10 chars" in project.ok("logs", "p.yaml", "a@n=2").stdout  # "hello" twice
    for log in records(project)[0].with_suffix("").glob("solo.log"):
        log.unlink()  # as if its log were lost
    result = project.run("logs", "p.yaml", "solo")
    assert result.exit_code == 2 and result.stderr == (
        "error: stage 'solo' has no log in any of the 1 recorded runs of p.yaml: a stage reused from the cache "
        "writes none; `pipeline run p.yaml --force=solo` reruns it\n")


def test_a_failed_stage_s_log_and_show_names_the_log(hist) -> None:
    hist.spec(hist.root.joinpath("p.yaml").read_text() + "  f:\n    uses: tp_testplugins:Fail\n"
              "    with: {message: the disk is made of cheese}\n")
    assert hist.run("run", "p.yaml").exit_code == 1
    out = hist.ok("logs", "p.yaml", "f").stdout
    assert "RuntimeError: the disk is made of cheese" in out
    run = ids(hist.ok("runs", "p.yaml").stdout)[0]
    show = hist.ok("show", "p.yaml", "b").stdout.splitlines()
    log = records(hist)[0].with_suffix("") / "b.log"
    assert show[-1] == f"  log (run {run}): {log}"
    info = json.loads(hist.ok("show", "p.yaml", "b", "--json").stdout)
    assert info["log"] == {"path": str(log), "run": run, "run_id": log.parent.name}


def test_follow_waits_for_the_stage_and_stops_when_the_run_ends(project) -> None:
    project.spec(SLOW.replace("SLEEP", "1.5"))
    proc = project.subprocess("run", "p.yaml")
    try:
        record = _wait_for(lambda: (records(project) or [None])[0])
        _wait_for(lambda: json.loads(record.read_text())["stages"].get("a", {}).get("status") == "running")
        result = project.ok("logs", "p.yaml", "b", "-f")  # b has not started: it waits for it
        assert proc.poll() is not None or json.loads(record.read_text())["status"] == "ok"
    finally:
        proc.wait(timeout=60)
    run = ids(project.ok("runs", "p.yaml").stdout)[0]
    assert result.stderr.splitlines()[:2] == [
        f"log of stage b in run {run} (running): {record.with_suffix('') / 'b.log'}",
        f"waiting for stage 'b' to start in run {run}"]
    assert " INFO stage b (tp_testplugins:Emit) key " in result.stdout and "wrote 4 chars" in result.stdout
    assert result.stdout == (record.with_suffix("") / "b.log").read_text()
    done = project.ok("logs", "p.yaml", "a", "-f")  # the run is over: printed, not followed
    assert "wrote 2 chars" in done.stdout and f"run {run} is not running: nothing to follow" in done.stderr


def test_an_interrupted_run_is_listed_as_such_and_its_log_kept(project) -> None:
    project.spec(SLOW.replace("SLEEP", "60"))
    proc = project.subprocess("run", "p.yaml")
    try:
        record = _wait_for(lambda: (records(project) or [None])[0])
        _wait_for(lambda: (record.with_suffix("") / "a.log").is_file())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = project.ok("runs", "p.yaml").stdout.splitlines()
    assert lines[0].split()[4:] == ["interrupted", "1", "cancelled,", "1", "skipped"]
    assert " INFO stage a (tp_testplugins:Emit) key " in project.ok("logs", "p.yaml", "a").stdout
    result = project.run("logs", "p.yaml", "b")
    assert result.exit_code == 2 and "stage 'b' has no log in any of the 1 recorded runs" in result.stderr


def _wait_for(check, timeout: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except (OSError, ValueError):
            found = None
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")
