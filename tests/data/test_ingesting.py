"""ingest's work as plain functions (tunepipe.data.ingesting, tunepipe.data.ingest_work), without the stage."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from tunepipe.data import readers
from tunepipe.data.blocks import read_blocks
from tunepipe.data.ingest_work import Output, map_batch
from tunepipe.data.ingesting import Batch, Reading, Rejected, Stats, batches, plan
from tunepipe.data.record import Provenance
from tunepipe.errors import UserError
from tunepipe.plugins import Artifact

LOG = logging.getLogger("test.ingesting")


def chat(i: int) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": f"q{i} " + "x" * (i % 90)},
                                    {"role": "assistant", "content": "a"}]}).encode()


def test_counted_blocks_are_numbered_as_read_blocks_numbers_them(tmp_path: Path) -> None:
    lines = [chat(i) for i in range(3000)]
    lines[7] = b"x" * 5000  # a line longer than a block is a block of its own
    body = b"\xef\xbb\xbf" + b"\r\n".join(lines[:20]) + b"\r\n\n \n" + b"\n".join(lines[20:])  # no final newline
    path = tmp_path / "x.jsonl"
    path.write_bytes(body)
    with open(path, "rb") as f:
        counted = list(readers.counted_blocks(f, path, 4096))
    with open(path, "rb") as f:
        read = [b._replace(data=None) for b in read_blocks(f, path, size=4096)]
    assert len(counted) > 10 and counted == read
    assert [u for b in counted for u in b.lines()][:3] == [(1, lines[0]), (2, lines[1]), (3, lines[2])]


def reading(unit: str = "line") -> Reading:
    return Reading(json.dumps({"preset": "auto"}), "", "data/x.jsonl", "jsonl", unit, None)


def test_a_batch_writes_the_same_lines_through_a_part_file_as_in_this_process(tmp_path: Path) -> None:
    units = [(1, chat(1)), (2, b'{"messages": ['), (3, b"\xff"), (4, b""), (5, b"[1]"), (6, chat(6))]
    batch = Batch(reading("index"), units, 3)
    here = map_batch(batch)
    assert here.records == 2 and here.data.count(b"\n") == 2 and not here.part
    assert [(r.position, r.code) for r in here.rejects] == [(2, "bad_json"), (3, "not_utf8"), (4, "bad_json"),
                                                            (5, "not_object")]
    assert here.rejects[1].reason == "not UTF-8 (byte offset 0 in the element)"
    assert here.rejects[2].reason == "empty element (a stray comma?)"
    assert json.loads(here.data.splitlines()[1])["meta"] == {"source": "data/x.jsonl", "index": 6}
    with Output(tmp_path / "records.jsonl", tmp_path / "parts") as out:
        worker = map_batch(batch, str(out.parts))
        assert worker.data == b"" and Path(worker.part).name == "000003.jsonl"
        assert worker._replace(part="") == here._replace(data=b"")
        out.add(worker)
        assert not Path(worker.part).exists()
    assert (tmp_path / "records.jsonl").read_bytes() == here.data and not (tmp_path / "parts").exists()


@pytest.mark.parametrize("kernel", ["refuses", "lacks"])
def test_output_appends_parts_in_order_without_copy_file_range_too(tmp_path: Path, kernel: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    if kernel == "refuses":
        monkeypatch.setattr(os, "copy_file_range", unsupported)
    else:
        monkeypatch.delattr(os, "copy_file_range")
    batch = [Batch(reading(), [(i, chat(i))], i) for i in range(3)]
    with Output(tmp_path / "records.jsonl", tmp_path / "parts") as out:
        done = [map_batch(b, str(out.parts)) for b in batch]
        out.add(map_batch(Batch(reading(), [(9, chat(9))], 9)))  # a batch mapped in this process
        for d in done:
            out.add(d)
    got = [json.loads(x)["meta"]["line"] for x in (tmp_path / "records.jsonl").read_bytes().splitlines()]
    assert got == [9, 0, 1, 2]


def test_plan_and_batches_give_each_file_its_settings(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(chat(1) + b"\n")
    (tmp_path / "b.csv").write_text("question,answer\nq,a\n")
    arts = [Artifact(tmp_path / "a.jsonl", "d1", "data/a.jsonl"), Artifact(tmp_path / "b.csv", "d2", "data/b.csv")]
    qa = {"user": "{question}", "assistant": "{answer}"}
    params = {"keep_fields": [], "sources": [{"match": "*.csv", "map": qa}]}
    files = plan(arts, params)
    assert [(f.label, f.where, "map" in f.settings) for f in files] == [("data/a.jsonl", "", False),
                                                                     ("data/b.csv", "sources[0]", True)]
    stats = Stats()
    work = list(batches(files, stats, LOG))
    assert [(b.index, b.reading.unit, b.size) for b in work] == [(0, "line", 1), (1, "row", 1)]
    assert stats.files == 2 and [map_batch(b).records for b in work] == [1, 1]
    with pytest.raises(UserError, match=r"sources\[0\].match '\*.tsv' matches none of the inputs"):
        plan(arts, {"sources": [{"match": "*.tsv"}]})


def test_where_a_rejected_unit_is_named() -> None:
    rows = Reading("{}", "", "data/t.csv", "csv", "row", ("q",))
    assert reading().located(5) == "data/x.jsonl:5" and reading("index").located(5) == "data/x.jsonl[5]"
    assert rows.located(3, 5) == "data/t.csv:5 (row 3)" and rows.located(3) == "data/t.csv row 3"
    bad = Rejected(3, 5, "field_count", "too many fields")
    assert bad.provenance(rows) == Provenance("data/t.csv", "row", 3)
    assert bad.failure(rows) == ("data/t.csv:5 (row 3): too many fields. Fix the row, or set `on_error: skip` to "
                                 "set such rows aside in the rejects artifact")
    stats = Stats(records=1, labels=["data/t.csv"])
    stats.reject("field_count", "data/t.csv:5 (row 3)", "too many fields")
    assert stats.too_many_rejects(0.5) is None
    assert stats.too_many_rejects(0.4).startswith("1 of 2 records were rejected (50%), more than max_reject_rate 0.4")
