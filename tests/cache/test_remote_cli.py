"""``--cache-dir s3://...`` through the real CLI against a real S3 server (moto over HTTP): a
pipeline of the built-in data stages runs once and another machine reuses it, an upload killed
halfway leaves nothing visible, two machines compute a stage once, and bad locations are clear
user errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from s3 import SECRET, s3, s3_server  # noqa: F401  (pytest fixtures)

PIPELINES = Path(__file__).parents[2] / "pipelines"

DATA = """
name: marv-data
stages:
  ingest:
    uses: ingest
    inputs: {data: [data/marv.jsonl, data/marv.csv]}
    with:
      on_error: skip
      sources:
        - match: "*.csv"
          map: {system: "Marv is sarcastic.", user: "{question}", assistant: "{answer}"}
  clean:
    uses: clean
    inputs: {records: ingest.records}
    with: {dedupe: exact, redact: [email]}
  format:
    uses: format
    inputs: {records: clean.records}
    with: {target: openai-chat, model: gpt-4o-mini-2024-07-18}
  split:
    uses: split
    inputs: {examples: format.examples}
    with: {validation: 0.2, seed: 7}
"""
STAGES = ("ingest", "clean", "format", "split")


@pytest.fixture
def marv(project):
    shutil.copytree(PIPELINES / "data", project.root / "data")
    project.spec(DATA)
    return project


def statuses(stdout: str, stages: tuple[str, ...] = STAGES) -> dict[str, str]:
    """Each stage's final state in the run's result lines on stdout ("  ✓ clean     cached ...")."""
    out = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in stages:
            out[words[1]] = words[2]
    return out


def shown(project, stage: str, url: str) -> dict:
    return json.loads(project.ok("show", "p.yaml", stage, "--cache-dir", url, "--json").stdout)


def contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_pipeline_on_s3_runs_once_and_another_machine_reuses_it(marv, s3, monkeypatch) -> None:  # noqa: F811
    first = marv.ok("run", "p.yaml", "--cache-dir", s3.url)
    assert statuses(first.stdout) == dict.fromkeys(STAGES, "done")
    before = {stage: shown(marv, stage, s3.url) for stage in STAGES}
    assert Path(before["split"]["outputs"]["train"]["path"]).is_relative_to(marv.root / "node-a")

    monkeypatch.setenv("TUNEPIPE_LOCAL_CACHE", str(marv.root / "node-b"))  # another machine, same bucket
    again = marv.ok("run", "p.yaml", "--cache-dir", s3.url)
    assert statuses(again.stdout) == dict.fromkeys(STAGES, "cached")
    assert not list((marv.root / "node-b" / "objects").glob("*/*"))  # cached stages download nothing
    for stage in STAGES:
        after = shown(marv, stage, s3.url)
        assert after["key"] == before[stage]["key"]
        for name, out in after["outputs"].items():
            assert out["digest"] == before[stage]["outputs"][name]["digest"]
            assert Path(out["path"]).is_relative_to(marv.root / "node-b")
            assert out["files"] == before[stage]["outputs"][name]["files"]
            assert contents(Path(out["path"])) == contents(Path(before[stage]["outputs"][name]["path"]))

    probe = ("import sys\nfrom tunepipe.cli import cli\ntry:\n    cli(['run', '-q', 'p.yaml'])\nexcept SystemExit as e:\n"
             "    assert e.code == 0, e.code\nprint(sorted(m for m in ('s3fs', 'botocore') if m in sys.modules))")
    rerun = subprocess.run([sys.executable, "-c", probe], cwd=marv.root, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "TUNEPIPE_CACHE": s3.url})
    # no request, no S3 library (the probe's line follows the run's result line, -q)
    assert rerun.returncode == 0 and rerun.stdout.splitlines()[-1] == "[]", rerun.stdout + rerun.stderr

    monkeypatch.setenv("TUNEPIPE_CACHE", s3.url)  # the environment variable works like --cache-dir
    verify = marv.ok("cache", "verify")
    assert "ok: the cache is consistent" in verify.stdout
    artifacts = {out["digest"] for info in before.values() for out in info["outputs"].values()}
    assert f"{s3.url}: checked {len(artifacts)} artifacts" in verify.stdout
    records = [k for k in s3.keys() if k.startswith("cache/keys/")]
    gc = marv.ok("cache", "gc")
    assert "gc keeps its 4 records" in gc.stdout
    assert [k for k in s3.keys() if k.startswith("cache/keys/")] == records and len(records) == 4

    written = b"".join(p.read_bytes() for p in marv.root.rglob("*") if p.is_file() and not p.is_symlink())
    assert SECRET.encode() not in written + s3.all_bytes()


@pytest.mark.slow
def test_an_upload_killed_halfway_leaves_nothing_visible(marv, s3) -> None:  # noqa: F811
    crashed = marv.subprocess("run", "p.yaml", "ingest", "--cache-dir", s3.url,
                              env={**s3.env, "TUNEPIPE_CRASHPOINT": "remote-upload"})
    crashed.communicate(timeout=120)
    assert crashed.returncode == -signal.SIGKILL
    keys = s3.keys()
    uploaded = [k for k in keys if k.startswith("cache/objects/")]
    assert len(uploaded) == 1 and uploaded[0].endswith("/records.jsonl")  # one file, no manifest
    assert not [k for k in keys if k.startswith("cache/keys/")]
    assert json.loads(s3.read(next(k for k in keys if k.startswith("cache/locks/"))))["pid"] == crashed.pid

    dry = marv.ok("cache", "gc", "--dry-run", "--cache-dir", s3.url)
    # here: the crashed run's staging folder and its local copy of the artifact; there: the
    # unfinished upload and the dead run's lease
    assert "would remove 0 stage records, 1 artifacts (0.2 MB) and 3 leftovers" in dry.stdout
    assert s3.keys() == keys
    marv.ok("cache", "gc", "--cache-dir", s3.url)  # the unfinished upload and the dead run's lease
    assert s3.keys() == ["cache/tunepipe-cache.json"]

    rerun = marv.ok("run", "p.yaml", "ingest", "--cache-dir", s3.url)
    assert statuses(rerun.stdout) == {"ingest": "done"}
    assert "ok: the cache is consistent" in marv.ok("cache", "verify", "--cache-dir", s3.url).stdout
    assert len([k for k in s3.keys() if k.startswith("cache/objects/") and k.endswith(".json")]) == 2


@pytest.mark.slow
def test_two_machines_compute_a_stage_once(project, s3, tmp_path: Path) -> None:  # noqa: F811
    project.spec("stages:\n  a: {uses: 'tp_testplugins:Emit', with: {text: shared, sleep: 1.5}}\n")
    spy = tmp_path / "spy.txt"
    env = {**s3.env, "TP_SPY": str(spy), "TUNEPIPE_LEASE_TTL": "4"}
    runs = [project.subprocess("run", "p.yaml", "--cache-dir", s3.url,
                               env={**env, "TUNEPIPE_LOCAL_CACHE": str(tmp_path / node)}) for node in ("n1", "n2")]
    results = [(p.wait(timeout=120), *p.communicate()) for p in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    assert len(spy.read_text().splitlines()) == 1  # computed once
    states = sorted(statuses(out, ("a",)).get("a", "") for _, out, _ in results)
    assert states == ["cached", "done"], results
    waiter = next(err for _, _, err in results if "waiting for stage 'a'" in err)
    assert f"on {socket.gethostname()} (since " in waiter and ") is computing it" in waiter


def test_bad_cache_locations_are_user_errors(project, s3, monkeypatch) -> None:  # noqa: F811
    project.spec("stages:\n  a: {uses: 'tp_testplugins:Emit'}\n")

    def fails(*args: str) -> str:
        result = project.run(*args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return result.stderr.split("error: ", 1)[1]  # the header line, if the run got that far, is on stdout

    assert "not 'gs://'" in fails("run", "p.yaml", "--cache-dir", "gs://bucket/cache")
    err = fails("run", "p.yaml", "--cache-dir", "s3://AKIAX:hunter2-password@bucket/cache")
    assert "holds credentials" in err and "hunter2" not in err
    assert "names no valid bucket" in fails("run", "p.yaml", "--cache-dir", "s3:///cache")
    err = fails("run", "p.yaml", "--cache-dir", "s3://no-such-bucket-here/cache")
    assert "the bucket 'no-such-bucket-here' does not exist at http://127.0.0.1:" in err
    err = fails("cache", "verify", "--cache-dir", s3.url)
    assert f"there is no tunepipe cache at {s3.url}" in err
    assert not s3.keys()  # looking created nothing

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries with backoff (3 attempts by default)
    err = fails("run", "p.yaml", "--cache-dir", s3.url)
    assert f"cannot reach http://127.0.0.1:{closed} for the cache {s3.url}" in err and "AWS_ENDPOINT_URL" in err
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    assert "no credentials for the cache" in fails("run", "p.yaml", "--cache-dir", s3.url)
