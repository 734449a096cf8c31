"""The ingest readers (tunepipe.data.readers) and record mapping (tunepipe.data.mapping), on real files."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest

from tunepipe.data import readers
from tunepipe.data.mapping import ConfigError, Mapper, Reject, Template
from tunepipe.data.readers import FileProblem


def units(src: readers.Source) -> list[Any]:
    out: list[Any] = []
    for batch in src.batches(3):
        if isinstance(batch, readers.Block):
            out.extend(batch.lines())
        else:
            out.extend(batch)
    return out


def read(path: Path, fmt: str = "auto", **kw: Any) -> tuple[readers.Source, list[Any]]:
    with readers.open_source(path, fmt, **kw) as src:
        return src, units(src)


# ------------------------------------------------------------------------------------------ format detection

@pytest.mark.parametrize(("name", "fmt"), [
    ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"), ("a.JSONL.GZ", "jsonl"), ("a.json", "json"), ("a.json.gz", "json"),
    ("a.csv", "csv"), ("a.csv.gz", "csv"), ("a.tsv", "tsv"), ("a.tab", "tsv"), ("a.parquet", "parquet"),
    ("a.pq", "parquet"), ("a.txt", None), ("a.gz", None), ("jsonl", None),
])
def test_format_from_name(name: str, fmt: str | None) -> None:
    assert readers.format_from_name(Path(name)) == fmt


def test_an_unknown_extension_is_a_file_problem_unless_the_format_is_given(tmp_path: Path) -> None:
    path = tmp_path / "chat.txt"
    path.write_text('{"a": 1}\n')
    with pytest.raises(FileProblem, match="cannot tell the file's format from its name; .* or set `format:`"):
        readers.open_source(path)
    src, got = read(path, "jsonl")
    assert src.unit == "line" and got == [(1, b'{"a": 1}')]


def test_gzip_is_detected_by_suffix_and_by_magic_bytes(tmp_path: Path) -> None:
    body = b'{"a": 1}\n\n{"b": 2}\n'
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "y.jsonl").write_bytes(gzip.compress(body))  # gzipped, but not named so
    (tmp_path / "z.jsonl").write_bytes(body)
    assert readers.is_gzip(tmp_path / "x.jsonl.gz") and readers.is_gzip(tmp_path / "y.jsonl")
    assert not readers.is_gzip(tmp_path / "z.jsonl")
    for name in ("x.jsonl.gz", "y.jsonl", "z.jsonl"):
        assert read(tmp_path / name)[1] == [(1, b'{"a": 1}'), (3, b'{"b": 2}')]


def test_a_truncated_gzip_file_is_a_file_problem_naming_how_far_it_got(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * (i % 50)) for i in range(200000)))
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileProblem, match=r"the gzip data is corrupt or truncated after line \d+ .*compress the"):
        read(path)
    (tmp_path / "bad.csv.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(FileProblem, match="cannot decompress it"):
        read(tmp_path / "bad.csv.gz")


def test_utf16_text_is_a_file_problem(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_bytes("question,answer\nq,a\n".encode("utf-16"))
    with pytest.raises(FileProblem, match="it is UTF-16 text; save it as UTF-8"):
        readers.open_source(path)


# ------------------------------------------------------------------------------------------------ JSONL

def test_jsonl_blocks_keep_line_numbers_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "BLOCK", 1 << 16)  # several blocks
    lines = [b'{"i": %d}' % i for i in range(30000)]
    body = b"\xef\xbb\xbf" + b"\r\n".join(lines[:10]) + b"\r\n\n  \n" + b"\n".join(lines[10:])  # no final newline
    path = tmp_path / "x.jsonl"
    path.write_bytes(body)
    with readers.open_source(path) as src:
        blocks = list(src.batches())
    assert len(blocks) > 1 and all(b.rereadable for b in blocks)
    # a block of a plain file can be re-read from its offset (what a worker process does)
    got = [u for b in blocks for u in b.detached().lines()]
    assert got[:10] == [(i + 1, lines[i]) for i in range(10)]
    assert got[10:] == [(i + 3, lines[i]) for i in range(10, 30000)]  # CRLF, BOM, and blank lines counted
    with gzip.open(tmp_path / "x.jsonl.gz", "wb") as f:
        f.write(body)
    with readers.open_source(tmp_path / "x.jsonl.gz") as src:
        gz_blocks = list(src.batches())
    assert all(not b.rereadable and b.detached() is b for b in gz_blocks)  # a stream cannot be re-read
    assert [u for b in gz_blocks for u in b.lines()] == got


# ----------------------------------------------------------------------------------------------- JSON arrays

def elements(data: bytes, chunk: int = 7) -> list[tuple[int, bytes]]:
    return list(readers.iter_array(io.BytesIO(data), chunk_size=chunk))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 16])
def test_a_json_array_is_split_into_its_elements_whatever_the_chunk_size(chunk: int) -> None:
    items = [{"s": 'a "quoted" [not, a, bracket] {nor: this}, \\ back\\slash \\"'}, {"nested": [[1, 2], {"a": [3]}]},
             "text, with comma", 12, None, [], {}, {"u": "é ☃ \u2028"}]
    data = b"\xef\xbb\xbf \n[\n " + b" ,\n".join(json.dumps(x, ensure_ascii=False).encode() for x in items) + b"\n] \n"
    got = elements(data, chunk)
    assert [i for i, _ in got] == list(range(len(items)))
    assert [json.loads(e) for _, e in got] == items


def test_json_arrays_agree_with_json_loads_on_random_documents() -> None:
    import random

    rng = random.Random(3)
    alphabet = 'ab ,:[]{}"\\/\n\té☃𝄞\u2028'

    def value(depth: int) -> Any:
        kind = rng.randrange(6 if depth < 3 else 3)
        if kind == 0:
            return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 3, 20, 9000])))
        if kind == 1:
            return rng.choice([0, -1.5, 1e300, True, False, None])
        if kind == 2:
            return rng.randrange(10**6)
        if kind == 3:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {f"k{i}{rng.choice(alphabet)}": value(depth + 1) for i in range(rng.randrange(5))}

    for _ in range(40):
        items = [value(0) for _ in range(rng.randrange(1, 12))]
        text = json.dumps(items, ensure_ascii=rng.random() < 0.3, indent=rng.choice([None, 0, 2]),
                          separators=rng.choice([None, (",", ":"), (" , ", " : ")]))
        got = elements(text.encode(), rng.choice([1, 5, 64, 4096, 1 << 20]))
        assert [json.loads(e) for _, e in got] == items


@pytest.mark.parametrize(("data", "expected"), [
    (b"[]", []), (b"  [ ]  ", []), (b"", []), (b"   \n", []),
    (b"[1,,2]", [(0, b"1"), (1, b""), (2, b"2")]),
    (b"[1, 2,]", [(0, b"1"), (1, b"2"), (2, b"")]),
    (b'[{"a": tru}, {"b": 1}]', [(0, b'{"a": tru}'), (1, b'{"b": 1}')]),  # a bad element stays one element
])
def test_json_array_edge_cases(data: bytes, expected: list[tuple[int, bytes]]) -> None:
    assert elements(data) == expected


@pytest.mark.parametrize(("data", "message"), [
    (b'{"a": 1}', "expected a JSON array of records \\('\\[' first\\), found '\\{' at byte 0"),
    (b'[{"a": 1}, {"b": 2}', "the JSON array is not closed: the file ends after element 1"),
    (b'[{"a": 1}, {"b": [2', "the JSON array is not closed: the file ends inside element 1"),
    (b'[{"a": "unterminated}]', "not closed"),
    (b'[{"a": 1}}, {"b": 2}]', "unexpected '}' at byte 9 after element 0 \\(unbalanced brackets\\?\\)"),
    (b'[{"a": [1}]', "unbalanced brackets: '}' at byte 9"),
    (b"[1] [2]", "unexpected text after the array's closing ']' at byte 4"),
])
def test_a_broken_json_array_is_a_file_problem(data: bytes, message: str) -> None:
    with pytest.raises(FileProblem, match=message):
        elements(data, 4)


def test_a_json_file_of_objects_per_line_is_read_as_jsonl_unless_json_is_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    path.write_text('\n{"a": 1}\n{"a": 2}\n')
    src, got = read(path)
    assert src.format == "jsonl" and src.unit == "line" and got == [(2, b'{"a": 1}'), (3, b'{"a": 2}')]
    with pytest.raises(FileProblem, match="`format: json` expects one top-level JSON array .* use `format: jsonl`"):
        readers.open_source(path, "json")
    path.write_text('[{"a": 1}]')
    src, got = read(path)
    assert src.format == "json" and src.unit == "index" and got == [(0, b'{"a": 1}')]


# ---------------------------------------------------------------------------------------------------- CSV

def test_csv_rows_count_data_rows_and_know_their_physical_line(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_bytes(b'\xef\xbb\xbf\nquestion,answer\r\nq1,"a, with comma"\r\n\r\nq2,"two\nlines"\nq3,"say ""hi"""\n'
                     b'q4,a"b\nq5,"bad"x\nq6,a6')
    src, got = read(path)
    assert src.columns == ("question", "answer") and src.unit == "row"
    assert got[:3] == [(1, ("q1", "a, with comma"), 3), (2, ("q2", "two\nlines"), 5), (3, ("q3", 'say "hi"'), 7)]
    assert got[3] == (4, ("q4", 'a"b'), 8)
    assert got[4][0] == 5 and got[4][2] == 9 and got[4][1].startswith("not valid CSV (',' expected after '\"')")
    assert got[5] == (6, ("q6", "a6"), 10)


def test_tsv_and_a_custom_delimiter(tmp_path: Path) -> None:
    (tmp_path / "qa.tsv").write_text("question\tanswer\nq, 1\ta; 1\n")
    assert read(tmp_path / "qa.tsv")[1] == [(1, ("q, 1", "a; 1"), 2)]
    (tmp_path / "qa.csv").write_text("question;answer\nq, 1;a\n")
    assert read(tmp_path / "qa.csv", delimiter=";")[1] == [(1, ("q, 1", "a"), 2)]


def test_csv_problems(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("q,a,q\n1,2,3\n")
    with pytest.raises(FileProblem, match="the header names column 'q' twice"):
        readers.open_source(path)
    path.write_text("")
    src, got = read(path)
    assert src.columns == () and got == []
    path.write_bytes(b"q,a\n1,caf\xe9\n")  # not UTF-8: kept as a surrogate for the stage to reject
    assert read(path)[1] == [(1, ("1", "caf\udce9"), 2)]
    path.write_text('q,a\n1,"never closed\n2,3\n')
    assert read(path)[1] == [(1, "not valid CSV (unexpected end of data); quote fields that hold the delimiter, "
                                 "quotes or line breaks", 2)]


# ------------------------------------------------------------------------------------------------- Parquet

def test_parquet_rows_in_batches(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 2500
    table = pa.table({"q": [f"q{i}" for i in range(n)], "n": list(range(n)),
                      "messages": [[{"role": "user", "content": f"u{i}", "name": None}] for i in range(n)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=1000)
    src, got = read(tmp_path / "t.parquet")
    assert src.columns == ("q", "n", "messages") and src.unit == "row"
    assert [g[0] for g in got] == list(range(1, n + 1))
    assert got[1] == (2, ("q1", 1, [{"role": "user", "content": "u1", "name": None}]), None)
    assert readers.nested_without_nulls(got[1][1]) == ("q1", 1, [{"role": "user", "content": "u1"}])


def test_parquet_problems(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    (tmp_path / "t.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(FileProblem, match="not a readable Parquet file"):
        readers.open_source(tmp_path / "t.parquet")
    (tmp_path / "t.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(FileProblem, match="gzip-compressed Parquet is not supported"):
        readers.open_source(tmp_path / "t.parquet.gz")


# ------------------------------------------------------------------------------------------------- mapping

def render(text: str, record: dict[str, Any]) -> str:
    return Template(text, "map.user").render(record)


def test_templates_fill_fields_nested_paths_and_literal_braces() -> None:
    record = {"q": "Why?", "meta": {"q": "nested", "tags": ["a", "b"]}, "n": 3, "ok": True, "x": 1.5,
              "a.b": "dotted column"}
    assert render("{q}", record) == "Why?"
    assert render("Q: {meta.q} ({meta.tags.1}) {{literal}} {n} {ok} {x}", record) == \
        "Q: nested (b) {literal} 3 true 1.5"
    assert render("{a.b}", record) == "dotted column"  # a key with a dot wins over the path
    assert render("no fields }} {{", record) == "no fields } {"


@pytest.mark.parametrize(("text", "record", "code", "reason"), [
    ("{answer}", {"question": "q"}, "missing_field", "missing field 'answer' (used in map.user)"),
    ("{meta.q}", {"meta": {}}, "missing_field", "missing field 'meta.q' (used in map.user)"),
    ("{meta.q}", {"meta": "text"}, "missing_field", "missing field 'meta.q' (used in map.user)"),
    ("{tags.5}", {"tags": ["a"]}, "missing_field", "missing field 'tags.5' (used in map.user)"),
    ("{a}", {"a": None}, "missing_field", "field 'a' is null (used in map.user)"),
    ("{meta}", {"meta": {"q": 1}}, "bad_field", "field 'meta' is an object, not text (used in map.user); name a "
                                                "value inside it, such as {meta.KEY}"),
    ("{tags}", {"tags": [1]}, "bad_field", "field 'tags' is a list, not text (used in map.user); name a value "
                                           "inside it, such as {tags.0}"),
])
def test_template_rejects_name_the_field(text: str, record: dict[str, Any], code: str, reason: str) -> None:
    with pytest.raises(Reject) as info:
        render(text, record)
    assert (info.value.code, info.value.reason) == (code, reason)


@pytest.mark.parametrize(("text", "message"), [
    ("{question", "map.user: the '{' at character 1 is not closed"),
    ("a {b {c}}", "map.user: the '{' at character 3 is not closed"),
    ("x } y", "map.user: a single '}' at character 3; write }} for a literal brace"),
    ("{}", "map.user: '' is not a field name"),
    ("{a..b}", "map.user: 'a..b' is not a field name"),
])
def test_bad_templates_are_configuration_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("{", "\\{").replace("}", "\\}")
                       .replace("(", "\\(").replace(")", "\\)")):
        Template(text, "map.user")


@pytest.mark.parametrize(("settings", "message"), [
    ({"preset": "map"}, "preset is `map` but no `map` is given"),
    ({"map": {"user": "{q}"}}, "map needs `assistant`"),
    ({"map": {"system": "s"}}, "map needs `user` and `assistant`"),
    ({"map": {"user": "{q}", "preferred": "{a}"}}, "map: a DPO mapping needs both `preferred` and `non_preferred`"),
    ({"map": {"user": "{q}", "assistant": "{a}", "preferred": "{a}", "non_preferred": "{b}"}},
     "map: give `assistant` .* not both"),
    ({"map": {"messages": [{"role": "user", "content": "{q}"}], "user": "{q}"}},
     "map: give either `messages` or user, not both"),
    ({"keep_fields": ["a..b"]}, "keep_fields: 'a..b' is not a field name"),
])
def test_bad_mapping_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Mapper(settings)


def test_column_checks_happen_once_per_file() -> None:
    qa = Mapper({"map": {"user": "{question}", "assistant": "{answr}"}}, "sources[0]")
    assert qa.columns_problem(("question", "answer"), True) == (
        "sources[0].map.assistant uses the field 'answr', but the file has no column 'answr' (did you mean "
        "{answer}? columns: 'question', 'answer'); fix the template or the header")
    assert Mapper({"map": {"user": "{meta.q}", "assistant": "{a}"}}).columns_problem(("meta", "a"), False) is None
    auto = Mapper({})
    assert auto.columns_problem(("instruction", "input", "output"), True) is None
    assert "are not a known record shape; map them to messages with `map`, e.g. `map: {user: \"{question}\", " \
           "assistant: \"{answer}\"}`" in auto.columns_problem(("question", "answer"), True)
    assert "preset openai needs nested lists, which a CSV/TSV cannot hold" in \
        Mapper({"preset": "openai"}).columns_problem(("messages",), True)
    assert Mapper({"preset": "openai"}).columns_problem(("messages",), False) is None  # Parquet
    assert Mapper({"preset": "alpaca"}).columns_problem(("instruction",), True) == \
        "preset alpaca needs the column 'output' (columns: 'instruction')"


def test_keep_fields_copy_into_meta_and_absent_ones_are_left_out() -> None:
    m = Mapper({"keep_fields": ["id", "info.lang", "nope"]})
    record = {"messages": [{"role": "user", "content": "x"}], "id": 7, "info": {"lang": "en"}, "meta": {"a": 1}}
    assert m.apply(record) == {"messages": record["messages"], "meta": {"a": 1, "id": 7, "info.lang": "en"}}
