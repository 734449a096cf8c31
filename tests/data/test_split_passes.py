"""The split stage's passes over its files, called directly (tunepipe.data.split_passes)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tunepipe.data import blocks as B
from tunepipe.data import split_passes as P
from tunepipe.data import splitting as S
from tunepipe.data.outfile import OutputFile
from tunepipe.data.record import Provenance
from tunepipe.errors import StageInputError
from tunepipe.plugins import Artifact


def chat(i: int, **meta: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"messages": [{"role": "user", "content": f"Q {i % 7}"}, {"role": "assistant", "content": str(i)}]}
    if meta:
        r["meta"] = meta
    return r


def config(tmp_path: Path | None = None, stratify: str | None = None) -> S.ScanConfig:
    return S.ScanConfig(salt=S.seed_salt(0), group_by=None, by_prompt=False,
                        stratify_by=tuple(stratify.split(".")) if stratify else None,
                        staged=str(tmp_path) if tmp_path else None, stratify_label=stratify or "")


def write(path: Path, records: list[Any], crlf: bool = False) -> Path:
    end = "\r\n" if crlf else "\n"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + end for r in records))
    return path


def test_scan_hashes_each_example_and_stages_it_without_meta(tmp_path: Path) -> None:
    records = [chat(i, source="a.csv", row=i) for i in range(30)]
    path = write(tmp_path / "x.jsonl", records[:10] + ["", "  "] + records[10:], crlf=True)
    art = Artifact(path, "d", "x")
    staged = tmp_path / "staged"
    staged.mkdir()
    cfg = config(staged)
    got = [P.scan(cfg, b) for b in B.cut(art, [path], 200)]
    assert sum(g.lines for g in got) == 32 and all(g.error is None for g in got)
    keys = b"".join(g.keys for g in got)
    assert keys == b"".join(S.key_digest(S.example_key(r, cfg, ""), cfg.salt) for r in records)
    lines = [x for block in P.staged_lines(staged) for x in block]
    assert lines == [json.dumps({"messages": r["messages"]}, separators=(",", ":")).encode() for r in records]


def test_with_bands_scan_writes_each_example_to_its_splits_part_as_the_assignment_decides(tmp_path: Path) -> None:
    records = [chat(i, source="a.csv", row=i) for i in range(300)]
    path = write(tmp_path / "x.jsonl", records)
    art = Artifact(path, "d", "x")
    validation, test = S.Size(0.2), S.Size(0.1)
    bands = S.direct_bands(validation, test, stratified=False, leakage="fail")
    for keep_meta in (False, True):
        staged = tmp_path / f"staged-{keep_meta}"
        staged.mkdir()
        cfg = S.ScanConfig(salt=S.seed_salt(0), group_by=None, by_prompt=False, stratify_by=None,
                           staged=str(staged), bands=bands, keep_meta=keep_meta)
        hashes = P.Hashes(cfg, "examples")
        paths = [tmp_path / f"{keep_meta}-{name}.jsonl" for name in S.SPLITS]
        with contextlib.ExitStack() as stack:
            outs = [stack.enter_context(OutputFile(p)) for p in paths]
            for block in B.cut(art, [path], 2000):
                got = P.scan(cfg, block)
                hashes.add(got)
                P.append_parts(outs, staged, block.index, got.written)
        h = hashes.arrays()
        split = S.assign_all(h.u, None, [], validation, test).split
        assert h.written == np.bincount(split, minlength=3).tolist() and min(h.written) > 0
        assert not list(staged.iterdir())  # the parts are removed once appended
        for s, p in enumerate(paths):
            want = [r if keep_meta else {"messages": r["messages"]} for r, x in zip(records, split) if x == s]
            assert [json.loads(line) for line in p.read_text().splitlines()] == want


def test_bands_only_where_every_split_follows_from_its_own_hash() -> None:
    ratio, count = S.Size(0.1), S.Size(5)
    assert S.direct_bands(ratio, S.Size(0), False, "report") == (S.band(0.1) - 1, None)
    assert S.direct_bands(ratio, ratio, True, "fail") is None          # strata: quotas per stratum
    assert S.direct_bands(count, S.Size(0), False, "fail") is None     # a count needs every key
    assert S.direct_bands(S.Size(0), ratio, False, "fail") == (None, 2**64 - S.band(0.1))  # but zero is zero
    assert S.direct_bands(ratio, S.Size(0), False, "dedupe") is None   # drops decided on the whole set
    bands = S.direct_bands(ratio, ratio, False, "fail")
    assert bands is not None
    for u in (0, bands[0], bands[0] + 1, bands[1] - 1, bands[1], 2**64 - 1):
        assert S.band_split(u, bands) == S.ratio_split(u, 0.1, 0.1)


def test_a_bad_line_is_numbered_in_its_block_and_named_by_its_meta_when_it_has_a_position(tmp_path: Path) -> None:
    records: list[Any] = [chat(i, label="a") for i in range(20)]
    records[13] = "{not json"
    records[17] = {"messages": [], "meta": {"source": "q.csv", "row": 4}}
    path = write(tmp_path / "x.jsonl", records)
    art = Artifact(path, "d", "x")
    blocks = list(B.cut(art, [path], 300))
    numbers = B.LineNumbers()
    found = []
    for block in blocks:
        got = P.scan(config(stratify="meta.label"), block)
        before = numbers.advance(block, B.count_lines(block.read()))
        if got.error is not None:
            found.append(str(got.error.where or Provenance(block.label, "line", before + got.error.line)))
    assert found == ["x:14", "q.csv:row 4"]


def test_hashes_number_strata_and_refuse_too_many(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(stratify="meta.label")
    hashes = P.Hashes(cfg, "examples")
    hashes.add(P.Scanned(0, bytes(16), bytes(8) + b"\xff" * 8, [b'"b"', b'"a"']))
    hashes.add(P.Scanned(0, bytes(8), bytes(8), [b'"b"']))
    u, ph, st, values, _ = hashes.arrays()
    assert hashes.count == 3 and st.tolist() == [0, 1, 0] and values == ["b", "a"]
    assert ph.tolist() == [0, S.LOW2, 0]  # the two low bits are cleared for the split
    monkeypatch.setattr(P, "MAX_STRATA", 2)
    hashes = P.Hashes(cfg, "examples")
    hashes.add(P.Scanned(0, bytes(16), bytes(16), [b'"b"', b'"a"']))
    with pytest.raises(StageInputError, match="examples: stratify_by 'meta.label' has more than 2 distinct values"):
        hashes.add(P.Scanned(0, bytes(8), bytes(8), [b'"c"']))


def test_write_splits_copies_each_line_to_its_split_in_order(tmp_path: Path) -> None:
    paths = [tmp_path / f"{name}.jsonl" for name in S.SPLITS]
    split = np.array([0, 1, 0, 3, 2, 0], dtype=np.uint8)  # 3: dropped
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(OutputFile(p)) for p in paths]
        P.write_splits(outs, split, [[b"a", b"b"], [b"c", b"d", b"e"], [b"f"]])
    assert [p.read_bytes() for p in paths] == [b"a\nc\nf\n", b"b\n", b"e\n"]
    with pytest.raises(RuntimeError, match="the input changed"), OutputFile(tmp_path / "x") as out:
        P.write_splits([out, out, out], split, [[b"a"]])


def test_locate_findings_and_groups_across_strata_name_examples_by_provenance(tmp_path: Path) -> None:
    records = [chat(i, source="s.csv", row=i + 1) for i in range(20)] + [chat(0)]
    path = write(tmp_path / "x.jsonl", records)
    art = Artifact(path, "d", "x")
    found = P.locate(art, [path], {0, 20})
    assert str(found[0].where) == "s.csv:row 1" and str(found[20].where) == "x:21" and found[20].record == records[20]
    ph = np.array([S.key_hash(f"q {i % 7}".encode(), 0) & S.LOW2 for i in range(21)], dtype=np.uint64)
    split = np.array([i % 2 for i in range(21)], dtype=np.uint8)
    leaks = S.find_leaks(ph, split)
    out = P.findings(leaks, ph, split, art, [path], "report")
    assert out[0] == {"prompt": "Q 0", "splits": {"train": 2, "validation": 1},
                      "occurrences": [{"where": "s.csv:row 1", "split": "train"},
                                      {"where": "s.csv:row 8", "split": "validation"},
                                      {"where": "s.csv:row 15", "split": "train"}]}
    u = np.array([5, 6, 5], dtype=np.uint64)
    with pytest.raises(StageInputError, match=r"^s\.csv:row 3: this example's group .* also in s\.csv:row 1, "):
        P.check_groups_within_strata(u, np.array([0, 0, 1], dtype=np.uint16), art, [path], "meta.conv", "meta.label")
