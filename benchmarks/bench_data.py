"""Benchmark the data stages on generated chat examples, side by side with baselines.

Each measurement is a fresh process; time is wall time, memory the peak summed RSS of the process
and its workers (sampled every 20 ms). The tunepipe stages run one by one (each `pipeline run
FILE STAGE` reuses the stages before it from the cache), so every stage gets its own figures.

    pip install -e '.[bench]'
    python benchmarks/bench_data.py --records 1000000                     # all rows
    python benchmarks/bench_data.py --records 1000000 --compare-only --repeat 3   # issue 16's comparison
    python benchmarks/bench_data.py --records 4000000 --only-tunepipe

The comparison (issue 16): tunepipe's four stages as `SPEC16` configures them, `ingest -> clean
(dedupe: exact, redact: []) -> format (openai-chat: validation, exact o200k_base token counts,
statistics, report) -> split (validation: 0.1, prompt-leakage check)`, against
`baselines/careful_script.py`, a single-process orjson script doing the same work in four staged
passes on one core (its docstring lists what it checks and what it does not), and the orjson
read-parse-dump-write floor. It prints the ratio careful-script time / tunepipe time (the goal is
at least 1.5). With `--repeat N` the script and the four stages run N times, alternating, and the
medians are shown with every run's ratio (worth it on a shared machine).

Extra rows (not with `--compare-only`): `clean` with the default redaction and `clean` with
near-duplicate detection (MinHash LSH), each alone; the older fused single-pass script
(`baselines/careful.py`, which also redacts: compare it with the redacting `clean` row) and a
straightforward pandas script (`--skip-pandas` leaves it out: it needs ~8.5 GB at 1M).
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import measure  # noqa: E402

STAGES = ("ingest", "clean", "format", "split")

# The pipeline of issue 16's comparison: the four stages as configured there, and two extra cleans.
SPEC16 = """
stages:
  ingest:
    uses: ingest
    inputs: {{data: {data}}}
  clean:
    uses: clean
    inputs: {{records: ingest.records}}
    with: {{dedupe: exact, redact: []}}
  format:
    uses: format
    inputs: {{records: clean.records}}
    with: {{target: openai-chat}}
  split:
    uses: split
    inputs: {{examples: format.examples}}
    with: {{validation: 0.1}}
  clean_redact:
    uses: clean
    inputs: {{records: ingest.records}}
    with: {{dedupe: exact}}
  clean_near:
    uses: clean
    inputs: {{records: ingest.records}}
    with: {{dedupe: near}}
"""

# The pipeline of the 2026-11-25 figures in docs/benchmarks.md (clean with the default redaction,
# split with leakage: report); bench_ray.py still runs its four stages.
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


def row(name: str, seconds: float, mb: float | None, n: int) -> str:
    memory = f"{mb:.0f} MB" if mb is not None else "(in the process above)"
    return f"| {name} | {seconds:.1f} s | {n / seconds / 1000:.0f}k | {memory} |"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def careful_script(py: str, data: Path, out: Path) -> tuple[float, float, dict[str, float]]:
    """(wall seconds, peak MB, the script's own timings) of one run of baselines/careful_script.py."""
    shutil.rmtree(out, ignore_errors=True)
    t, m = measure([py, str(HERE / "baselines" / "careful_script.py"), str(data), str(out)])
    inner = json.loads((out / "timings.json").read_text(encoding="utf-8"))["seconds"]
    shutil.rmtree(out, ignore_errors=True)  # its four passes' files: as large as the data, twice over
    return t, m, inner


def tunepipe_stages(pipeline: str, project: Path, env: dict[str, str]) -> list[tuple[float, float]]:
    """(wall seconds, peak MB) of each of the four stages, run one by one from an empty cache."""
    shutil.rmtree(project / ".tunepipe", ignore_errors=True)
    return [measure([pipeline, "run", "-q", "bench.yaml", stage], cwd=project, env=env) for stage in STAGES]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--only-tunepipe", action="store_true", help="only tunepipe's rows")
    ap.add_argument("--compare-only", action="store_true",
                    help="only issue 16's comparison: the floor, the careful script and tunepipe's four stages")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the careful script and the four stages this many times, alternating (medians shown)")
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temporary folder)")
    args = ap.parse_args()
    py = sys.executable
    pipeline = str(Path(py).parent / "pipeline")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    where = subprocess.run([py, "-c", "import tunepipe; print(tunepipe.__file__)"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="tunepipe-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / f"chat-{args.records}.jsonl"
    if not data.exists():
        subprocess.run([py, str(HERE / "gen_chat.py"), str(data), str(args.records)], check=True)
    size_mb = data.stat().st_size / 1e6
    n = args.records
    compare = not args.only_tunepipe
    rows: list[str] = []
    runs: list[str] = []
    load_before = load()
    try:
        project = tmp / "project"
        project.mkdir(exist_ok=True)
        (project / "bench.yaml").write_text(SPEC16.format(data=data), encoding="utf-8")
        if compare:
            t, m = measure([py, str(HERE / "baselines" / "orjson_pass.py"), str(data), str(tmp / "floor.jsonl")])
            (tmp / "floor.jsonl").unlink(missing_ok=True)
            rows.append(row("orjson read-parse-dump-write, one pass (the floor)", t, m, n))
        scripts: list[tuple[float, float, dict[str, float]]] = []
        stages: list[list[tuple[float, float]]] = []
        for i in range(max(1, args.repeat)):
            if compare:
                scripts.append(careful_script(py, data, tmp / "careful_script"))
            stages.append(tunepipe_stages(pipeline, project, env))
            total = sum(t for t, _ in stages[-1])
            if compare:
                runs.append(f"run {i + 1}: careful script {scripts[-1][0]:.1f} s, tunepipe {total:.1f} s "
                            f"({', '.join(f'{s} {t:.1f}' for s, (t, _) in zip(STAGES, stages[-1]))}): "
                            f"{scripts[-1][0] / total:.2f}x, load {load()}")
            else:
                runs.append(f"run {i + 1}: tunepipe {total:.1f} s, load {load()}")
            print(runs[-1], file=sys.stderr, flush=True)
        med = statistics.median
        of = f" (median of {len(stages)})" if len(stages) > 1 else ""
        if compare:
            inner = {k: med(s[2][k] for s in scripts) for k in scripts[0][2]}
            script_s, script_mb = med(s[0] for s in scripts), max(s[1] for s in scripts)
            rows.append(row(f"**careful script** (issue 16: same work, orjson, 1 core, 4 staged passes){of}",
                            script_s, script_mb, n))
            for k in STAGES:
                note = ", with its token counting" if k == "format" else ""
                rows.append(row(f"careful script: pass `{k}`{note}", inner[k], None, n))
            rows.append(row("careful script: token counting (plain tiktoken loop, inside pass `format`)",
                            inner["format_tokens"], None, n))
            rows.append(row("careful script: the four passes without token counting", inner["passes_without_tokens"],
                            None, n))
        for j, stage in enumerate(STAGES):
            rows.append(row(f"tunepipe `{stage}`{of}", med(s[j][0] for s in stages), max(s[j][1] for s in stages), n))
        totals = [sum(t for t, _ in s) for s in stages]
        tunepipe_s = med(totals)
        rows.append(row(f"**tunepipe, the four stages**{of}", tunepipe_s, max(m for s in stages for _, m in s), n))
        if not args.compare_only:
            t, m = measure([pipeline, "run", "-q", "bench.yaml", "clean_redact"], cwd=project, env=env)
            rows.append(row("tunepipe `clean` with the default redaction (extra)", t, m, n))
            t, m = measure([pipeline, "run", "-q", "bench.yaml", "clean_near"], cwd=project, env=env)
            rows.append(row("tunepipe `clean` with near-duplicate detection (extra)", t, m, n))
            if compare:
                t, m = measure([py, str(HERE / "baselines" / "careful.py"), str(data), str(tmp / "careful")])
                rows.append(row("older fused one-pass script with redaction (baselines/careful.py)", t, m, n))
                if not args.skip_pandas:
                    t, m = measure([py, str(HERE / "baselines" / "pandas_script.py"), str(data), str(tmp / "pandas")])
                    rows.append(row("straightforward pandas script (with redaction)", t, m, n))
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{n:,} generated chat examples ({size_mb:.0f} MB), {os.cpu_count()} cores, load average "
          f"{load_before} before, {load()} after; tunepipe from {where}\n")
    print("| what | wall time | records/s | peak RSS |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(runs))
    if compare:
        ratios = [s[0] / t for s, t in zip(scripts, totals)]
        print(f"\ncareful script / tunepipe's four stages: {script_s / tunepipe_s:.2f}x (medians; per run: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}); the goal is 1.5x or more")


if __name__ == "__main__":
    main()
