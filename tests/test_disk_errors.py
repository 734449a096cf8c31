"""A cache folder that cannot be written: read-only, under a file, or full. Clear errors, no traceback.

Real file systems, not mocks: the runs happen in a private mount namespace (``unshare -rm``, no
privileges needed) where the cache folder is bind-mounted read-only, or is a tmpfs of a few kB.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PIPELINE = """\
name: disk
stages:
  ingest: {uses: ingest, inputs: {data: data.jsonl}}
  clean: {uses: clean, inputs: {records: ingest.records}}
  split: {uses: split, inputs: {examples: clean.records}, with: {validation: 2, seed: 7}}
"""
ROW = ('{"messages": [{"role": "user", "content": "question %d, with some words to make it longer"}, '
       '{"role": "assistant", "content": "answer %d, also with a few words"}]}\n')
PIPELINE_CMD = [sys.executable, "-m", "tunepipe"]


def _namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces(), reason="needs unshare -rm (user and mount namespaces)")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "data.jsonl").write_text("".join(ROW % (i, i) for i in range(40)))
    (tmp_path / "p.yaml").write_text(PIPELINE)
    return tmp_path


def _sh(project: Path, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a private mount namespace, in the project; $PIPELINE is the command."""
    command = " ".join(PIPELINE_CMD)
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"PIPELINE='{command}'; {script}"], cwd=project,
                          capture_output=True, text=True, timeout=120)


def _clean(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr, result.stderr


READ_ONLY = "mount --bind .tunepipe .tunepipe && mount -o remount,bind,ro .tunepipe && "


@needs_namespaces
def test_a_cached_run_on_a_read_only_cache_succeeds_and_says_it_kept_no_record(project: Path) -> None:
    first = subprocess.run([*PIPELINE_CMD, "run", "p.yaml"], cwd=project, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    result = _sh(project, READ_ONLY + "exec $PIPELINE run p.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok: 3 cached" in result.stdout
    assert "the run record was not written" in result.stderr and "read-only file system" in result.stderr
    _clean(result)
    for verb in ("status p.yaml", "show p.yaml split", "cache verify p.yaml"):
        looked = _sh(project, READ_ONLY + f"exec $PIPELINE {verb}")
        assert looked.returncode == 0, (verb, looked.stderr)
        _clean(looked)


@needs_namespaces
@pytest.mark.parametrize("verb", ["run p.yaml -S split.seed=8", "cache gc p.yaml"])
def test_work_that_must_write_to_a_read_only_cache_is_a_user_error(project: Path, verb: str) -> None:
    assert subprocess.run([*PIPELINE_CMD, "run", "p.yaml"], cwd=project, capture_output=True).returncode == 0
    subprocess.run([*PIPELINE_CMD, "run", "p.yaml", "-S", "split.seed=9"], cwd=project, capture_output=True)
    result = _sh(project, READ_ONLY + f"exec $PIPELINE {verb}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "read-only file system" in result.stderr and "--cache-dir" in result.stderr
    _clean(result)


@needs_namespaces
@pytest.mark.parametrize("size", ["12k", "24k", "40k"])
def test_a_full_cache_fails_clearly_and_stays_consistent(project: Path, size: str) -> None:
    """The cache is a tmpfs of a few kB: a stage (or its preparation) meets ENOSPC somewhere."""
    result = _sh(project, f"mkdir -p .tunepipe && mount -t tmpfs -o size={size} tmpfs .tunepipe && "
                          "$PIPELINE run p.yaml; echo \"exit=$?\"; $PIPELINE cache verify p.yaml")
    _clean(result)
    assert "exit=1" in result.stdout or "exit=2" in result.stdout, result.stdout + result.stderr
    assert "no space left on the device of" in result.stderr and ".tunepipe" in result.stderr
    assert "ok: the cache is consistent" in result.stdout, result.stdout + result.stderr


def test_a_cache_folder_under_a_file_is_a_user_error(project: Path) -> None:
    (project / "afile").write_text("not a folder")
    result = subprocess.run([*PIPELINE_CMD, "run", "p.yaml", "--cache-dir", "afile/cache"], cwd=project,
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "cannot use the cache folder" in result.stderr and "--cache-dir" in result.stderr
    _clean(result)


def test_force_of_a_stage_outside_the_selection_is_an_error(project: Path) -> None:
    result = subprocess.run([*PIPELINE_CMD, "run", "p.yaml", "ingest", "--force=split"], cwd=project,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "--force=split names a stage this run does not select" in result.stderr
