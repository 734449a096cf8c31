"""Benchmark the Ray executor's overhead on the data stages, against the local executor.

One generated file (``gen_chat.py``), the four data stages of ``bench_data.py`` (ingest -> clean
-> format -> split), each run from an empty cache: (a) ``pipeline run`` with the local
executor, (b) ``pipeline run --executor ray --address local`` (the run starts a local Ray for
itself and stops it at the end; the record stages then map their batches on Ray Data when Ray
has a CPU their task does not hold), and (c) ``ray-data``: (b) with ``resources: {cpus: 0}`` on
every stage, so that Ray Data gets all of Ray's CPUs even on a 2-core machine. Each run is one
fresh process, so (b) and (c) pay Ray's start and stop.

Figures: wall time of the whole command (``measure.py``), each stage's ``duration_s`` from the
run record under the cache's ``runs/`` folder (the stage's own work, inside its Ray task for (b);
what the total has beyond their sum is start-up, planning, Ray's start/stop and scheduling), and
the peak summed RSS of the command's process tree. Ray's processes started by ``--address local``
(GCS, raylet, its workers and agents) are descendants of the ``pipeline`` process, so the tree
covers them; shared memory (Ray's object store in /dev/shm) is counted once per process that
maps it, so for (b) and (c) the figure is an upper bound. Finally every output digest of every stage
must be the same in every run, which is the "byte-identical artifacts" promise (the cache is
content-addressed: equal digests mean equal bytes).

    python benchmarks/bench_ray.py --records 1000000                 # local, ray, ray-data
    python benchmarks/bench_ray.py --records 4000000 --executors local,ray --workdir /tmp/b
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_data import SPEC  # noqa: E402  (bench_data's full-row pipeline: default redaction, leakage: report)
from measure import measure  # noqa: E402

STAGES = ("ingest", "clean", "format", "split")
RAY = ["--executor", "ray", "--address", "local"]
# name -> (pipeline file, extra arguments). "ray-data": each stage's task asks for no CPU
# (`resources: {cpus: 0}`), so Ray Data gets all of Ray's CPUs; with the default (1 CPU per stage
# task) a 2-CPU machine leaves Ray Data 1 CPU, and a stage with 1 worker maps in its own process.
EXECUTORS: dict[str, tuple[str, list[str]]] = {"local": ("bench.yaml", []), "ray": ("bench.yaml", RAY),
                                              "ray-data": ("bench-cpus0.yaml", RAY)}


def load() -> str:
    """The 1/5/15-minute load averages: the machine is shared, so every figure carries them."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def run_record(cache: Path) -> dict[str, Any]:
    """The one run record a fresh cache holds after one run."""
    records = sorted((cache / "runs").glob("*/*.json"))
    if len(records) != 1:
        raise SystemExit(f"expected one run record under {cache / 'runs'}, found {len(records)}")
    return json.loads(records[0].read_text(encoding="utf-8"))


def outputs(record: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Each stage's output digests, by output name."""
    return {s: dict(record["stages"][s]["outputs"]) for s in STAGES}


def write_specs(project: Path, data: Path) -> None:
    """bench_data's pipeline file, and a copy whose stages ask Ray for no CPU (see EXECUTORS)."""
    import yaml

    text = SPEC.format(data=data)
    (project / "bench.yaml").write_text(text, encoding="utf-8")
    spec = yaml.safe_load(text)
    for stage in spec["stages"].values():
        stage["resources"] = {"cpus": 0}
    (project / "bench-cpus0.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")


def run_one(executor: str, pipeline: str, project: Path, env: dict[str, str]) -> dict[str, Any]:
    """One `pipeline run` of the four stages from an empty cache; its figures."""
    cache = project / f"cache-{executor}"
    shutil.rmtree(cache, ignore_errors=True)
    before = load()
    spec, extra = EXECUTORS[executor]
    seconds, mb = measure([pipeline, "run", "-q", spec, "split", "--cache-dir", str(cache), *extra],
                          cwd=project, env=env)
    after = load()
    record = run_record(cache)
    if record.get("status") != "ok":
        raise SystemExit(f"the {executor} run ended with status {record.get('status')!r}")
    stages = {s: float(record["stages"][s]["duration_s"]) for s in STAGES}
    return {"executor": executor, "wall_s": seconds, "peak_mb": mb, "stages_s": stages,
            "outputs": outputs(record), "load_before": before, "load_after": after,
            "nodes": sorted({record["stages"][s].get("node", "")[:8] for s in STAGES} - {""})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--executors", default="local,ray,ray-data",
                    help="comma-separated, in this order, from: " + ", ".join(EXECUTORS))
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temporary folder)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    chosen = [e.strip() for e in args.executors.split(",")]
    if unknown := [e for e in chosen if e not in EXECUTORS]:
        ap.error(f"unknown executor(s) {', '.join(unknown)}: choose from {', '.join(EXECUTORS)}")
    py = sys.executable
    pipeline = str(Path(py).parent / "pipeline")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "RAY_ADDRESS")}
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="tunepipe-bench-ray-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / f"chat-{args.records}.jsonl"
    if not data.exists():
        subprocess.run([py, str(HERE / "gen_chat.py"), str(data), str(args.records)], check=True)
    project = tmp / "project"
    project.mkdir(exist_ok=True)
    write_specs(project, data)
    results = []
    try:
        for executor in chosen:
            results.append(run_one(executor, pipeline, project, env))
            r = results[-1]
            print(f"{executor}: {r['wall_s']:.1f} s, {r['peak_mb']:.0f} MB, load {r['load_before']} -> "
                  f"{r['load_after']}", file=sys.stderr, flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    same = all(r["outputs"] == results[0]["outputs"] for r in results)
    n = args.records
    print(f"{n:,} generated chat examples ({data.stat().st_size / 1e6 if data.exists() else 0:.0f} MB), "
          f"{os.cpu_count()} cores\n")
    print("| records | executor | " + " | ".join(STAGES) + " | stages sum | total wall | outside stages "
          "| peak RSS | identical | load before → after |")
    print("|---" * (len(STAGES) + 8) + "|")
    for r in results:
        ss = r["stages_s"]
        total = sum(ss.values())
        print(f"| {n:,} | {r['executor']} | " + " | ".join(f"{ss[s]:.1f} s" for s in STAGES)
              + f" | {total:.1f} s | {r['wall_s']:.1f} s | {r['wall_s'] - total:.1f} s | {r['peak_mb']:.0f} MB "
              f"| {'yes' if r['outputs'] == results[0]['outputs'] else 'NO'} "
              f"| {r['load_before']} → {r['load_after']} |")
    digests = sum(len(v) for v in results[0]["outputs"].values())
    print(f"\noutput digests compared: {digests} (every output of the {len(STAGES)} stages): "
          f"{'all identical' if same else 'DIFFERENT'}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"records": n, "runs": results, "identical": same}, indent=1),
                                       encoding="utf-8")
    if not same:
        for s in STAGES:
            for r in results[1:]:
                if r["outputs"][s] != results[0]["outputs"][s]:
                    print(f"  {s}: {results[0]['executor']} {results[0]['outputs'][s]} vs "
                          f"{r['executor']} {r['outputs'][s]}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
