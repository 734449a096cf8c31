"""Atomic writes: a reader (or a crash) sees the old file or the new one, never a mix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tunepipe.cache.atomic import canonical_json, write_bytes, write_json


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_creates_file_with_complete_content(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    target = tmp_path / "blob.bin"
    write_bytes(target, data)
    assert target.read_bytes() == data
    assert names(tmp_path) == ["blob.bin"]  # no temporary file left next to it


def test_write_bytes_replaces_existing_file_completely(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"a much longer old content that must not survive as a tail")
    write_bytes(target, b"short")
    assert target.read_bytes() == b"short"
    assert names(tmp_path) == ["f.txt"]


def test_write_bytes_replaces_instead_of_overwriting_in_place(tmp_path: Path) -> None:
    """A reader that opened the old file keeps reading the complete old content."""
    target = tmp_path / "f.txt"
    target.write_bytes(b"old content\n" * 100)
    with open(target, "rb") as reader:
        head = reader.read(12)
        write_bytes(target, b"new content\n" * 50)
        rest = reader.read()
    assert head + rest == b"old content\n" * 100
    assert target.read_bytes() == b"new content\n" * 50


def test_write_bytes_failing_mid_write_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")
    # The temporary file is created, then writing a str to it fails.
    with pytest.raises(TypeError):
        write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert names(tmp_path) == ["f.txt"]


def test_write_bytes_failing_replace_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "inside").write_text("keep")
    with pytest.raises(OSError):
        write_bytes(target, b"data")  # os.replace cannot put a file over a folder
    assert names(tmp_path) == ["occupied"]
    assert (target / "inside").read_text() == "keep"


def test_write_json_round_trips_in_insertion_order_and_utf8(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    payload = {"zeta": [1, 2.5, None], "alpha": {"name": "café ☕", "ok": True}}
    write_json(target, payload)
    raw = target.read_bytes()
    assert json.loads(raw) == payload
    assert raw.endswith(b"\n")
    assert "café ☕".encode() in raw  # UTF-8 kept, not \u escapes
    text = raw.decode()
    assert text.index('"zeta"') < text.index('"alpha"')  # a plugin's summary keeps its own order


def test_write_json_unserialisable_payload_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json(target, {"version": 1})
    before = target.read_bytes()
    with pytest.raises(TypeError):
        write_json(target, {"version": 2, "bad": object()})
    assert target.read_bytes() == before
    assert json.loads(before) == {"version": 1}
    assert names(tmp_path) == ["r.json"]


def test_write_json_circular_payload_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json(target, [1, 2, 3])
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError):
        write_json(target, loop)
    assert json.loads(target.read_text()) == [1, 2, 3]
    assert names(tmp_path) == ["r.json"]


def test_canonical_json_is_key_order_independent() -> None:
    a = {"b": 1, "a": {"y": [1, {"q": 2, "p": 3}], "x": "s"}}
    b = {"a": {"x": "s", "y": [1, {"p": 3, "q": 2}]}, "b": 1}
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a) == '{"a":{"x":"s","y":[1,{"p":3,"q":2}]},"b":1}'


def test_canonical_json_keeps_list_order_and_types_apart() -> None:
    assert canonical_json([1, 2]) != canonical_json([2, 1])
    assert canonical_json({"v": 1}) != canonical_json({"v": 1.0})
    assert canonical_json({"v": 1}) != canonical_json({"v": True})
    assert canonical_json({"v": "1"}) != canonical_json({"v": 1})


def test_canonical_json_keeps_utf8() -> None:
    assert canonical_json({"k": "ñ€"}) == '{"k":"ñ€"}'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"lr": [0.1, math.nan]}])
def test_canonical_json_rejects_nan_and_infinity(value: object) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)
