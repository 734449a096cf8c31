"""Benchmark: wall time of a no-op rerun of a 6-stage pipeline, and of re-planning after a change.

Every number includes interpreter start-up: each measurement is a fresh ``pipeline`` process,
as a user runs it. Run with:  python benchmarks/bench_rerun.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = 6
RECORDS = 2000


def make_project(root: Path) -> Path:
    """A linear pipeline of six built-in ingest stages, each reading the previous one's records."""
    data = root / "data.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for i in range(RECORDS):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                             {"role": "assistant", "content": f"answer {i}"}]}) + "\n")
    lines = ["name: bench", "stages:"]
    for i in range(STAGES):
        src = "data.jsonl" if i == 0 else f"s{i - 1}.records"
        lines += [f"  s{i}:", "    uses: ingest", f"    inputs: {{data: {src}}}", "    with: {on_error: fail}"]
    spec = root / "bench.yaml"
    spec.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return spec


# Users' Pythons cache compiled modules; some sandboxes disable that, which would add ~40 ms.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed


def series(cmd: list[str], cwd: Path, repeat: int, before=None) -> dict[str, float]:
    times = []
    for i in range(repeat):
        if before:
            before(i)
        times.append(timed(cmd, cwd))
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    pipeline = shutil.which("pipeline") or str(Path(sys.executable).parent / "pipeline")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root)
        timed([pipeline, "run", "-q", "bench.yaml"], root)  # fill the cache
        rows = {
            "python -c pass (interpreter alone)": series([sys.executable, "-c", "pass"], root, args.repeat),
            "pipeline --help": series([pipeline, "--help"], root, args.repeat),
            "no-op rerun: pipeline run (6 stages cached)": series([pipeline, "run", "-q", "bench.yaml"], root,
                                                                  args.repeat),
            "pipeline status (6 stages fresh)": series([pipeline, "status", "bench.yaml"], root, args.repeat),
        }
        # A parameter change not seen before: full validation and a new plan, nothing run.
        rows["re-plan after one parameter change: run --dry-run -S s3.on_error=skip"] = series(
            [pipeline, "run", "-q", "--dry-run", "bench.yaml", "-S", "s3.on_error=skip"], root, args.repeat,
            before=lambda i: shutil.rmtree(root / ".tunepipe" / "compiled", ignore_errors=True))
        # Three stages actually rerun (forced), three reused: the cost of running small stages.
        rows[f"rerun of 3 of 6 stages (--force on s3..s5, {RECORDS} records each)"] = series(
            [pipeline, "run", "-q", "bench.yaml", "--force=s3", "--force=s4", "--force=s5"], root, args.repeat)
    print(f"| measurement ({args.repeat} runs, wall time incl. start-up) | median | min | max |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['median']:.3f} s | {r['min']:.3f} s | {r['max']:.3f} s |")


if __name__ == "__main__":
    main()
