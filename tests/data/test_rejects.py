"""rejects.jsonl in one layout for every stage (tunepipe.data.rejects)."""

from __future__ import annotations

import json
from pathlib import Path

from tunepipe.data.record import Provenance
from tunepipe.data.rejects import Rejects, reject_row


def test_a_row_names_where_which_stage_what_and_why_in_that_order() -> None:
    row = reject_row("clean", Provenance("data/x.csv", "row", 3), "too_long", "too many tokens",
                     tokens=5000, max_tokens=4096)
    assert list(row.items()) == [("source", "data/x.csv"), ("row", 3), ("stage", "clean"), ("code", "too_long"),
                                 ("reason", "too many tokens"), ("tokens", 5000), ("max_tokens", 4096)]
    dup = reject_row("clean", Provenance("a.jsonl", "line", 9), "exact_duplicate", "exact duplicate",
                     duplicate_of=Provenance("a.jsonl", "line", 2), similarity=1.0)
    assert list(dup)[-2:] == ["duplicate_of", "similarity"] and dup["duplicate_of"] == "a.jsonl:2"
    assert list(reject_row("split", Provenance("a.jsonl"), "c", "r")) == ["source", "stage", "code", "reason"]


def test_the_writer_writes_one_json_line_per_reject_and_an_empty_file_for_none(tmp_path: Path) -> None:
    with Rejects(tmp_path / "none.jsonl", "format") as rejects:
        pass
    assert (tmp_path / "none.jsonl").read_bytes() == b"" and rejects.count == 0
    with Rejects(tmp_path / "rejects.jsonl", "ingest") as rejects:
        rejects.write(Provenance("d.json", "index", 0), "bad_json", "not valid JSON")
        rejects.write(Provenance("d.json", "index", 4), "not_utf8", "not UTF-8", column="q")
    rows = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert rejects.count == 2 and rows[1] == {"source": "d.json", "index": 4, "stage": "ingest", "code": "not_utf8",
                                              "reason": "not UTF-8", "column": "q"}
