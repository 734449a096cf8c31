"""Helpers of the history commands' tests: pipelines on the test plugins, and records written by hand
(older formats, damaged files, runs that never finished)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tunepipe.records import pipeline_id

E = "tp_testplugins:Emit"
EVAL = "tp_evalreport:EvalReport"

# a reads a file, b reads a; ev scores 8 examples
SPEC = f"""
stages:
  a:
    uses: {E}
    inputs: {{src: data/in.txt}}
    with: {{text: "-a", extra: {{depth: {{n: 1}}}}}}
  b:
    uses: {E}
    inputs: {{src: a.out}}
    with: {{text: "-b"}}
  ev:
    uses: {EVAL}
    inputs: {{model: b.out}}
    with:
      tuned: [0.2, 0.3, 0.4, 0.5, 0.3, 0.2, 0.4, 0.5]
      base: [0.1, 0.2, 0.3, 0.4, 0.2, 0.1, 0.3, 0.3]
"""

BETTER = "ev.tuned=[0.5, 0.6, 0.7, 0.8, 0.6, 0.5, 0.7, 0.8]"  # +0.3 on every example
NOISE = "ev.tuned=[0.3, 0.2, 0.5, 0.4, 0.2, 0.3, 0.5, 0.4]"  # the same mean, examples swapped


def runs_dir(project: Any, spec: str = "p.yaml", name: str = "p", cache: Path | None = None) -> Path:
    return (cache or project.cache) / "runs" / pipeline_id(project.root / spec, name)


def records(project: Any, **kw: Any) -> list[Path]:
    """The pipeline's record files, oldest first."""
    return sorted(runs_dir(project, **kw).glob("*.json"))


def write_record(folder: Path, run_id: str, record: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.json"
    path.write_text(record if isinstance(record, str) else json.dumps(record), encoding="utf-8")
    return path


def dead_pid() -> int:
    """A process id no process has now (a finished child's)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def ids(stdout: str) -> list[str]:
    """The run ids of `pipeline runs`, in order."""
    return [line.split()[0] for line in stdout.splitlines() if line and not line.startswith(" ")]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: to prove a command wrote nothing."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}
