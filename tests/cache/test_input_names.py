"""Two projects on one cache, the same bytes under different names: each gets its own results.

Plugins read more about an input than its bytes (its name in provenance, ``sources:`` patterns
matched against it), so the name enters the key with the digest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROWS = [{"a": f"question {i}?", "b": f"answer {i}."} for i in range(5)]

# The same file in both projects: only the data file's name differs.
PIPELINE = """\
name: names
stages:
  ingest:
    uses: ingest
    inputs: {data: "*.jsonl"}
    with:
      map: {user: "{a}", assistant: "{b}"}
"""


def _project(root: Path, file: str) -> Path:
    root.mkdir()
    (root / file).write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "p.yaml").write_text(PIPELINE)
    return root


def _run(project: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunepipe", "run", "p.yaml", "--cache-dir", str(cache)],
                          cwd=project, capture_output=True, text=True, timeout=120)


def _records(project: Path, cache: Path) -> list[dict]:
    shown = subprocess.run([sys.executable, "-m", "tunepipe", "show", "p.yaml", "ingest", "--json",
                            "--cache-dir", str(cache)], cwd=project, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    folder = Path(json.loads(shown.stdout)["outputs"]["records"]["path"])
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]


def test_same_bytes_under_another_name_are_not_served_from_the_other_project(tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    x = _project(tmp_path / "one", "x.jsonl")
    y = _project(tmp_path / "two", "y.jsonl")
    assert (x / "x.jsonl").read_bytes() == (y / "y.jsonl").read_bytes()
    assert (x / "p.yaml").read_bytes() == (y / "p.yaml").read_bytes()
    first, second = _run(x, cache), _run(y, cache)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "ingest    done" in second.stdout and "cached" not in second.stdout + second.stderr
    one, two = _records(x, cache), _records(y, cache)
    assert {r["meta"]["source"] for r in one} == {"x.jsonl"}
    assert {r["meta"]["source"] for r in two} == {"y.jsonl"}
    assert [r["messages"] for r in one] == [r["messages"] for r in two]
    # the same name and bytes in a third project is the same result: still shared
    z = _project(tmp_path / "three", "x.jsonl")
    third = _run(z, cache)
    assert third.returncode == 0 and "ingest    cached" in third.stdout, third.stdout + third.stderr
