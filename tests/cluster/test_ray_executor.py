"""The Ray executor end to end: ``pipeline run`` as a subprocess against a real two-node Ray
cluster on loopback (see tests/support/ray_cluster.py), or a local Ray the run starts itself,
with the cache in a shared folder or on object storage (moto's S3 server)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from ray_cluster import RayCluster
from ray_local import ray_local  # noqa: F401  (the session's in-process Ray instance)
from s3 import SECRET, s3, s3_server  # noqa: F401  (pytest fixtures)

from tunepipe.cluster.ray_executor import ray_options, threads_for
from tunepipe.runner import RunOptions, executor_setting
from tunepipe.spec.model import Pipeline

Project = Any  # the root conftest's project fixture
PIPELINES = Path(__file__).parents[2] / "pipelines"

SPEC = """\
stages:
  left:
    uses: tp_testplugins:Emit
    with: {{text: left, sleep: {sleep}}}
    resources: {{cpus: 1}}
  right:
    uses: tp_testplugins:Emit
    with: {{text: right, sleep: {sleep}}}
    resources: {{cpus: 1}}
  both:
    uses: tp_testplugins:Emit
    with: {{text: "!"}}
    inputs: {{src: [left.out, right.out]}}
"""


def _run(project: Project, *args: str, env: dict[str, str] | None = None,
         timeout: float = 240) -> tuple[int, str, str]:
    """Exit code, stdout (the run's result: stage lines, summary), stderr (messages such as the
    executor line, errors)."""
    proc = project.subprocess("run", "p.yaml", *args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _record(cache: Path) -> dict:
    (record,) = [p for p in (cache / "runs").glob("*/*.json")]
    return json.loads(record.read_text())


def _outputs(cache: Path) -> dict[str, dict[str, str]]:
    return {name: s["outputs"] for name, s in _record(cache)["stages"].items()}


def _local_outputs(project: Project) -> dict[str, dict[str, str]]:
    code, out, err = _run(project, "--cache-dir", str(project.root / "local-cache"))
    assert code == 0, out + err
    return _outputs(project.root / "local-cache")


@pytest.mark.slow
def test_stages_run_on_both_nodes_with_the_cache_shared_and_match_the_local_executor(
        project: Project, ray_cluster: RayCluster) -> None:
    project.write("p.yaml", SPEC.format(sleep=3))
    expected = _local_outputs(project)
    code, out, err = _run(project, "--address", ray_cluster.address, env=ray_cluster.env)
    assert code == 0, out + err
    assert "executor: Ray cluster with 2 nodes, 2 CPUs" in err
    record = _record(project.cache)
    assert record["executor"] == "ray"
    stages = record["stages"]
    assert {n: s["outputs"] for n, s in stages.items()} == expected  # byte-identical artifacts
    # left and right each hold a node's only CPU at the same time: one ran on each node
    assert {stages["left"]["node_ip"], stages["right"]["node_ip"]} == {"127.0.0.2", "127.0.0.3"}
    assert stages["left"]["node"] != stages["right"]["node"]
    assert all(s["attempts"] == 1 and "lost_on" not in s for s in stages.values())
    # three stages on two nodes, each in a process of its own (max_calls=1): none reuses another's worker
    assert len({(s["node"], s["pid"]) for s in stages.values()}) == 3 and all(s["pid"] > 0 for s in stages.values())
    # one cache for both nodes: a rerun anywhere reuses everything without starting a task
    code, out, err = _run(project, "--address", ray_cluster.address, env=ray_cluster.env)
    assert code == 0 and "3 cached" in out and "executor:" not in out + err, out + err


@pytest.mark.slow
def test_a_node_lost_mid_stage_is_retried_and_the_run_completes(project: Project, ray_cluster: RayCluster) -> None:
    project.write("p.yaml", SPEC.format(sleep=8))
    spy = ray_cluster.tmp / "spy.txt"
    proc = project.subprocess("run", "p.yaml", "--address", ray_cluster.address, env=ray_cluster.env)
    deadline = time.monotonic() + 120
    while not (spy.exists() and len(spy.read_text().splitlines()) >= 2):  # left and right both started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    ray_cluster.kill("worker")  # the machine running one of them is gone
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    stages = _record(project.cache)["stages"]
    retried = [s for s in ("left", "right") if stages[s]["attempts"] == 2]
    assert len(retried) == 1, stages
    again = stages[retried[0]]
    assert again["node_ip"] == "127.0.0.3" and len(again["lost_on"]) == 1 and again["lost_on"][0] != again["node"]
    assert f"{retried[0]}" in (out + err)
    assert len(spy.read_text().splitlines()) == 4  # left, right, the retry, both
    code, text = project.run("cache", "verify", "--cache-dir", str(project.cache)).exit_code, ""
    assert code == 0
    assert not list((project.cache / "tmp").iterdir())  # the lost attempt's staging folder is gone
    assert _outputs(project.cache) == _local_outputs(project)


@pytest.mark.slow
def test_ctrl_c_on_the_driver_leaves_the_cache_consistent(project: Project, tmp_path: Path) -> None:
    project.write("p.yaml", SPEC.format(sleep=30))
    spy = tmp_path / "spy.txt"
    proc = project.subprocess("run", "p.yaml", "--address", "local", env={"TP_SPY": str(spy)})
    deadline = time.monotonic() + 120
    while not (spy.exists() and len(spy.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    assert project.run("cache", "verify", "--cache-dir", str(project.cache)).exit_code == 0
    stages = _record(project.cache)["stages"]
    assert stages["left"]["status"] == "cancelled" and "outputs" not in stages["left"]
    assert not list((project.cache / "keys").glob("*/*.json"))  # nothing half-made was recorded


def test_an_unreachable_cluster_is_a_user_error_at_once(project: Project) -> None:
    from aimock import free_port

    project.write("p.yaml", SPEC.format(sleep=0))
    t0 = time.monotonic()
    code, out, err = _run(project, "--address", f"127.0.0.1:{free_port()}")
    assert code == 2, out + err
    assert "cannot reach the Ray cluster at 127.0.0.1:" in err and "Traceback" not in out + err
    assert time.monotonic() - t0 < 30
    assert _record(project.cache)["status"] == "failed"


def test_a_cluster_that_refuses_the_token_is_a_user_error(project: Project, tmp_path: Path) -> None:
    """Token authentication on (as every multi-node cluster has it) and no token here: Ray's
    AuthenticationError becomes the usual "cannot join" error, exit 2, and the run is recorded failed."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # something answers at the address, as a head would
    try:
        project.write("p.yaml", SPEC.format(sleep=0))
        env = {"RAY_AUTH_MODE": "token", "HOME": str(tmp_path), "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": ""}
        code, out, err = _run(project, "--address", f"127.0.0.1:{listener.getsockname()[1]}", env=env, timeout=120)
    finally:
        listener.close()
    assert code == 2, out + err
    assert "cannot join the Ray cluster at '127.0.0.1:" in err and "token" in err and "Traceback" not in out + err
    assert _record(project.cache)["status"] == "failed"


def test_errors_before_a_stage_runs_come_back_as_its_failure_with_their_text(
        project: Project, tmp_path: Path, ray_local: Any) -> None:  # noqa: F811
    """In the task, before the stage's own run: a cache folder the node does not see, an input file
    that differs there or is missing. Each is the stage's failure with the user error's own words
    (exit 2 then), not Ray's wrapper of it."""
    from tunepipe.cache.store import LocalStore
    from tunepipe.cluster.ray_executor import Messages, run_on_ray
    from tunepipe.execute import ArtifactRef, StageJob

    data = project.write("data.txt", "the planned content\n")
    store = LocalStore(tmp_path / "cache")
    digest = store.digests.path(data)
    job = StageJob(stage="s", uses="tp_testplugins:Emit", key="0" * 64, parts={}, params={"text": "x"},
                   inputs={"src": [ArtifactRef(str(data), digest, "data.txt")]}, multiple={"src": False},
                   outputs=["out"], log_path=str(tmp_path / "s.log"))
    messages = ray_local.remote(Messages).remote()
    task = ray_local.remote(max_calls=1)(run_on_ray)

    missing = ray_local.get(task.remote(job, str(tmp_path / "not-here"), [], messages))
    assert (missing.status, missing.user_error) == ("failed", True)
    assert missing.error.startswith(f"the cache folder {tmp_path / 'not-here'} is not on node ")
    assert "--cache-dir s3://BUCKET/PREFIX" in missing.error and "ray::" not in missing.error

    data.write_text("another copy, on another node\n")
    other = ray_local.get(task.remote(job, str(store.root), [], messages))
    assert (other.status, other.user_error) == ("failed", True)
    assert f"its input data.txt ({data}) on node " in other.error
    assert "has other content than where the run was planned" in other.error and "shared folder" in other.error
    data.unlink()
    gone = ray_local.get(task.remote(job, str(store.root), [], messages))
    assert "cannot be read on node" in gone.error and "No such file or directory" in gone.error
    assert store.record(job.key) is None  # nothing recorded for the key


def test_the_command_line_overrides_the_files_executor(tmp_path: Path) -> None:
    p = Pipeline(name="p", path=tmp_path / "p.yaml", stages={},
                 executor={"type": "ray", "address": "10.0.0.1:6379", "max_retries": 5})
    assert executor_setting(p, RunOptions()) == ("ray", {"address": "10.0.0.1:6379", "max_retries": 5})
    assert executor_setting(p, RunOptions(executor="local")) == ("local", {})
    assert executor_setting(p, RunOptions(address="local"))[1]["address"] == "local"
    plain = Pipeline(name="p", path=tmp_path / "p.yaml", stages={})
    assert executor_setting(plain, RunOptions()) == ("local", {})
    assert executor_setting(plain, RunOptions(address="h:1")) == ("ray", {"address": "h:1", "max_retries": 3})
    assert executor_setting(plain, RunOptions(executor="ray")) == ("ray", {"address": None, "max_retries": 3})


def test_resources_become_ray_task_options() -> None:
    assert ray_options({}, 3) == {"num_cpus": 1, "max_retries": 3, "retry_exceptions": False}
    opts = ray_options({"cpus": 0, "gpus": 1, "memory": 2**30}, 0)
    assert (opts["num_cpus"], opts["num_gpus"], opts["memory"], opts["max_retries"]) == (0, 1, 2**30, 0)
    assert threads_for({"cpus": 2.5}) == 3 and threads_for({"cpus": 0}) == 1


def test_resources_are_checked_and_do_not_enter_the_cache_key(project: Project) -> None:
    project.write("p.yaml", "stages:\n  a:\n    uses: tp_testplugins:Emit\n    resources: {cpus: 1, memory: 2GiB}\n")
    assert project.run("run", "p.yaml").exit_code == 0
    project.write("p.yaml", "stages:\n  a:\n    uses: tp_testplugins:Emit\n    resources: {cpus: 4, gpus: 1}\n")
    result = project.run("run", "p.yaml")
    assert result.exit_code == 0 and "a         cached" in result.stdout
    project.write("p.yaml", "stages:\n  a:\n    uses: tp_testplugins:Emit\n    resources: {memory: lots}\n")
    bad = project.run("validate", "p.yaml")
    assert bad.exit_code == 2 and "p.yaml:4:" in bad.output and "resources.memory" in bad.output
    project.write("p.yaml", "executor: {type: kubernetes}\nstages:\n  a:\n    uses: tp_testplugins:Emit\n")
    bad = project.run("validate", "p.yaml")
    assert bad.exit_code == 2 and "p.yaml:1:" in bad.output


def test_a_cached_run_starts_no_ray_and_matches_the_local_run(project: Project) -> None:
    project.write("p.yaml", SPEC.format(sleep=0))
    expected = _local_outputs(project)
    code, out, err = _run(project, "--address", "local")
    assert code == 0, out + err
    assert "executor: a local Ray instance" in err
    assert _outputs(project.cache) == expected
    for f in (project.cache / "runs").glob("*/*.json"):
        f.unlink()
    code, out, err = _run(project, "--executor", "ray")
    assert code == 0 and "executor:" not in out + err and "3 cached" in out, out + err


@pytest.mark.slow
def test_the_data_stages_on_ray_with_the_cache_on_s3_match_the_local_executor(project: Project, s3) -> None:  # noqa: F811
    """Ray tasks (a local Ray: its workers get this environment, AWS_* included) against the
    object-storage cache: the artifacts are the local executor's, and no secret is written."""
    shutil.copytree(PIPELINES, project.root / "pipelines")
    spec = "pipelines/sarcasm.yaml"
    local = project.subprocess("run", spec, "split", "--cache-dir", str(project.root / "local-cache"))
    out, err = local.communicate(timeout=300)
    assert local.returncode == 0, out + err
    on_ray = project.subprocess("run", spec, "split", "--cache-dir", s3.url, "--address", "local")
    out, err = on_ray.communicate(timeout=300)
    assert on_ray.returncode == 0, out + err
    assert "executor: a local Ray instance" in err
    for stage in ("ingest", "clean", "format", "split"):
        want = json.loads(project.ok("show", spec, stage, "--cache-dir", str(project.root / "local-cache"),
                                     "--json").stdout)
        got = json.loads(project.ok("show", spec, stage, "--cache-dir", s3.url, "--json").stdout)
        assert got["key"] == want["key"]
        assert {n: o["digest"] for n, o in got["outputs"].items()} == \
            {n: o["digest"] for n, o in want["outputs"].items()}
    written = b"".join(p.read_bytes() for p in project.root.rglob("*") if p.is_file() and not p.is_symlink())
    assert SECRET.encode() not in written + s3.all_bytes()
