"""Fuzzed chat records through ingest -> clean -> format: every input line is accounted for.

Seeded mutations of the main job's Marv records (broken JSON, wrong types and roles, empty or
huge contents, control characters, duplicates, truncation). With every stage set to skip what it
cannot use, each non-blank input line must end as exactly one kept record or one reject with a
reason, at every stage, and the run must end without a traceback.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

MARV = Path(__file__).parents[2] / "pipelines" / "data" / "marv.jsonl"
SEED = 20261207
CASES = 400

PIPELINE = """\
name: fuzz
stages:
  ingest:
    uses: ingest
    inputs: {data: fuzz.jsonl}
    with: {on_error: skip, max_reject_rate: 1.0, allow_empty: true}
  clean:
    uses: clean
    inputs: {records: ingest.records}
    with: {allow_empty: true, dedupe: near, redact: [email, phone, credit_card, secret], max_tokens: 512}
  format:
    uses: format
    inputs: {records: clean.records}
    with: {on_invalid: skip, min_examples: 0}
"""


def _mutate_value(rng: random.Random, record: dict[str, Any]) -> Any:
    msgs = record.get("messages", [])
    kind = rng.randrange(12)
    if kind == 0 and msgs:
        rng.choice(msgs)["role"] = rng.choice(["bogus", "", None, 3, "assistant", "system", "tool"])
    elif kind == 1 and msgs:
        rng.choice(msgs)["content"] = rng.choice(["", " ", None, 42, [], [{"type": "text", "text": "x"}],
                                                  {"a": 1}, "\x00\x1b\u202e", "word " * 3000])
    elif kind == 2 and msgs:
        msgs.pop(rng.randrange(len(msgs)))
    elif kind == 3:
        record["messages"] = rng.choice([None, "text", {}, [], [1, 2], [[]]])
    elif kind == 4 and msgs:
        msgs.append(dict(rng.choice(msgs)))
    elif kind == 5 and msgs:
        rng.shuffle(msgs)
    elif kind == 6 and msgs:
        rng.choice(msgs)["weight"] = rng.choice([0, 1, 2, "1", None])
    elif kind == 7 and msgs:
        rng.choice(msgs)["content"] += rng.choice([" mail me at a.b@example.com", " call +1 415 555 0100",
                                                   " card 4111 1111 1111 1111", " \U0001F600", "\r\n\t"])
    elif kind == 8:
        return rng.choice([[], 3, "string", None, True])
    elif kind == 9:
        record["extra"] = {"nested": [{"deep": list(range(rng.randrange(50)))}]}
    return record


def _mutate_line(rng: random.Random, line: str) -> str:
    kind = rng.randrange(10)
    if kind < 5:
        try:
            record = json.loads(line)
        except ValueError:  # the data set's own broken line
            return line
        return json.dumps(_mutate_value(rng, record), ensure_ascii=rng.random() < 0.5)
    if kind == 5:
        return line[: rng.randrange(len(line))]
    if kind == 6:
        i = rng.randrange(len(line))
        return line[:i] + rng.choice(["\x00", "}", "{", '"', "\\", "\u2028", "\x1b[31m", "\ufeff", "\\ud800"]) + line[i:]
    if kind == 7:
        return rng.choice(["", "   ", "null", "[]", "{}", "not json at all", '{"messages": []}'])
    return line  # unchanged (and so, with the rest, exact duplicates)


def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]  # not splitlines: \u2028 is data


def _output(project: Path, stage: str, name: str) -> list[dict[str, Any]]:
    shown = subprocess.run([sys.executable, "-m", "tunepipe", "show", "p.yaml", stage, "--json"], cwd=project,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    folder = Path(json.loads(shown.stdout)["outputs"][name]["path"])
    return [row for f in sorted(folder.glob("*.jsonl")) for row in _rows(f)]


@pytest.mark.timeout(300)
def test_every_fuzzed_line_is_kept_or_rejected_with_a_reason(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    source = [line for line in MARV.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = [_mutate_line(rng, rng.choice(source)) for _ in range(CASES)]
    (tmp_path / "fuzz.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "p.yaml").write_text(PIPELINE)
    run = subprocess.run([sys.executable, "-m", "tunepipe", "run", "p.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr

    # the input lines as the reader sees them (a lone \u2028 is not a line break for JSONL readers)
    physical = (tmp_path / "fuzz.jsonl").read_bytes().split(b"\n")
    wanted = {n for n, raw in enumerate(physical, 1) if raw.strip()}
    flow = {}
    for stage in ("ingest", "clean", "format"):
        kept = _output(tmp_path, stage, "examples" if stage == "format" else "records")
        rejected = _output(tmp_path, stage, "rejects")
        # one row layout for every stage (tunepipe.data.rejects): a code and a reason
        assert all(r.get("code") and r.get("reason") for r in rejected), f"{stage}: a reject without a reason"
        kept_lines = [r["meta"]["line"] for r in kept] if stage != "format" else None
        flow[stage] = (kept, rejected, kept_lines)
    ingest_kept, ingest_rejected, ingest_lines = flow["ingest"]
    seen = sorted(ingest_lines + [r["line"] for r in ingest_rejected])
    assert seen == sorted(wanted), "ingest: a line neither kept nor rejected, or accounted for twice"
    clean_kept, clean_rejected, clean_lines = flow["clean"]
    assert len(clean_kept) + len(clean_rejected) == len(ingest_kept)
    assert sorted(clean_lines + [r["line"] for r in clean_rejected]) == sorted(ingest_lines)
    format_kept, format_rejected, _ = flow["format"]
    assert len(format_kept) + len(format_rejected) == len(clean_kept)
    # the mutations reach every stage's rejects
    assert ingest_rejected and clean_rejected and format_rejected, (len(ingest_rejected), len(clean_rejected),
                                                                   len(format_rejected))
