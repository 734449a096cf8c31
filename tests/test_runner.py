"""The cache as users see it: what reruns, what does not, and why."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

E = "tp_testplugins:Emit"
L = "tp_testplugins:Length"

CHAIN = f"""
stages:
  a:
    uses: {E}
    with: {{text: hello}}
  b:
    uses: {E}
    inputs: {{src: a.out}}
    with: {{text: "-b"}}
  c:
    uses: {E}
    inputs: {{src: b.out}}
    with: {{text: "-c"}}
  d:
    uses: {E}
    inputs: {{src: a.out}}
    with: {{text: "-d"}}
"""


def records(project) -> list[dict]:
    files = sorted((project.cache / "runs").glob("*/*.json"))
    return [json.loads(f.read_text()) for f in files]


def test_unchanged_rerun_is_a_cache_hit(project) -> None:
    project.spec(CHAIN)
    project.ok("run", "p.yaml")
    assert sorted(project.calls()) == ["a", "b", "c", "d"]
    result = project.ok("run", "p.yaml")
    assert project.calls() == []  # the spy proves no plugin ran
    assert [line.split()[2] for line in result.stdout.splitlines()[1:5]] == ["cached"] * 4
    assert "ok: 4 cached" in result.stdout
    assert (project.artifact("c") / "data.txt").read_text() == "hello-b-c"


def test_parameter_change_reruns_only_that_stage_and_what_depends_on_it(project) -> None:
    project.spec(CHAIN)
    project.ok("run", "p.yaml")
    project.calls()
    project.spec(CHAIN.replace('text: "-b"', 'text: "-B"'))
    result = project.ok("run", "p.yaml", "--explain")
    assert sorted(project.calls()) == ["b", "c"]
    assert 'because parameter text: "-b" -> "-B"' in result.stderr
    assert "because input src (b.out) changed" in result.stderr  # c, through b's new bytes
    assert (project.artifact("c") / "data.txt").read_text() == "hello-B-c"


def test_set_override_changes_the_key_like_an_edit(project) -> None:
    project.spec(CHAIN)
    project.ok("run", "p.yaml")
    project.calls()
    project.ok("run", "p.yaml", "-S", "d.repeat=2")
    assert project.calls() == ["d"]
    assert json.loads(project.ok("show", "p.yaml", "d", "-S", "d.repeat=2", "--json").stdout)["current"]
    project.ok("run", "p.yaml")  # back to the spec's value: still cached
    assert project.calls() == []


def test_input_file_change_reruns_and_a_touch_does_not(project) -> None:
    data = project.write("data/x.txt", "one")
    project.spec(f"stages:\n  a:\n    uses: {E}\n    inputs: {{src: data/x.txt}}\n")
    project.ok("run", "p.yaml")
    assert project.calls() == ["a"]
    os.utime(data, (time.time() + 5, time.time() + 5))  # same bytes, new mtime
    project.ok("run", "p.yaml")
    assert project.calls() == []
    data.write_text("two")
    result = project.ok("run", "p.yaml", "--explain")
    assert project.calls() == ["a"]
    assert "because input src (data/x.txt) changed" in result.stderr
    assert (project.artifact("a") / "data.txt").read_text() == "twohello"


def test_identical_upstream_bytes_stop_the_cascade(project) -> None:
    spec = f"""
    stages:
      a:
        uses: {E}
        with: {{text: hello}}
      n:
        uses: {L}
        inputs: {{src: a.out}}
      c:
        uses: {E}
        inputs: {{src: n.out}}
    """
    project.spec(spec)
    project.ok("run", "p.yaml")
    project.calls()
    project.spec(spec.replace("text: hello", "text: world"))  # same length
    result = project.ok("run", "p.yaml")
    assert project.calls() == ["a", "n"]
    assert "c         cached" in result.stdout


def test_added_and_removed_parameters_invalidate(project) -> None:
    base = f"stages:\n  a:\n    uses: {E}\n    with:\n      text: hi\n"
    project.spec(base + "      tags: [x]\n")
    project.ok("run", "p.yaml")
    project.calls()
    result = project.ok("run", "p.yaml", "--explain", "-S", "a.extra={k: 1}")
    assert project.calls() == ["a"]
    assert "because parameter extra.k added (1)" in result.stderr
    project.spec(base)  # tags removed
    result = project.ok("run", "p.yaml", "--explain")
    assert project.calls() == ["a"]
    assert 'because parameter tags removed (was ["x"])' in result.stderr


def test_dry_run_shows_a_plugin_s_preview_of_a_stage_whose_inputs_exist(project) -> None:
    project.write("in.txt", "four")
    project.write("broken.txt", "broken")
    project.spec(f"""\
        stages:
          a: {{uses: {L}, inputs: {{src: in.txt}}}}
          b: {{uses: {L}, inputs: {{src: a.out}}}}
          c: {{uses: {L}, inputs: {{src: broken.txt}}}}
        """)
    result = project.ok("run", "p.yaml", "--dry-run")
    assert project.calls() == []
    lines = result.stdout.splitlines()  # the plan, previews included, is the dry run's result
    at = lines.index(next(x for x in lines if x.startswith("  ▶ a ")))
    assert lines[at + 1].strip() == "would measure 4 characters"
    assert not any("would measure" in x for x in lines[at + 2:] if "b " in x)  # b's input does not exist yet
    assert "(no preview: ValueError: cannot preview this)" in result.stdout  # a broken preview never stops a plan
    assert "would measure" not in project.ok("status", "p.yaml").output  # status never runs previews
    project.ok("run", "p.yaml")
    assert "would measure" not in project.ok("run", "p.yaml", "--dry-run").output  # cached: nothing to preview


def test_defaults_are_part_of_the_key_and_the_record(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n")
    project.ok("run", "p.yaml")
    stage = records(project)[-1]["stages"]["a"]
    assert stage["parts"]["params"] == {"text": "hello", "repeat": 1, "upper": False, "sleep": 0, "mode": "plain"}


def test_dry_run_plans_without_running(project) -> None:
    project.spec(CHAIN)
    result = project.ok("run", "p.yaml", "--dry-run")
    assert project.calls() == []
    assert "a         will run: never run in this pipeline" in result.stdout
    assert "b         pending: waits for a: reruns only if that changes its inputs" in result.stdout
    # the closing line's stream is pinned in tests/test_streams.py (it is on stderr, unlike the plan)
    assert "plan: 0 cached, 4 to run (nothing was run)" in result.output
    project.ok("run", "p.yaml")
    project.calls()
    result = project.ok("run", "p.yaml", "-n", "-S", "b.repeat=3")
    assert project.calls() == []
    assert "b         will run: parameter repeat: 1 -> 3" in result.stdout
    assert "plan: 2 cached, 2 to run" in result.output


def test_force_all_and_force_one_stage(project) -> None:
    project.spec(CHAIN)
    project.ok("run", "p.yaml")
    project.calls()
    project.ok("run", "p.yaml", "--force")
    assert sorted(project.calls()) == ["a", "b", "c", "d"]
    project.ok("run", "p.yaml", "--force=b")
    assert project.calls() == ["b"]  # same bytes again: c stays cached
    result = project.run("run", "p.yaml", "--force=bb")
    assert result.exit_code == 2 and "there is no stage 'bb'" in result.stderr and "Did you mean 'b'?" in result.stderr


def test_selecting_stages_runs_them_and_what_they_need(project) -> None:
    project.spec(CHAIN)
    project.ok("run", "p.yaml", "b")
    assert project.calls() == ["a", "b"]
    result = project.run("run", "p.yaml", "x")
    assert result.exit_code == 2 and "there is no stage 'x'" in result.stderr


def test_a_failing_stage_fails_the_run_keeps_nothing_and_skips_its_dependents(project) -> None:
    project.spec(f"""
    stages:
      ok:
        uses: {E}
      bad:
        uses: tp_testplugins:Fail
        with: {{message: "it broke"}}
      after:
        uses: {E}
        inputs: {{src: bad.out}}
    """)
    result = project.run("run", "p.yaml")
    assert result.exit_code == 1
    assert "bad       failed" in result.stdout  # the stage's result line
    assert "stage 'bad': RuntimeError: it broke" in result.stderr  # its error, named once, and log: diagnostics
    assert "it broke" not in result.stdout
    log = Path(result.stderr.split("log: ")[1].split()[0])
    assert "Traceback" in log.read_text() and "it broke" in log.read_text()
    assert "after     skipped" in result.stdout
    assert "Traceback" not in result.output
    assert list((project.cache / "tmp").iterdir()) == []  # the half-written output is gone
    rec = records(project)[-1]
    assert rec["status"] == "failed" and rec["stages"]["bad"]["status"] == "failed"
    assert rec["stages"]["bad"]["log"] == str(log)
    assert rec["stages"]["bad"]["error"] == "stage 'bad': RuntimeError: it broke"


def test_keep_going_runs_independent_stages_after_a_failure(project) -> None:
    spec = f"""
    stages:
      bad:
        uses: tp_testplugins:Fail
      z1:
        uses: {E}
      z2:
        uses: {E}
        inputs: {{src: z1.out}}
    """
    project.spec(spec)
    result = project.run("run", "p.yaml")
    assert result.exit_code == 1
    assert project.calls() == ["bad"]  # stopped at the first failure
    result = project.run("run", "p.yaml", "--keep-going")
    assert result.exit_code == 1
    assert project.calls() == ["bad", "z1", "z2"]


def test_independent_stages_run_concurrently_with_jobs(project) -> None:
    project.spec(f"""
    stages:
      left:
        uses: tp_testplugins:Rendezvous
        with: {{me: left, peer: right}}
      right:
        uses: tp_testplugins:Rendezvous
        with: {{me: right, peer: left}}
    """)
    project.ok("run", "p.yaml", "-j", "2")  # each waits until the other has started
    assert sorted(project.calls()) == ["left", "right"]


def test_run_record_holds_keys_parts_digests_and_summaries(project) -> None:
    project.spec(CHAIN)
    project.ok("run", "p.yaml")
    rec = records(project)[-1]
    assert rec["status"] == "ok" and rec["pipeline"] == "p"
    a = rec["stages"]["a"]
    assert a["status"] == "done" and len(a["key"]) == 64 and a["summary"] == {"chars": 5}
    assert a["parts"]["plugin"] == {"name": "emit", "identity": "tp_testplugins:Emit", "version": "1"}
    assert set(a["outputs"]) == {"out"} and a["duration_s"] >= 0
    project.ok("run", "p.yaml")
    again = records(project)[-1]["stages"]["a"]
    assert again["status"] == "cached" and again["key"] == a["key"] and again["outputs"] == a["outputs"]


def test_declared_packages_enter_the_key(project) -> None:
    project.spec("stages:\n  a:\n    uses: tp_testplugins:WithEnv\n")
    project.ok("run", "p.yaml")
    env = records(project)[-1]["stages"]["a"]["parts"]["env"]
    from importlib.metadata import version

    assert env == {"click": version("click"), "no-such-distribution-xyz": "absent"}
    project.spec(f"stages:\n  a:\n    uses: {E}\n")
    project.ok("run", "p.yaml")
    emit_env = records(project)[-1]["stages"]["a"]["parts"]["env"]
    assert emit_env == {}  # nothing undeclared (no library versions, no environment variables)


def test_cache_dir_option_and_environment_variable(project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n")
    project.ok("run", "p.yaml", "--cache-dir", "elsewhere")
    assert (project.root / "elsewhere" / "keys").is_dir() and not project.cache.exists()
    monkeypatch.setenv("TUNEPIPE_CACHE", str(project.root / "envcache"))
    project.ok("run", "p.yaml")
    assert (project.root / "envcache" / "keys").is_dir()
    assert project.calls() == ["a", "a"]


def test_vars_keep_their_type_and_interpolate_in_strings(project) -> None:
    project.spec(f"""
    vars:
      n: 3
      word: hey
      greeting: "${{vars.word}} there"
    stages:
      a:
        uses: {E}
        with: {{text: "${{vars.greeting}}/", repeat: "${{vars.n}}"}}
    """)
    project.ok("run", "p.yaml", "-S", "vars.word=yo")
    assert (project.artifact("a") / "data.txt").read_text() == "yo there/" * 3


def test_unchanged_large_inputs_are_not_reread(project, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunepipe.cache import digests

    data = project.write("data/big.txt", "x" * 100_000)
    old = time.time() - 60
    os.utime(data, (old, old))
    project.spec(f"stages:\n  a:\n    uses: {E}\n    inputs: {{src: data/big.txt}}\n")
    project.ok("run", "p.yaml")
    reads: list[Path] = []
    real = digests.file_digest
    monkeypatch.setattr(digests, "file_digest", lambda p: reads.append(p) or real(p))
    project.ok("run", "p.yaml")
    assert reads == []  # remembered by (device, inode, size, mtime)
    data.write_text("y" * 100_000)
    os.utime(data, (old + 1, old + 1))
    project.ok("run", "p.yaml")
    assert [p for p in reads if ".tunepipe" not in p.parts] == [data.absolute()]  # not the stage's outputs


def test_secrets_never_reach_keys_records_or_logs(project, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    project.spec(f"stages:\n  a:\n    uses: {E}\n    with: {{text: 'key {secret}'}}\n")
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "p.yaml:4:18: error: this value holds the secret in $OPENAI_API_KEY" in result.stderr
    assert secret not in result.output
    project.spec(f"stages:\n  a:\n    uses: tp_testplugins:Leaky\n")
    result = project.ok("run", "p.yaml")
    assert "a: estimated cost $0.12 (key <OPENAI_API_KEY>)" in result.stderr  # ctx.say: a line of its own
    assert secret not in result.output
    everything = b"".join(p.read_bytes() for p in project.cache.rglob("*") if p.is_file())
    assert secret.encode() not in everything
    assert b"<OPENAI_API_KEY>" in everything  # the plugin's log line, redacted


def test_validated_specs_are_reused_without_importing_validation(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n")
    probe = ("import sys\nfrom tunepipe.cli import cli\ntry:\n    cli(['run', '-q', 'p.yaml'])\n"
             "except SystemExit as e:\n    assert e.code == 0, e.code\n"
             "print(sorted(m for m in ('jsonschema', 'networkx', 'yaml') if m in sys.modules))")
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "support")}
    out1 = subprocess.run([sys.executable, "-c", probe], cwd=project.root, env=env, capture_output=True, text=True)
    out2 = subprocess.run([sys.executable, "-c", probe], cwd=project.root, env=env, capture_output=True, text=True)
    assert out1.returncode == 0, out1.stderr
    # stdout: the run's result line (-q), then the probe's
    assert out1.stdout.splitlines()[-1] == "['jsonschema', 'networkx', 'yaml']", out1.stdout
    assert out2.stdout.splitlines()[-1] == "[]", out2.stderr
    project.spec(f"stages:\n  a:\n    uses: {E}\n    with: {{text: changed}}\n")
    out3 = subprocess.run([sys.executable, "-c", probe], cwd=project.root, env=env, capture_output=True, text=True)
    assert out3.stdout.splitlines()[-1] == "['jsonschema', 'networkx', 'yaml']", out3.stdout


def test_results_are_reused_across_projects_sharing_a_cache(project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEPIPE_CACHE", str(project.root / "shared-cache"))
    for name in ("one", "two"):
        project.write(f"{name}/data.txt", "same bytes")
        project.spec(f"name: {name}\nstages:\n  a:\n    uses: {E}\n    inputs: {{src: data.txt}}\n",
                     name=f"{name}/p.yaml")
    project.ok("run", "one/p.yaml")
    result = project.ok("run", "two/p.yaml")
    assert project.calls() == ["a"]  # the second project reused the first one's result
    assert "a         cached" in result.stdout


def test_a_cached_rerun_of_the_data_stages_imports_no_heavy_library(project) -> None:
    """Planning a cached rerun reads records and fingerprints code; it never imports what the stages
    use to do their work (numpy, tiktoken, datasketch, torch, ...)."""
    import shutil
    import subprocess
    import sys

    shutil.copytree(Path(__file__).parents[1] / "pipelines" / "data", project.root / "data")
    project.spec("""\
        stages:
          ingest: {uses: ingest, inputs: {data: [data/marv.jsonl, data/marv.csv]},
                   with: {on_error: skip, sources: [{match: "*.csv", map: {user: "{question}", assistant: "{answer}"}}]}}
          clean: {uses: clean, inputs: {records: ingest.records}, with: {dedupe: near}}
          format: {uses: format, inputs: {records: clean.records}}
          split: {uses: split, inputs: {examples: format.examples}, with: {validation: 0.15}}
          train: {uses: train, inputs: {train: split.train}, with: {backend: openai}}
        """)
    project.ok("run", "p.yaml", "split")
    probe = ("import sys\nfrom tunepipe.cli import cli\ntry:\n    cli(['run', '-q', 'p.yaml', 'split'])\n"
             "except SystemExit as e:\n    assert e.code == 0, e.code\n"
             "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=project.root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.splitlines()[-1].replace("'", '"')))  # after the run's result line
    heavy = {"numpy", "tiktoken", "datasketch", "regex", "torch", "transformers", "peft", "openai", "pyarrow",
             "jsonschema", "networkx", "yaml"}
    assert loaded.isdisjoint(heavy), sorted(loaded & heavy)


def test_an_input_missing_from_the_cache_fails_its_stage_and_cleans_up(tmp_path: Path) -> None:
    """A stored input the cache no longer has (removed meanwhile, or a download that fails on an
    s3:// cache) is the stage's failure with the cache's own words: the run goes on (--keep-going),
    and neither a staging folder nor the stage's log handler is left behind."""
    import logging
    import threading

    from tunepipe.cache.store import LocalStore
    from tunepipe.execute import ArtifactRef, StageJob, execute
    from tunepipe.registry import Registry

    store = LocalStore(tmp_path / "cache")
    job = StageJob(stage="s", uses="tp_testplugins:Emit", key="1" * 64, parts={}, params={"text": "x"},
                   inputs={"src": [ArtifactRef(str(tmp_path / "gone"), "2" * 64, "a.out", stored=True)]},
                   multiple={"src": False}, outputs=["out"], log_path=str(tmp_path / "logs" / "s.log"))
    name = f"tunepipe.stage.s.{job.key[:12]}.{threading.get_ident()}"  # execute's logger for it in this thread
    result = execute(job, store, Registry(search_paths=[]), threading.Event(), lambda _n: None, lambda _t: None)
    assert (result.status, result.user_error) == ("failed", False)
    assert result.error.startswith("the cache has no object 222222222222") and "run the pipeline again" in result.error
    assert not any((store.root / "tmp").iterdir()) and store.record(job.key) is None  # no staging folder left
    assert logging.getLogger(name).handlers == []  # its log file closed
    assert "the cache has no object" in (tmp_path / "logs" / "s.log").read_text()


def test_a_stage_result_becomes_its_outcome_by_name_and_its_error_names_the_stage_once() -> None:
    """Every field a worker's result shares with an outcome is carried over (a field added to both
    cannot be left behind); a failed stage's error gets the stage's name unless it has it already."""
    from dataclasses import fields

    from tunepipe.execute import StageResult
    from tunepipe.plan import StagePlan
    from tunepipe.errors import with_stage, without_stage
    from tunepipe.runner import StageOutcome
    from tunepipe.status import PlanState, Status

    plan = StagePlan("t", PlanState.RUN, key="k", reasons=["forced (--force)"])
    result = StageResult("t", Status.FAILED, summary={"n": 1}, duration=2.5, error="ValueError: x", user_error=True,
                         log_path="/l", node="n1", attempts=2)
    outcome = StageOutcome.of(plan, result)
    assert outcome == StageOutcome("t", "failed", "k", 2.5, {"n": 1}, ["forced (--force)"], "stage 't': ValueError: x",
                                   True, "/l", "n1", 2)
    own = {"name", "key", "reasons"}  # what only the plan knows
    assert {f.name for f in fields(StageOutcome)} - own <= {f.name for f in fields(StageResult)}
    assert with_stage("t", "stage 't': gone") == "stage 't': gone"
    assert with_stage("t", "stage 't' was cancelled") == "stage 't' was cancelled"
    assert with_stage("t", "stage 'tt': other") == "stage 't': stage 'tt': other"
    assert with_stage("t", "") == ""
    assert without_stage("t", "stage 't': gone") == without_stage("t", "gone") == "gone"  # old records: bare
    cancelled = StageOutcome.of(plan, StageResult("t", Status.CANCELLED, error="interrupted"))
    assert cancelled.error == "interrupted"  # only a failure's error is the stage's to name
