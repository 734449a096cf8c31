"""The one line reader of the record stages (tunepipe.data.blocks): its rules, and that cutting a
file into blocks, whichever way, never changes a line or its number."""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import pytest

from tunepipe.data import blocks as B
from tunepipe.errors import StageInputError
from tunepipe.plugins import Artifact


def reference(data: bytes) -> list[tuple[int, bytes]]:
    """The rules, written out plainly: LF ends a line, CRs before it go, a BOM at the start goes,
    blank lines are skipped but counted."""
    if data.startswith(B.BOM):
        data = data[3:]
    out = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if raw.strip():
            out.append((number, raw))
    return out


def messy(rng: random.Random, n: int) -> bytes:
    """Lines of every kind the rules speak of: CRLF, lone CRs at the end, blank and white lines, a BOM."""
    parts = [B.BOM]
    for i in range(n):
        kind = rng.randrange(6)
        line = b'{"i": %d, "pad": "%s"}' % (i, b"x" * rng.randrange(300))
        parts.append({0: line + b"\n", 1: line + b"\r\n", 2: line + b"\r\r\n", 3: b"\n", 4: b" \t \r\n",
                      5: line + b"\n" + B.BOM + b"{}\n"}[kind])
    if rng.random() < 0.5:
        parts.append(b'{"last": "no newline"}')
    return b"".join(parts)


def test_the_rules_crlf_blank_lines_and_a_bom_only_at_the_start() -> None:
    data = B.BOM + b'{"a": 1}\r\n\n  \t\n{"b": 2}\r\r\n' + B.BOM + b'{"c": 3}\n{"d": 4}'
    assert list(B.lines(data, file_start=True)) == [
        (1, b'{"a": 1}'), (4, b'{"b": 2}'), (5, B.BOM + b'{"c": 3}'), (6, b'{"d": 4}')]
    assert list(B.lines(b'\n{"x": 1}\n', first=10)) == [(11, b'{"x": 1}')]
    assert list(B.lines(B.BOM + b"{}\n"))[0][1] == B.BOM + b"{}"  # not the file's start: kept
    assert B.count_lines(b"") == 0 and B.count_lines(b"a\nb\n") == 2 and B.count_lines(b"a\nb") == 2


@pytest.mark.parametrize("size", [64, 1000, 1 << 20])
def test_cut_blocks_numbered_by_the_parent_read_as_the_whole_file(tmp_path: Path, size: int) -> None:
    rng = random.Random(size)
    paths = []
    for name in ("a.jsonl", "b.jsonl"):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(messy(rng, 400))
    art = Artifact(tmp_path, "d", "stage.out")
    blocks = list(B.cut(art, paths, size))
    assert [b.index for b in blocks] == list(range(len(blocks)))
    assert {b.label for b in blocks} == {"stage.out/a.jsonl", "stage.out/b.jsonl"}
    numbers = B.LineNumbers()
    got: dict[str, list[tuple[int, bytes]]] = {str(p): [] for p in paths}
    for block in blocks:  # as a worker numbers a block's lines, and the parent adds what came before
        data = block.read()
        assert block.first_line == 0 and (block.end == Path(block.path).stat().st_size or data.endswith(b"\n"))
        before = numbers.advance(block, B.count_lines(data))
        got[block.path] += [(before + n, raw) for n, raw in block.lines(data)]
    for p in paths:
        assert got[str(p)] == reference(p.read_bytes()) == list(B.file_lines(p))


def test_a_line_longer_than_a_block_is_a_block_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"a" * 5000 + b"\nb\n")
    blocks = list(B.cut(Artifact(path, "d", "x.jsonl"), [path], 100))
    assert [(b.start, b.end) for b in blocks] == [(0, 5001), (5001, 5003)]
    assert blocks[0].label == "x.jsonl"


def test_read_blocks_count_lines_as_they_come_and_detach_only_what_a_worker_can_reread(tmp_path: Path) -> None:
    body = messy(random.Random(1), 600)
    path = tmp_path / "x.jsonl"
    path.write_bytes(body)
    with open(path, "rb") as f:
        plain = list(B.read_blocks(f, path, "x", size=256))
    stream = list(B.read_blocks(io.BytesIO(gzip.decompress(gzip.compress(body))), None, size=256))
    assert len(plain) > 10 and all(b.rereadable and b.detached().data is None for b in plain)
    assert all(not b.rereadable and b.detached() is b for b in stream)
    assert plain[1].first_line == plain[0].last_line + 1 == 1 + plain[0].nlines
    for blocks in (plain, stream, [b.detached() for b in plain]):
        assert [x for b in blocks for x in b.lines()] == reference(body)


def test_jsonl_files_the_file_a_preferred_file_or_the_folders_jsonl(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text("{}\n")
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "report.json").write_text("{}")
    folder = Artifact(tmp_path, "d", "stage.out")
    assert B.jsonl_files(folder, "hint") == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    assert B.jsonl_files(folder, "hint", prefer="b.jsonl") == [tmp_path / "b.jsonl"]
    assert B.jsonl_files(folder, "hint", prefer="examples.jsonl") == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    assert B.jsonl_files(Artifact(tmp_path / "b.jsonl", "d"), "hint") == [tmp_path / "b.jsonl"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageInputError, match=r"^x\.out: holds no \.jsonl file; connect ingest\.records$"):
        B.jsonl_files(Artifact(tmp_path / "empty", "d", "x.out"), "connect ingest.records")
