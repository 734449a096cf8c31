"""Benchmark: ``pipeline runs`` on a cache holding 1,000 run records of one pipeline.

The records are shaped like the main job's (seven stages with their key parts, about 10 KB each;
a parameter changes every run, an input every tenth), and each run's evaluate stage has its own
report (``metrics.json``), so nothing is shared between rows. Every number includes interpreter
start-up: each measurement is a fresh ``pipeline`` process. Target: under 0.5 s for 1,000 runs.
Run with:  python benchmarks/bench_runs.py [--runs 1000] [--repeat 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("ingest", "clean", "format", "split", "train", "evaluate", "export")
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "TUNEPIPE_CACHE")}


def digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def stage_record(i: int, n: int, stage: str, upstream: str | None) -> dict:
    params = {f"option_{k}": k for k in range(12)} | {"learning_rate": 0.001 * (1 + i % 5), "seed": 7,
                                                      "lora": {"r": 16, "alpha": 32, "target_modules": ["q", "v"]}}
    inputs = {"data": [{"name": upstream or "data/marv.jsonl", "digest": digest(upstream, i // 10)}]}
    outputs = {"report": digest("report", i, stage)} if stage == "evaluate" else {"out": digest("out", i, stage)}
    return {"status": "done" if stage in ("train", "evaluate") else "cached", "key": digest("key", i, stage),
            "duration_s": 1.5, "summary": {"records": 219, "rejected": 1, "note": "x" * 40},
            "outputs": outputs, "reasons": ["parameter learning_rate changed"],
            "parts": {"format": 2,
                      "plugin": {"name": stage, "identity": f"tunepipe.stages.{stage}:X", "version": "0.1.0"},
                      "code": digest("code", stage, i // 100), "params": params, "inputs": inputs,
                      "outputs": sorted(outputs), "env": {"transformers": "5.25.0", "tokenizers": "0.23.3"}}}


def metrics_doc(i: int) -> dict:
    est = lambda v: {"value": v, "ci_low": v - 0.03, "ci_high": v + 0.03}  # noqa: E731
    metrics = {m: {"definition": "d" * 200, "higher_is_better": True, "aggregate": "mean", "tuned": est(0.17 + i / 1e5),
                   "base": est(0.13), "delta": {**est(0.04), "p_not_better": 0.01}}
               for m in ("exact_match", "token_f1", "rouge_l", "bleu", "length_ratio", "semantic")}
    return {"format": "tunepipe-evaluation/1", "examples": 30, "rank_by": "rouge_l", "metrics": metrics,
            "gates": [{"gate": "tuned.semantic - base.semantic > 0", "values": {"tuned.semantic": 0.5}}]}


def make_cache(root: Path, runs: int) -> Path:
    from tunepipe.records import pipeline_id

    spec = root / "bench.yaml"
    spec.write_text("name: bench\nstages: {}\n", encoding="utf-8")
    folder = root / ".tunepipe" / "runs" / pipeline_id(spec, "bench")
    folder.mkdir(parents=True)
    start = time.time() - runs * 60
    for i in range(runs):
        run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(start + 60 * i)) + f"-{1000 + i}"
        stages, upstream = {}, None
        for stage in STAGES:
            stages[stage] = stage_record(i, runs, stage, upstream)
            upstream = f"{stage}.out"
        report = root / ".tunepipe" / "objects" / stages["evaluate"]["outputs"]["report"][:2] / stages[
            "evaluate"]["outputs"]["report"]
        report.mkdir(parents=True, exist_ok=True)
        (report / "metrics.json").write_text(json.dumps(metrics_doc(i), indent=1), encoding="utf-8")
        record = {"run_id": run_id, "pipeline": "bench", "spec": str(spec), "argv": ["run", "bench.yaml"],
                  "started": start + 60 * i, "finished": start + 60 * i + 30, "status": "ok", "executor": "local",
                  "stages": stages}
        (folder / f"{run_id}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return spec


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed


def series(cmd: list[str], cwd: Path, repeat: int) -> dict[str, float]:
    times = [timed(cmd, cwd) for _ in range(repeat)]
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    pipeline = shutil.which("pipeline") or str(Path(sys.executable).parent / "pipeline")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_cache(root, args.runs)
        size = sum(f.stat().st_size for f in (root / ".tunepipe" / "runs").rglob("*.json")) / args.runs / 1e3
        rows = {
            "python -c pass (interpreter alone)": series([sys.executable, "-c", "pass"], root, args.repeat),
            "pipeline --help": series([pipeline, "--help"], root, args.repeat),
            f"pipeline runs ({args.runs:,} runs; the newest 20 shown)": series(
                [pipeline, "runs", "bench.yaml"], root, args.repeat),
            f"pipeline runs --limit 0 (all {args.runs:,} shown)": series(
                [pipeline, "runs", "bench.yaml", "--limit", "0"], root, args.repeat),
            f"pipeline runs --limit 0 --json (all {args.runs:,})": series(
                [pipeline, "runs", "bench.yaml", "--limit", "0", "--json"], root, args.repeat),
            "pipeline diff (the last two runs)": series([pipeline, "diff", "bench.yaml"], root, args.repeat),
        }
    print(f"{args.runs:,} run records of {size:.1f} KB each")
    print(f"| measurement ({args.repeat} runs, wall time incl. start-up) | median | min | max |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['median']:.3f} s | {r['min']:.3f} s | {r['max']:.3f} s |")


if __name__ == "__main__":
    main()
