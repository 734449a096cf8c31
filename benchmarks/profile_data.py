"""Profile tunepipe's four data stages with py-spy and print each stage's heaviest frames.

The stages of issue 16's comparison (``bench_data.SPEC16``: ingest -> clean (dedupe: exact,
redact: []) -> format (openai-chat) -> split (validation: 0.1)) run one by one, each as its own
``pipeline run`` under ``py-spy record --subprocesses`` (the worker processes included; idle threads,
such as a parent waiting for its workers, are not sampled). For each stage it prints where the
samples were taken (parent process, workers) and the top frames by self time: the innermost
Python line of each sample, with the source of that line, so a line that calls into C (orjson,
tiktoken, a regex, pickle) shows what it calls. A rough grouping of the same samples by what the
line does follows (JSON parse, JSON write, token counting, regexes, hashing, IPC, ...).

    pip install -e '.[bench]'          # py-spy and psutil
    python benchmarks/profile_data.py --records 200000 --rate 250 --top 15

Run tunepipe from another checkout with PYTHONPATH=/path/to/checkout/src. The raw py-spy files
(collapsed stacks, one line per distinct stack with its sample count) stay in ``--workdir``.
"""

from __future__ import annotations

import argparse
import linecache
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_data import SPEC16, STAGES  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")

# (group, test on (file, source line)): the first that matches names what a sample's innermost line does.
GROUPS = (
    ("waiting (a lock, a poll, a blocking read)", lambda f, s: (f in ("threading.py", "selectors.py", "queue.py")
     and any(w in s for w in ("acquire", "poll(", "wait(", "select("))) or f == "multiprocessing/synchronize.py"
     or (f == "multiprocessing/connection.py" and ("read(" in s or "poll" in s or "wait" in s))
     or "sleep(" in s),
    ("pipe write (blocks while the reader is busy)",
     lambda f, s: f == "multiprocessing/connection.py" and "write(" in s),
    ("tiktoken", lambda f, s: f.startswith("tiktoken/") or "encode_ordinary" in s
     or "count_recurring" in s or "len(encode(" in s),
    ("pickling, queues", lambda f, s: f.startswith(("multiprocessing/", "concurrent/futures/process"))
     or f in ("pickle.py", "copyreg.py", "queue.py") or "pickle" in s),
    ("JSON parse", lambda f, s: "loads(" in s),
    ("JSON write", lambda f, s: "dumps(" in s),
    ("regex", lambda f, s: f.startswith("re/") or re.search(r"\.(sub|search|match|fullmatch)\(", s)),
    ("sha256 of the outputs (cache)", lambda f, s: f == "hashlib.py" or "file_digest" in s
     or "self._hash.update" in s),
    ("blake2b", lambda f, s: "blake2b" in s or "digest(" in s),
    ("start-up", lambda f, s: f.startswith(("<frozen", "importlib/", "ast.py", "dataclasses.py",
                                                             "typing.py", "enum.py", "inspect.py", "re/_"))),
    ("Unicode, case folding", lambda f, s: "normalize(" in s or "casefold" in s or ".lower()" in s),
    ("file I/O", lambda f, s: re.search(r"\.(read|write|readline|write_line|flush|read_bytes)\(|fsync\(", s)
     is not None),
    ("numpy", lambda f, s: f.startswith("numpy/") or "np." in s),
)


def roots(env: dict[str, str], py: str) -> list[Path]:
    """Folders that py-spy's short file names are relative to (tunepipe's, the stdlib, site-packages)."""
    where = subprocess.run([py, "-c", "import tunepipe; print(tunepipe.__file__)"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    paths = sysconfig.get_paths()
    return [Path(where).parent.parent, Path(paths["stdlib"]), Path(paths["purelib"]), Path(paths["platlib"])]


def short(file: str, bases: list[Path]) -> str:
    """A full file name relative to the folder it was imported from (tunepipe's, the stdlib, site-packages)."""
    for base in sorted(bases, key=lambda b: -len(str(b))):
        if file.startswith(str(base) + os.sep):
            return file[len(str(base)) + 1:]
    return file


def source(file: str, line: int) -> str:
    return linecache.getline(file, line).strip() if os.path.isabs(file) else ""


def parse(raw: Path) -> list[tuple[list[str], int]]:
    """(frames, root first, samples) per distinct stack of a py-spy raw file."""
    stacks = []
    for text in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        head, _, count = text.rpartition(" ")
        if head and count.isdigit():
            stacks.append((head.split(";"), int(count)))
    return stacks


def summarize(stage: str, raw: Path, bases: list[Path], top: int) -> str:
    stacks = parse(raw)
    total = sum(n for _, n in stacks)
    if not total:
        return f"### {stage}: no samples\n"
    by_process: Counter[str] = Counter()
    leaves: Counter[tuple[str, str, str, int]] = Counter()  # (where, function, file, line)
    groups: Counter[str] = Counter()
    parts: Counter[str] = Counter()  # whole stacks: who does what
    for frames, n in stacks:
        procs = [f for f in frames if f.startswith("process ")]
        where = "worker" if len(procs) > 1 else "parent"
        by_process[where] += n
        code = [f for f in frames if not f.startswith("process ")]
        m = FRAME.match(code[-1]) if code else None
        what = "other" if m is None else group(short(m["file"], bases), source(m["file"], int(m["line"])))
        groups[what] += n
        stack = ";".join(code)
        if "publish (" in stack or "file_digest (" in stack:
            parts["parent: publishing the outputs to the cache (sha256, fsync)"] += n
        elif where == "parent" and ("_find_and_load" in stack or "fingerprint.py" in stack):
            parts["parent: imports, code fingerprint"] += n
        elif what.startswith(("waiting", "pipe write", "pickling")):
            parts[f"{where}: waiting, and moving data through pipes"] += n
        else:
            parts[f"{where}: its own work"] += n
        if m is None:
            leaves[(where, code[-1] if code else "?", "?", 0)] += n
            continue
        leaves[(where, m["func"], m["file"], int(m["line"]))] += n
    out = [f"#### `{stage}`: {total:,} samples ({by_process['parent'] / total:.0%} in the parent process, "
           f"{by_process['worker'] / total:.0%} in the worker processes)", "",
           "Whole stacks: " + "; ".join(f"{k} {100 * v / total:.0f} %" for k, v in parts.most_common()) + ".", "",
           "| % | process | function | file:line | the line | what it is |", "|---:|---|---|---|---|---|"]
    for (where, func, file, line), n in leaves.most_common(top):
        name = short(file, bases)
        src = source(file, line)
        what = group(name, src)
        src = src.replace("|", "\\|")
        if len(src) > 80:
            src = src[:77] + "..."
        out.append(f"| {100 * n / total:.1f} | {where} | `{func}` | {name}:{line} | `{src}` | {what} |")
    out += ["", "All samples by what their innermost line does: " + "; ".join(
        f"{g} {100 * n / total:.0f} %" for g, n in groups.most_common()) + ".", ""]
    return "\n".join(out)


def group(file: str, src: str) -> str:
    return next((g for g, test in GROUPS if test(file, src)), "other Python")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=250, help="samples per second (py-spy --rate)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in pipeline order")
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temporary folder, removed)")
    ap.add_argument("--summarize", metavar="DIR", default=None,
                    help="only summarize the profile-STAGE.txt files a run left in DIR (its --workdir)")
    args = ap.parse_args()
    wanted = [s.strip() for s in args.stages.split(",")]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        ap.error(f"--stages: {', '.join(unknown)} is not one of {', '.join(STAGES)}")
    py = sys.executable
    if args.summarize:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        bases = roots(env, py)
        for stage in STAGES:
            raw = Path(args.summarize) / f"profile-{stage}.txt"
            if raw.exists():
                print(summarize(stage, raw, bases, args.top))
        return
    pipeline = str(Path(py).parent / "pipeline")
    spy = shutil.which("py-spy", path=str(Path(py).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]' (or pip install py-spy)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="tunepipe-profile-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / f"chat-{args.records}.jsonl"
    if not data.exists():
        subprocess.run([py, str(HERE / "gen_chat.py"), str(data), str(args.records)], check=True)
    project = tmp / "project"
    project.mkdir(exist_ok=True)
    (project / "bench.yaml").write_text(SPEC16.format(data=data), encoding="utf-8")
    shutil.rmtree(project / ".tunepipe", ignore_errors=True)
    bases = roots(env, py)
    try:
        reports = []
        last = max(STAGES.index(s) for s in wanted)
        for stage in STAGES[:last + 1]:  # the stages before a wanted one run too (unprofiled), so it has its input
            if stage not in wanted:
                subprocess.run([pipeline, "run", "-q", "bench.yaml", stage], cwd=project, env=env, check=True,
                               stdout=subprocess.DEVNULL)
                continue
            raw = tmp / f"profile-{stage}.txt"
            subprocess.run([spy, "record", "--subprocesses", "--full-filenames", "--rate", str(args.rate),
                            "--format", "raw", "--output", str(raw), "--", pipeline, "run", "-q", "bench.yaml", stage],
                           cwd=project, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            reports.append(summarize(stage, raw, bases, args.top))
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"py-spy, {args.rate} samples/s, {args.records:,} generated chat examples, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end\n")
    print("\n".join(reports))


if __name__ == "__main__":
    main()
