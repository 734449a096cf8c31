"""The record stage that docs/plugins.md builds ("Writing a record stage") works as documented.

The stage's code and pipeline are taken from the page as written, and run through the real CLI.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs" / "plugins.md"
MODULE = "tp_scriptfilter"


def _block(lang: str, containing: str) -> str:
    """The one ```lang block of the page that contains ``containing``."""
    found = [b for b in re.findall(rf"```{lang}\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
             if containing in b]
    assert len(found) == 1, f"{len(found)} {lang} blocks of {DOCS.name} contain {containing!r}"
    return found[0]


def _code() -> str:
    return _block("python", f"# {MODULE}/__init__.py\n")


@pytest.fixture
def guide(project, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """The project with the page's stage in it, imported from there (the run finds it loaded)."""
    code = _code()
    assert len(code.splitlines()) < 100, "the guide promises a stage in under 100 lines"
    project.write(f"{MODULE}/__init__.py", code)
    monkeypatch.syspath_prepend(str(project.root))
    sys.modules.pop(MODULE, None)
    yield project
    sys.modules.pop(MODULE, None)  # the next test's project has its own copy


def _chat(user: object, assistant: str, **meta: object) -> bytes:
    record: dict = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
    if meta:
        record["meta"] = meta
    return json.dumps(record, ensure_ascii=False).encode()


def _input() -> tuple[bytes, list[bytes], list[dict]]:
    """A JSONL file with a byte-order mark, CRLF line ends, blank lines and no newline at its end;
    the lines the stage must keep, and the rejects rows it must write, in order."""
    rows: list[tuple[bytes, bytes]] = [  # (line, line end), by line number
        (_chat("Where is Paris?", "In France."), b"\r\n"),                          # 1
        (_chat("Где Париж?", "Во Франции."), b"\r\n"),                              # 2: a Cyrillic user text
        (b"", b"\r\n"), (b"   ", b"\n"),                                            # 3, 4: blank
        (_chat("What is 2+2?", "4"), b"\n"),                                        # 5: no letters passes
        (_chat([{"type": "text", "text": "Say cat in Japanese"}], "猫 is neko"), b"\n"),  # 6: 6 of 7 letters
        (b"{oops", b"\n"),                                                          # 7: not JSON
        (_chat("Привет", "Hi", source="data/raw.csv", row=12), b"\n"),               # 8: named by its meta
        (_chat("Hello", "Здравствуйте", source="elsewhere.jsonl"), b"\n"),           # 9: meta, no position
    ]
    for i in range(10, 40):
        text = "Καλημέρα" if i == 33 else f"question {i}"
        rows.append((_chat(text, f"answer {i}"), b"\n"))
    rows.append((_chat("last one", "no newline after me"), b""))                    # 40
    body = b"\xef\xbb\xbf" + b"".join(line + end for line, end in rows)
    dropped = {2, 7, 8, 9, 33}
    kept = [line + b"\n" for n, (line, _) in enumerate(rows, start=1) if line.strip() and n not in dropped]
    stage = "latin"
    rejects = [
        {"source": "data/chats.jsonl", "line": 2, "stage": stage, "code": "wrong_script",
         "reason": "user text is 0% LATIN, below min_share 0.8"},
        {"source": "data/chats.jsonl", "line": 7, "stage": stage, "code": "bad_record",
         "reason": "not a JSON object with messages"},
        {"source": "data/raw.csv", "row": 12, "stage": stage, "code": "wrong_script",
         "reason": "user text is 0% LATIN, below min_share 0.8"},
        {"source": "data/chats.jsonl", "line": 9, "stage": stage, "code": "wrong_script",
         "reason": "assistant text is 0% LATIN, below min_share 0.8"},
        {"source": "data/chats.jsonl", "line": 33, "stage": stage, "code": "wrong_script",
         "reason": "user text is 0% LATIN, below min_share 0.8"},
    ]
    return body, kept, rejects


def _outputs(project) -> tuple[dict, bytes, bytes]:
    info = json.loads(project.ok("show", "p.yaml", "latin", "--json").stdout)
    records = Path(info["outputs"]["records"]["path"]) / "records.jsonl"
    rejects = Path(info["outputs"]["rejects"]["path"]) / "rejects.jsonl"
    return info["summary"], records.read_bytes(), rejects.read_bytes()


def test_the_record_stage_of_the_guide_gives_the_same_bytes_with_one_and_two_workers(
        guide, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import tunepipe.data.parallel as parallel

    body, kept, rejects = _input()
    (guide.root / "data").mkdir()
    (guide.root / "data" / "chats.jsonl").write_bytes(body)
    guide.spec("""\
        stages:
          latin:
            uses: tp_scriptfilter:ScriptFilter
            inputs: {records: data/chats.jsonl}
        """)
    stage = importlib.import_module(MODULE)
    monkeypatch.setattr(stage, "BLOCK_BYTES", 200)  # two or three lines a block: many blocks
    maps: list[tuple[int, int]] = []  # (workers, blocks) of each ctx.map
    real = parallel.ordered_map

    def spy(fn, items, workers, *args, **kwargs):
        items = list(items)
        maps.append((workers, len(items)))
        return real(fn, items, workers, *args, **kwargs)

    monkeypatch.setattr(parallel, "ordered_map", spy)
    outputs = []
    for cores in (1, 2):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)  # the stage's share: -j 1 of `cores`
        guide.ok("run", "p.yaml", "--force")
        outputs.append(_outputs(guide))
    assert [w for w, _ in maps] == [1, 2] and all(blocks > 10 for _, blocks in maps)
    summary, records, rows = outputs[0]
    assert records == b"".join(kept)
    assert [json.loads(r) for r in rows.splitlines()] == rejects
    assert [list(json.loads(r)) for r in rows.splitlines()] == [list(r) for r in rejects]  # the keys in layout order
    assert summary == {"kept": len(kept), "dropped": len(rejects)}
    assert outputs[1] == outputs[0]  # byte for byte


def test_the_guide_s_pipeline_names_records_by_ingest_s_provenance(guide) -> None:
    lines = [_chat("Where is Paris?", "In France."), _chat("Где Париж?", "Во Франции."),
             _chat("Bonjour, ça va ?", "Très bien, merci."), _chat("東京はどこ?", "日本です。")]
    guide.write("data/chats.jsonl", "".join(x.decode() + "\n" for x in lines))
    guide.spec(_block("yaml", f"uses: {MODULE}:ScriptFilter"))
    guide.ok("run", "p.yaml")
    summary, records, rows = _outputs(guide)
    assert summary == {"kept": 2, "dropped": 2}
    assert [json.loads(r)["meta"] for r in records.splitlines()] == [
        {"source": "data/chats.jsonl", "line": 1}, {"source": "data/chats.jsonl", "line": 3}]
    got = [json.loads(r) for r in rows.splitlines()]
    documented = json.loads(_block("json", '"code": "wrong_script"'))
    assert got[0] == documented
    assert [(r["source"], r["line"], r["code"]) for r in got] == [("data/chats.jsonl", 2, "wrong_script"),
                                                                  ("data/chats.jsonl", 4, "wrong_script")]
    listing = guide.ok("stages", f"{MODULE}:ScriptFilter").stdout
    assert "min_share" in listing and "scripts" in listing
