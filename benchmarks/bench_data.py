"""Benchmark the data stages on generated chat examples, side by side with three baselines.

Each measurement is a fresh process; time is wall time, memory the peak summed RSS of the process
and its workers (sampled every 20 ms). The tunepipe stages run one by one (each `pipeline run
FILE STAGE` reuses the stages before it from the cache), so every stage gets its own figures.

    pip install -e '.[bench]'
    python benchmarks/bench_data.py --records 1000000            # all rows
    python benchmarks/bench_data.py --records 4000000 --only-tunepipe

Work done (the same in the careful script, so the comparison is fair): ingest (parse, check,
provenance) -> clean (NFC, control characters, whitespace, e-mail/phone/card/secret redaction,
exact dedupe) -> format (OpenAI validation, exact o200k_base token counts, statistics, report) ->
split (stable hash, validation 10 %, leakage report). `clean` with near-duplicate detection
(MinHash LSH) is measured as an extra row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import measure  # noqa: E402

SPEC = """
stages:
  ingest:
    uses: ingest
    inputs: {{data: {data}}}
  clean:
    uses: clean
    inputs: {{records: ingest.records}}
    with: {{dedupe: exact}}
  clean_near:
    uses: clean
    inputs: {{records: ingest.records}}
    with: {{dedupe: near}}
  format:
    uses: format
    inputs: {{records: clean.records}}
  split:
    uses: split
    inputs: {{examples: format.examples}}
    with: {{validation: 0.1, leakage: report}}
"""


def row(name: str, seconds: float, mb: float, n: int) -> str:
    return f"| {name} | {seconds:.1f} s | {n / seconds / 1000:.0f}k | {mb:.0f} MB |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--only-tunepipe", action="store_true")
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temporary folder)")
    args = ap.parse_args()
    py = sys.executable
    pipeline = str(Path(py).parent / "pipeline")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="tunepipe-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / f"chat-{args.records}.jsonl"
    if not data.exists():
        subprocess.run([py, str(HERE / "gen_chat.py"), str(data), str(args.records)], check=True)
    size_mb = data.stat().st_size / 1e6
    n = args.records
    rows = []
    try:
        if not args.only_tunepipe:
            t, m = measure([py, str(HERE / "baselines" / "orjson_pass.py"), str(data), str(tmp / "floor.jsonl")])
            rows.append(row("orjson read-parse-dump-write, one pass (the floor)", t, m, n))
            t, m = measure([py, str(HERE / "baselines" / "careful.py"), str(data), str(tmp / "careful")])
            rows.append(row("careful single-process streaming script (same work, 1 core)", t, m, n))
            careful = t
            if not args.skip_pandas:
                t, m = measure([py, str(HERE / "baselines" / "pandas_script.py"), str(data), str(tmp / "pandas")])
                rows.append(row("straightforward pandas script (same work)", t, m, n))
        project = tmp / "project"
        project.mkdir(exist_ok=True)
        (project / "bench.yaml").write_text(SPEC.format(data=data), encoding="utf-8")
        shutil.rmtree(project / ".tunepipe", ignore_errors=True)
        total = 0.0
        peak = 0.0
        for stage in ("ingest", "clean", "format", "split"):
            t, m = measure([pipeline, "run", "-q", "bench.yaml", stage], cwd=project, env=env)
            rows.append(row(f"tunepipe `{stage}`", t, m, n))
            total += t
            peak = max(peak, m)
        rows.append(row("**tunepipe, the four stages**", total, peak, n))
        t, m = measure([pipeline, "run", "-q", "bench.yaml", "clean_near"], cwd=project, env=env)
        rows.append(row("tunepipe `clean` with near-duplicate detection (extra)", t, m, n))
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{n:,} generated chat examples ({size_mb:.0f} MB), {os.cpu_count()} cores\n")
    print("| what | wall time | records/s | peak RSS |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    if not args.only_tunepipe:
        print(f"\ntunepipe's four stages vs the careful script: {careful / total:.2f}x")


if __name__ == "__main__":
    main()
