"""The record stages on Ray Data write the bytes the local executor writes.

Each stage runs directly twice on the same generated input: ``engine="local"`` (one process: the
reference; the stages' own tests show one worker and two give the same bytes) and ``engine="ray"``
on the session's in-process Ray (2 CPUs), and the output folders must have the same tree digest.
The block sizes are made small (the thresholds too) so that a small input is many blocks, and a spy
on the driver's side of :func:`tunepipe.cluster.ray_data.ray_map` shows that the blocks really went
through Ray Data, some of them in groups.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_local import ray_local  # noqa: F401  (the session's Ray instance)

from tunepipe.cache.digests import tree_digest
from tunepipe.cluster import ray_data
from tunepipe.data import readers
from tunepipe.plugins import Artifact, StageContext
from tunepipe.spec.schema import with_defaults
from tunepipe.stages import clean as clean_stage
from tunepipe.stages import format as format_stage
from tunepipe.stages import ingest as ingest_stage
from tunepipe.stages import split as split_stage

pytestmark = pytest.mark.usefixtures("ray_local")

WORDS = ("marv sarcastic answer question paris france capital obviously map river mountain ocean planet "
         "physics history poem number seven twelve because however really").split()
SYSTEM = "Marv is a factual chatbot that is also sarcastic."


class RayUse:
    """What went through Ray Data: the items each map returned, and the size of each group of items."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.groups: list[int] = []

    def check(self) -> None:
        assert len(self.items) == 1 and self.items[0] >= 8  # one map, over many blocks
        assert sum(self.groups) == self.items[0]  # every block's result came back from Ray Data
        assert max(self.groups) > 1  # and blocks travelled in groups too


@pytest.fixture
def ray_use(monkeypatch: pytest.MonkeyPatch) -> RayUse:
    """Spies on the driver's side of the Ray Data map (the real map runs)."""
    use = RayUse()
    real_map, real_done = ray_data.ray_map, ray_data.Feed.group_done

    def spy_map(*args: Any, **kwargs: Any) -> Iterator[Any]:
        use.items.append(0)
        for result in real_map(*args, **kwargs):
            use.items[-1] += 1
            yield result

    def spy_done(feed: Any, items: int, seconds: float) -> None:
        use.groups.append(items)
        real_done(feed, items, seconds)

    monkeypatch.setattr(ray_data, "ray_map", spy_map)
    monkeypatch.setattr(ray_data.Feed, "group_done", spy_done)
    return use


def run(plugin: Any, root: Path, inputs: dict[str, Any], params: dict[str, Any], engine: str) -> tuple[str, Any]:
    """Run the stage as the runner would (fresh output folders) on ``engine``: (the outputs' tree digest, summary)."""
    out = root / engine / "out"
    outputs = {name: out / name for name in plugin.outputs}
    for folder in [*outputs.values(), root / engine / "scratch"]:
        folder.mkdir(parents=True)
    ctx = StageContext(stage=plugin.name, key="k" * 16, outputs=outputs, scratch=root / engine / "scratch",
                       log=logging.getLogger(f"test.ray_identity.{plugin.name}.{engine}"), threads=1, engine=engine)
    summary = plugin.run(ctx, inputs, with_defaults(plugin.params_schema, params))
    return tree_digest(out), summary


def both(plugin: Any, root: Path, inputs: dict[str, Any], params: dict[str, Any]) -> tuple[str, Any]:
    local = run(plugin, root, inputs, params, "local")
    on_ray = run(plugin, root, inputs, params, "ray")
    assert on_ray == local
    return local


def chat(rng: random.Random, i: int) -> dict[str, Any]:
    q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))
    a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{q}? #{i}"},
                         {"role": "assistant", "content": a}],
            "meta": {"source": "gen.jsonl", "line": i + 1, "label": rng.choice("abc"), "conv": i // 3}}


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_ingest_of_jsonl_and_csv_with_rejects(tmp_path: Path, ray_use: RayUse,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_stage, "PARALLEL_AFTER", 1000)  # workers from 1,000 records on (20,000 by default)
    monkeypatch.setattr(readers, "BLOCK", 1 << 18)  # 256 KiB blocks (1 MiB by default)
    rng = random.Random(3)
    lines: list[Any] = [chat(rng, i) for i in range(6000)]  # ~1.4 MB: 6 blocks of 256 KiB
    for i in range(0, 6000, 700):
        lines[i] = '{"messages": [' if i % 1400 else "\xff not utf-8"  # rejects, with their lines
    data = write_jsonl(tmp_path / "chat.jsonl", lines)
    with open(tmp_path / "qa.csv", "w", newline="", encoding="utf-8") as f:  # 3 batches of 1,000 rows
        w = csv.writer(f)
        w.writerow(["question", "answer"])
        for i in range(2500):
            w.writerow([f"q{i}, quoted", "" if i % 500 == 7 else f"a{i}\nsecond line"])
    inputs = {"data": [Artifact(data, "d1", "data/chat.jsonl"), Artifact(tmp_path / "qa.csv", "d2", "data/qa.csv")]}
    params = {"on_error": "skip", "keep_fields": ["meta.label"],
              "sources": [{"match": "*.csv", "map": {"system": SYSTEM, "user": "{question}", "assistant": "{answer}"}}]}
    _, summary = both(ingest_stage.Ingest(), tmp_path, inputs, params)
    assert summary["records"] == 6000 - 9 + 2500 - 5 and summary["rejected"] == 14
    ray_use.check()


def test_clean_with_exact_and_near_dedupe(tmp_path: Path, ray_use: RayUse,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clean_stage, "BLOCK_BYTES", 1 << 16)  # 64 KiB blocks (1 MiB by default)
    rng = random.Random(11)
    records: list[dict[str, Any]] = []
    for i in range(3000):
        roll = rng.random()
        if records and roll < 0.08:
            records.append(rng.choice(records))  # an exact duplicate
        elif records and roll < 0.14:
            base = rng.choice(records)
            near = json.loads(json.dumps(base))
            near["messages"][-1]["content"] += " Obviously."  # a near duplicate
            records.append(near)
        else:
            r = chat(rng, i)
            if roll > 0.9:
                r["messages"][-1]["content"] += rng.choice([" mail me at ann@example.org", "\n\n\n\nbye  now",
                                                            " call +1 (555) 123-4567"])
            records.append(r)
    data = write_jsonl(tmp_path / "records.jsonl", records)
    _, summary = both(clean_stage.Clean(), tmp_path, {"records": Artifact(data, "d", "ingest.records")},
                      {"dedupe": "near", "max_tokens": 90})
    assert summary["records_in"] == 3000
    assert summary["duplicates"] > 100 and summary["near_duplicates"] > 50 and summary["redacted"] > 20
    ray_use.check()


def test_format_openai_chat_with_invalid_examples(tmp_path: Path, ray_use: RayUse,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(format_stage, "BLOCK_BYTES", 1 << 14)  # 16 KiB blocks (1 MiB by default)
    rng = random.Random(5)
    lines: list[Any] = []
    for i in range(1500):
        r = chat(rng, i)
        if i % 10 == 3:
            r["messages"] = r["messages"][:2]  # no assistant reply: invalid
        elif i % 10 == 6:
            r["messages"][1]["content"] = ["not", "a", "string"]
        lines.append(r if i % 97 else "not json")
    data = write_jsonl(tmp_path / "records.jsonl", lines)
    _, summary = both(format_stage.Format(), tmp_path, {"records": Artifact(data, "d", "clean.records")},
                      {"on_invalid": "skip"})
    assert summary["examples"] > 1000 and summary["invalid"] > 300
    ray_use.check()


def test_split_stratified_and_grouped(tmp_path: Path, ray_use: RayUse, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(split_stage, "PARALLEL_MIN_BYTES", 0)  # workers on a small file (32 MB by default)
    monkeypatch.setattr(split_stage, "CHUNK_BYTES", 1 << 15)  # 32 KiB blocks (8 MiB by default)
    rng = random.Random(8)
    records = [chat(rng, i) for i in range(3000)]
    for i in range(0, 3000, 50):
        records[i + 1]["messages"][1]["content"] = records[i]["messages"][1]["content"]  # leaks to report
        records[i + 1]["meta"]["conv"] = records[i]["meta"]["conv"] + 10_000  # in another group
    for r in records:
        r["meta"]["label"] = "abc"[r["meta"]["conv"] % 3]  # a group lies in one stratum
    data = write_jsonl(tmp_path / "examples.jsonl", records)
    _, summary = both(split_stage.Split(), tmp_path, {"examples": Artifact(data, "d", "format.examples")},
                      {"validation": 0.1, "test": 0.05, "group_by": "meta.conv", "stratify_by": "meta.label",
                       "leakage": "report"})
    assert summary["train"] + summary["validation"] + summary["test"] == 3000
    assert summary["validation"] > 200 and summary["test"] > 100 and summary["leaks"] > 0
    ray_use.check()
