"""The built-in ``split`` stage: unit tests of its hashing and assignment, and real CLI runs."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tunepipe.data import fields
from tunepipe.data import splitting as S
from tunepipe.data.record import user_prompt
from tunepipe.stages import split as split_stage
from tunepipe.stages.split import far_ratio

SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------------------------------------
# helpers

def chat(user: str, assistant: str = "ok", **meta: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"messages": [{"role": "system", "content": "Marv is sarcastic."},
                                           {"role": "user", "content": user},
                                           {"role": "assistant", "content": assistant}]}
    if meta:
        record["meta"] = meta
    return record


def numbered(n: int, start: int = 0, **meta: Any) -> list[dict[str, Any]]:
    return [chat(f"question {i}", f"answer {i}", source="data/x.jsonl", line=i + 1, **meta)
            for i in range(start, start + n)]


def write(project, records: list[dict[str, Any]], rel: str = "data/x.jsonl") -> None:
    project.write(rel, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def spec(project, examples: str = "data/x.jsonl", **params: Any) -> None:
    with_ = f"\n    with: {json.dumps(params)}" if params else ""
    project.spec(f"stages:\n  split:\n    uses: split\n    inputs: {{examples: {examples}}}{with_}\n")


def outputs(project, stage: str = "split") -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in SPLITS:
        text = (project.artifact(stage, name) / f"{name}.jsonl").read_text(encoding="utf-8")
        out[name] = [json.loads(x) for x in text.splitlines()]
    return out


def report(project) -> dict[str, Any]:
    return json.loads((project.artifact("split", "report") / "report.json").read_text(encoding="utf-8"))


def split_of(out: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """The split of each example, by its user prompt."""
    return {r["messages"][1]["content"]: name for name, rs in out.items() for r in rs}


def run_split(project, records: list[dict[str, Any]], **params: Any) -> dict[str, list[dict[str, Any]]]:
    write(project, records)
    spec(project, **params)
    project.ok("run", "p.yaml")
    return outputs(project)


# ---------------------------------------------------------------------------------------------
# unit tests: keys, hashes, prompts, assignment

def test_the_key_hash_is_pinned_so_splits_never_change_between_versions() -> None:
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert S.key_hash(S.canonical(record), 0) == 8604933160531039630
    assert S.key_hash(b'"conv-1"', 7) == 2014961701084578686


def test_the_key_is_canonical_ignores_meta_and_depends_on_the_seed() -> None:
    cfg = S.ScanConfig(salt=S.seed_salt(0), group_by=None, by_prompt=False, stratify_by=None, staged=None)
    a = {"messages": [{"role": "user", "content": "hi"}], "tools": [{"b": 1, "a": 2}], "meta": {"line": 1}}
    b = {"tools": [{"a": 2, "b": 1}], "meta": {"line": 9, "source": "y"},
         "messages": [{"content": "hi", "role": "user"}]}
    assert S.example_key(a, cfg, "") == S.example_key(b, cfg, "") \
        == b'{"messages":[{"content":"hi","role":"user"}],"tools":[{"a":2,"b":1}]}'
    assert a["meta"] == {"line": 1}  # the record is left as it was
    rendered = {**a, "text": "<|user|>hi", "assistant_spans": [], "tokens": 3}  # a tokenizer's rendering
    assert S.example_key(rendered, cfg, "") == S.example_key(a, cfg, "")
    assert S.example_key({"text": "x"}, cfg, "") != S.example_key({"text": "y"}, cfg, "")
    key = S.example_key(a, cfg, "")
    assert S.key_hash(key, 7) == S.key_hash(key, "7") != S.key_hash(key, 8)
    grouped = S.ScanConfig(salt=b"", group_by=("meta", "conversation_id"), by_prompt=False, stratify_by=None,
                           staged=None, group_label="meta.conversation_id")
    assert S.example_key({"meta": {"conversation_id": "c1"}, "x": 1}, grouped, "") == b'"c1"'
    with pytest.raises(S.BadExample, match=r"group_by field 'meta.conversation_id' is missing: 'meta' has no key"):
        S.example_key({"meta": {"source": "a"}}, grouped, "")
    with pytest.raises(S.BadExample, match="is null"):
        S.example_key({"meta": {"conversation_id": None}}, grouped, "")


def test_prompts_are_user_turns_normalized() -> None:
    up = user_prompt
    assert up(chat("  What IS   the\tCapital?\n")) == "what is the capital?"
    assert up(chat("Cafe\u0301 STRASSE")) == up(chat("café straße")) == "café strasse"  # NFC and casefold
    two = {"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "x"},
                        {"role": "user", "content": "c"}]}
    other = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b c"}]}
    assert up(two) == "a b\x1fc" != up(other)  # turn boundaries count
    dpo = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
           "preferred_output": [{"role": "assistant", "content": "yo"}], "non_preferred_output": []}
    assert up(dpo) == "hi"
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image_url"}]}]}
    assert up(parts) == "look"
    assert up({"prompt": " Hello ", "completion": "x"}) == "hello"
    assert up({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}) == ""
    assert up({"text": "rendered"}) == ""
    assert S.prompt_digest("") == bytes(8) != S.prompt_digest("hi")


def test_ratio_bands_put_validation_at_the_bottom_and_test_at_the_top() -> None:
    assert S.ratio_split(0, 0.1, 0.1) == S.VALIDATION
    assert S.ratio_split(S.band(0.1) - 1, 0.1, 0.1) == S.VALIDATION
    assert S.ratio_split(S.band(0.1), 0.1, 0.1) == S.TRAIN
    assert S.ratio_split(2**64 - S.band(0.1), 0.1, 0.1) == S.TEST
    assert S.ratio_split(S.TOP, 0.1, 0.0) == S.TRAIN
    rng = np.random.default_rng(1)
    u = rng.integers(0, 2**64, size=5000, dtype=np.uint64)
    split, _ = S.assign(u, None, 0, [], S.Size(0.2), S.Size(0.1))
    assert split.tolist() == [S.ratio_split(int(x), 0.2, 0.1) for x in u]


def test_counts_take_the_smallest_and_largest_hashes_and_never_pull_train_examples_in() -> None:
    rng = np.random.default_rng(2)
    old = rng.integers(0, 2**64, size=1000, dtype=np.uint64)
    new = np.concatenate([old, rng.integers(0, 2**64, size=500, dtype=np.uint64)])
    before, _ = S.assign(old, None, 0, [], S.Size(30), S.Size(20))
    after, _ = S.assign(new, None, 0, [], S.Size(30), S.Size(20))
    order = np.sort(old)
    assert set(old[before == S.VALIDATION].tolist()) == set(order[:30].tolist())
    assert set(old[before == S.TEST].tolist()) == set(order[-20:].tolist())
    assert Counter(after.tolist()) == {S.TRAIN: 1450, S.VALIDATION: 30, S.TEST: 20}
    kept = after[:1000]
    assert not np.any((before == S.TRAIN) & (kept != S.TRAIN))          # train never moves out
    assert not np.any((before == S.VALIDATION) & (kept == S.TEST))      # validation never becomes test
    assert not np.any((before == S.TEST) & (kept == S.VALIDATION))
    # mixed: a validation ratio, a test count from the rest
    mixed, _ = S.assign(old, None, 0, [], S.Size(0.5), S.Size(100))
    assert Counter(mixed.tolist())[S.TEST] == 100
    assert np.all(mixed[old < np.uint64(S.band(0.5))] == S.VALIDATION)


def test_stratified_quotas_are_exact_and_counts_are_shared_by_largest_remainder() -> None:
    rng = np.random.default_rng(3)
    sizes = [100, 50, 7]
    st = np.repeat(np.arange(3, dtype=np.uint16), sizes)
    u = rng.integers(0, 2**64, size=len(st), dtype=np.uint64)
    split, keys = S.assign(u, st, 3, [0, 1, 2], S.Size(0.2), S.Size(0.1))
    assert keys == sizes
    for s, n in enumerate(sizes):
        got = Counter(split[st == s].tolist())
        assert (got[S.VALIDATION], got[S.TEST]) == (round(0.2 * n + 1e-9), int(0.1 * n + 0.5))
    assert S.allocate(10, [100, 50, 7], [0, 1, 2]) == [6, 3, 1]
    assert S.allocate(3, [1, 1, 1, 1], [3, 2, 1, 0]) == [0, 1, 1, 1]  # ties go by the strata's order
    assert S.allocate(99, [2, 3], [0, 1]) == [2, 3]
    split, _ = S.assign(u, st, 3, [0, 1, 2], S.Size(10), S.Size(0))
    assert [Counter(split[st == s].tolist())[S.VALIDATION] for s in range(3)] == [6, 3, 1]


def test_leaks_and_the_dedupe_rule_keep_the_first_occurrences_split() -> None:
    ph = np.array([8, 16, 8, 24, 8, 0, 0, 16], dtype=np.uint64)
    split = np.array([1, 0, 0, 2, 1, 0, 1, 0], dtype=np.uint8)
    leaks = S.find_leaks(ph, split)
    assert leaks.prompts == 1                                 # prompt 8 is in validation and train
    assert leaks.examples.tolist() == [0, 2, 4]               # "no prompt" (0) never leaks
    assert leaks.first.tolist() == [0]
    assert leaks.dropped.tolist() == [2]                      # first occurrence was validation
    assert S.find_leaks(ph[1:2], split[1:2]).prompts == 0


def test_the_blockwise_analysis_matches_a_plain_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "BLOCK", 7)  # many block edges
    rng = np.random.default_rng(4)
    ph = rng.integers(1, 60, size=700).astype(np.uint64) * np.uint64(4)
    ph[rng.random(700) < 0.1] = 0
    split = rng.integers(0, 3, size=700).astype(np.uint8)
    splits_of: dict[int, set[int]] = {}
    first: dict[int, int] = {}
    for i, (p, s) in enumerate(zip(ph.tolist(), split.tolist())):
        if p:
            splits_of.setdefault(p, set()).add(s)
            first.setdefault(p, i)
    leaking = {p for p, ss in splits_of.items() if len(ss) > 1}
    leaks = S.find_leaks(ph, split)
    assert leaks.prompts == len(leaking) > 0
    assert leaks.examples.tolist() == [i for i, p in enumerate(ph.tolist()) if p in leaking]
    assert leaks.first.tolist() == sorted(first[p] for p in leaking)
    assert leaks.dropped.tolist() == [i for i, (p, s) in enumerate(zip(ph.tolist(), split.tolist()))
                                      if p in leaking and s != split[first[p]]]
    u = rng.integers(0, 50, size=700).astype(np.uint64)
    assert S.sorted_distinct(u.copy()).tolist() == sorted(set(u.tolist()))
    assert S.sorted_distinct(np.zeros(0, dtype=np.uint64)).tolist() == []


def test_a_ratio_far_off_on_a_small_set_is_named_with_the_count_to_ask_for() -> None:
    far = far_ratio
    assert far("validation", S.Size(0.3), 38, 90, 90, grouped=False) == (
        "validation is 38 of 90 examples (42%) for validation: 0.3 — ratios are per-example hashes, so small sets "
        "vary; for exactly 27 use validation: 27")
    assert far("validation", S.Size(0.3), 30, 90, 90, grouped=False) is None      # 0.7 deviations: fine
    assert far("test", S.Size(0.1), 100_700, 1_000_000, 1_000_000, grouped=False) is None  # 2.3 sd, 0.07 points
    assert far("validation", S.Size(27), 38, 90, 90, grouped=False) is None       # a count is exact by itself
    assert far("validation", S.Size(0.1), 0, 90, 90, grouped=False) is None       # empty: its own warning
    grouped = far("test", S.Size(0.2), 40, 100, 30, grouped=True)
    assert grouped is not None and "per-group hashes" in grouped and "for exactly 6 groups use test: 6" in grouped


def test_dotted_fields() -> None:
    rec = {"meta": {"label": "pos", "tags": ["a", "b"]}, "n": None}
    assert fields.get(rec, fields.parse("meta.label")) == "pos"
    assert fields.get(rec, fields.parse("meta.tags.1")) == "b"
    assert fields.get(rec, fields.parse("n")) is None
    assert fields.get(rec, fields.parse("meta.tags.5")) is fields.MISSING
    assert fields.get(rec, fields.parse("meta.label.x")) is fields.MISSING
    assert fields.why_missing(rec, fields.parse("meta.lable")) == "'meta' has no key 'lable' (its keys: label, tags)"
    assert "is str, not an object" in fields.why_missing(rec, fields.parse("meta.label.x"))
    with pytest.raises(ValueError, match="not a dotted path"):
        fields.parse("meta..label")


# ---------------------------------------------------------------------------------------------
# the stage through the real CLI

def test_splits_are_deterministic_without_meta_and_in_input_order(project) -> None:
    records = numbered(200)
    out = run_split(project, records, validation=0.2, test=0.1)
    assert sum(len(v) for v in out.values()) == 200
    assert 20 <= len(out["validation"]) <= 60 and 5 <= len(out["test"]) <= 40
    for rows in out.values():  # input order, and no meta: ready for OpenAI
        numbers = [int(r["messages"][1]["content"].split()[1]) for r in rows]
        assert numbers == sorted(numbers)
        assert all(set(r) == {"messages"} for r in rows)
    digests = {n: project.artifact("split", n).name for n in SPLITS}
    result = project.ok("run", "p.yaml", "--force")
    assert "split     done" in result.stdout
    assert {n: project.artifact("split", n).name for n in SPLITS} == digests
    summary = json.loads(project.ok("show", "p.yaml", "split", "--json").stdout)["summary"]
    assert summary == {"train": len(out["train"]), "validation": len(out["validation"]),
                       "test": len(out["test"]), "leaks": 0}
    # a new seed reshuffles
    spec(project, validation=0.2, test=0.1, seed="another")
    project.ok("run", "p.yaml")
    assert split_of(outputs(project)) != split_of(out)


def test_appended_data_never_moves_existing_examples_with_ratios(project) -> None:
    before = split_of(run_split(project, numbered(300), validation=0.15, test=0.1))
    after = split_of(run_split(project, numbered(300) + numbered(300, start=300), validation=0.15, test=0.1))
    assert {k: after[k] for k in before} == before
    assert Counter(after.values())["validation"] > Counter(before.values())["validation"]
    # reordering (or removing) other examples does not move them either
    shuffled = numbered(300)
    random.Random(5).shuffle(shuffled)
    assert split_of(run_split(project, shuffled[:250], validation=0.15, test=0.1)).items() <= before.items()


def test_counts_are_exact_and_appending_never_pulls_train_examples_into_evaluation(project) -> None:
    before = split_of(run_split(project, numbered(200), validation=20, test=10))
    after = split_of(run_split(project, numbered(200) + numbered(100, start=200), validation=20, test=10))
    assert Counter(before.values()) == {"train": 170, "validation": 20, "test": 10}
    assert Counter(after.values()) == {"train": 270, "validation": 20, "test": 10}
    for prompt, old in before.items():
        if old == "train":
            assert after[prompt] == "train"
        else:
            assert after[prompt] in (old, "train")
    # examples that stay are most of them: new keys displace only those whose hash they undercut
    assert sum(after[p] == s for p, s in before.items() if s != "train") >= 15


def test_group_by_keeps_groups_together_and_counts_groups(project) -> None:
    records = [chat(f"turn {c}-{t}", conversation_id=f"c{c}", source="data/x.jsonl", line=10 * c + t)
               for c in range(40) for t in range(1 + c % 4)]
    out = run_split(project, records, validation=5, test=0.2, group_by="meta.conversation_id", keep_meta=True)
    where: dict[str, set[str]] = {}
    for name, rows in out.items():
        for r in rows:
            where.setdefault(r["meta"]["conversation_id"], set()).add(name)
    assert len(where) == 40 and all(len(s) == 1 for s in where.values())
    assert sum(1 for s in where.values() if s == {"validation"}) == 5
    assert report(project)["keys"] == 40


def test_a_missing_group_by_field_names_the_record_and_the_fix(project) -> None:
    records = numbered(5)
    for i, r in enumerate(records):
        r["meta"]["conversation_id"] = f"c{i}"
    del records[3]["meta"]["conversation_id"]
    write(project, records)
    spec(project, group_by="meta.conversation_id")
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert ("data/x.jsonl:4: the group_by field 'meta.conversation_id' is missing: 'meta' has no key "
            "'conversation_id' (its keys: line, source)") in result.stderr
    assert "add it to the records upstream" in result.stderr and "Traceback" not in result.output
    # without meta provenance, the input's own line is named
    project.write("data/x.jsonl", json.dumps(chat("a", conversation_id="1")) + "\n\n" + json.dumps(chat("b")) + "\n")
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2 and "data/x.jsonl:3: the group_by field" in result.stderr


def test_stratification_applies_the_ratios_within_each_stratum(project) -> None:
    sizes = {"common": 120, "rare": 15, "tiny": 4}
    records = [chat(f"{label} {i}", label=label, source="data/x.jsonl", line=i)
               for label, n in sizes.items() for i in range(n)]
    random.Random(1).shuffle(records)
    out = run_split(project, records, validation=0.2, test=0.1, stratify_by="meta.label", keep_meta=True)
    got = {label: Counter() for label in sizes}
    for name, rows in out.items():
        for r in rows:
            got[r["meta"]["label"]][name] += 1
    for label, n in sizes.items():
        assert got[label]["validation"] == int(0.2 * n + 0.5)   # exact quotas, rounded half up
        assert got[label]["test"] == int(0.1 * n + 0.5)
        assert abs(got[label]["validation"] / n - 0.2) <= 0.5 / n + 1e-9
    strata = {row["value"]: row for row in report(project)["strata"]}
    assert strata["rare"] == {"value": "rare", "keys": 15, "train": 10, "validation": 3, "test": 2, "dropped": 0}
    # a missing stratum value is an error naming the record
    records[7]["meta"].pop("label")
    write(project, records)
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2 and f"data/x.jsonl:{records[7]['meta']['line']}: the stratify_by field" \
        in result.stderr


def leaky(project) -> list[dict[str, Any]]:
    """Ingested examples where a few prompts repeat with different casing and spacing."""
    records = [chat(f"question {i}", f"answer {i}") for i in range(120)]
    records += [chat(f"  QUESTION   {i} ", f"another answer {i}") for i in range(0, 120, 3)]
    project.write("data/x.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return records


def leaky_spec(project, **params: Any) -> None:
    project.spec("stages:\n  ingest:\n    uses: ingest\n    inputs: {data: data/x.jsonl}\n"
                 f"  split:\n    uses: split\n    inputs: {{examples: ingest.records}}\n"
                 f"    with: {json.dumps({'validation': 0.3, **params})}\n")


def test_leakage_fails_by_default_with_examples_and_the_fix(project) -> None:
    leaky(project)
    leaky_spec(project)
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "user prompts appear in more than one split" in result.stderr
    assert '"question ' in result.stderr and "data/x.jsonl:" in result.stderr  # ingest's provenance
    assert "`leakage: dedupe`" in result.stderr and '`group_by: "@prompt"`' in result.stderr
    assert "Traceback" not in result.output


def test_leakage_report_counts_and_dedupe_drops_copies_outside_the_first_occurrences_split(project) -> None:
    leaky(project)
    leaky_spec(project, leakage="report", keep_meta=True)
    project.ok("run", "p.yaml")
    everything = outputs(project)
    rep = report(project)
    leaks = rep["leakage"]
    assert sum(len(v) for v in everything.values()) == 160
    by_line = {r["meta"]["line"]: name for name, rows in everything.items() for r in rows}
    expected = sum(1 for i in range(0, 120, 3) if by_line[i + 1] != by_line[121 + i // 3])
    assert expected > 0 and leaks["prompts"] == expected and leaks["examples"] == 2 * expected
    finding = leaks["findings"][0]
    assert finding["prompt"].lower().split() == ["question", finding["prompt"].split()[-1]]
    assert {o["where"] for o in finding["occurrences"]} <= {f"data/x.jsonl:{n}" for n in range(1, 161)}
    summary = json.loads(project.ok("show", "p.yaml", "split", "--json").stdout)["summary"]
    assert summary["leaks"] == expected

    leaky_spec(project, leakage="dedupe", keep_meta=True)
    project.ok("run", "p.yaml")
    kept = outputs(project)
    rep = report(project)
    assert rep["leakage"]["dropped"] == expected
    kept_lines = {r["meta"]["line"]: name for name, rows in kept.items() for r in rows}
    for i in range(0, 120, 3):
        first, copy = i + 1, 121 + i // 3
        assert kept_lines[first] == by_line[first]          # the first occurrence stays where it was
        if by_line[copy] != by_line[first]:
            assert copy not in kept_lines                     # its copy in another split is dropped
        else:
            assert kept_lines[copy] == by_line[copy]
    actions = [o for f in rep["leakage"]["findings"] for o in f["occurrences"]]
    assert {o["action"] for o in actions} == {"kept", "dropped"}
    assert sum(rep["splits"].values()) == 160 - expected
    splits_of: dict[str, set[str]] = {}
    for name, rows in kept.items():
        for r in rows:
            splits_of.setdefault(user_prompt(r), set()).add(name)
    assert all(len(names) == 1 for names in splits_of.values())  # no leak is left

    leaky_spec(project, group_by="@prompt", keep_meta=True)      # grouping by prompt: no leaks at all
    project.ok("run", "p.yaml")
    assert report(project)["leakage"]["prompts"] == 0 and report(project)["keys"] == 120


def test_dpo_records_are_split_and_checked_on_their_input(project) -> None:
    def dpo(prompt: str, good: str) -> dict[str, Any]:
        return {"input": {"messages": [{"role": "user", "content": prompt}]},
                "preferred_output": [{"role": "assistant", "content": good}],
                "non_preferred_output": [{"role": "assistant", "content": "meh"}]}

    records = [dpo(f"prompt {i // 3}", f"good {i}") for i in range(150)]  # three pairs per prompt
    write(project, records)
    spec(project, validation=0.2, leakage="report")
    project.ok("run", "p.yaml")
    out = outputs(project)
    assert sum(len(v) for v in out.values()) == 150
    assert all(set(r) == {"input", "preferred_output", "non_preferred_output"} for v in out.values() for r in v)
    assert report(project)["leakage"]["prompts"] > 0
    spec(project, validation=0.2, group_by="@prompt")
    project.ok("run", "p.yaml")
    where = {}
    for name, rows in outputs(project).items():
        for r in rows:
            where.setdefault(r["input"]["messages"][0]["content"], set()).add(name)
    assert len(where) == 50 and all(len(s) == 1 for s in where.values())


def test_outputs_are_valid_openai_lines_and_keep_meta_keeps_provenance(project) -> None:
    tool_call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    records = [{"messages": [{"role": "user", "content": f"weather {i}?"},
                             {"role": "assistant", "content": None, "tool_calls": [tool_call]},
                             {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                             {"role": "assistant", "content": "Sunny, obviously.", "weight": 1}],
                "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
                "meta": {"source": "data/x.jsonl", "line": i + 1}} for i in range(30)]
    out = run_split(project, records, validation=0.3)
    lines = [line for name in SPLITS
             for line in (project.artifact("split", name) / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 30
    for line in lines:
        record = json.loads(line)
        assert set(record) == {"messages", "tools"}
        assert all(m["role"] in ("system", "user", "assistant", "tool") for m in record["messages"])
    assert sorted(r["meta"]["line"] for v in run_split(project, records, validation=0.3, keep_meta=True).values()
                  for r in v) == list(range(1, 31))
    assert split_of(out) == split_of(outputs(project))  # meta never changes the split


def test_small_inputs_are_split_sensibly(project) -> None:
    # a ratio decides each example on its own: 3 examples at 0.1 give 0 or 1 (rarely more) in validation
    out = run_split(project, numbered(3), validation=0.1)
    assert [len(out[n]) for n in SPLITS] == [2, 1, 0] and report(project)["warnings"] == []
    out = run_split(project, numbered(3), validation=0.1, seed=1)
    assert [len(out[n]) for n in SPLITS] == [3, 0, 0]
    assert report(project)["warnings"] == [
        "validation is empty: a ratio of 0.1 on 3 examples often picks none; ask for a count (e.g. validation: 1)"]
    out = run_split(project, numbered(3), validation=1, test=1)
    assert [len(out[n]) for n in SPLITS] == [1, 1, 1]
    out = run_split(project, numbered(1), validation=5, allow_empty=True)
    assert [len(out[n]) for n in SPLITS] == [0, 1, 0]
    assert "train is empty: lower validation/test" in report(project)["warnings"]
    project.write("data/x.jsonl", "")
    project.ok("run", "p.yaml")
    assert outputs(project) == {"train": [], "validation": [], "test": []}
    assert report(project)["warnings"] == ["the input holds no examples: every split is empty"]


def test_a_far_off_ratio_is_said_reported_and_counted_in_the_summary(project) -> None:
    write(project, numbered(90))
    spec(project, validation=0.3, seed=27)  # this seed's hashes put 16 of the 90 in validation
    result = project.ok("run", "p.yaml")
    warning = ("validation is 16 of 90 examples (18%) for validation: 0.3 — ratios are per-example hashes, so "
               "small sets vary; for exactly 27 use validation: 27")
    assert f"! split: {warning}" in " ".join(result.stderr.split())
    assert report(project)["warnings"] == [warning]
    summary = json.loads(project.ok("show", "p.yaml", "split", "--json").stdout)["summary"]
    assert summary == {"train": 74, "validation": 16, "test": 0, "leaks": 0, "warnings": 1}
    spec(project, validation=27, seed=27)  # the suggested count: exact, and quiet
    result = project.ok("run", "p.yaml")
    assert len(outputs(project)["validation"]) == 27 and "! split" not in result.stderr
    assert report(project)["warnings"] == []


def test_pipeline_stages_split_says_how_ratios_behave(project) -> None:
    text = " ".join(project.ok("stages", "split").stdout.split())
    assert "A ratio is applied by each example's own hash, so on a small set the share varies" in text
    assert "a count is exact" in text and "allow_empty: boolean = false" in text


def test_an_empty_train_split_is_a_user_error_unless_allowed(project) -> None:
    write(project, numbered(1))
    spec(project, validation=5)
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.stderr.split())
    assert ("train would be empty: validation: 5 takes 1 of the 1 example in data/x.jsonl, leaving nothing to train "
            "on. Ask for less (a smaller count, such as validation: 1, or a smaller ratio), add examples, or set "
            "`allow_empty: true` on this stage") in text
    assert project.run("show", "p.yaml", "split").exit_code == 2  # nothing published
    write(project, numbered(4))
    spec(project, validation=2, test=2)
    text = " ".join(project.run("run", "p.yaml").stderr.split())
    assert "train would be empty: validation: 2 takes 2 and test: 2 takes 2 of the 4 examples" in text
    project.write("data/x.jsonl", "")
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert ("data/x.jsonl holds no examples, so every split would be empty: fix the stage or file that feeds "
            "split, or set `allow_empty: true` on this stage to write empty splits") in " ".join(result.stderr.split())


@pytest.mark.parametrize(("params", "message"), [
    ({"validation": 0.6, "test": 0.5}, "validation + test ratios add up to 1.1, which leaves nothing for train"),
    ({"validation": 1.5}, "parameter 'validation': 1.5 is greater than or equal to the maximum of 1"),
    ({"validation": 1.0}, "parameter validation is 1.0: a ratio must be below 1; write an integer"),
    ({"test": -1}, "parameter 'test': -1 is less than the minimum of 0"),
    ({"leakage": "ignore"}, "parameter 'leakage' must be one of: fail, dedupe, report"),
    ({"group_by": "meta..id"}, "parameter 'group_by'"),
    ({"stratfy_by": "meta.label"}, "did you mean 'stratify_by'?"),
])
def test_bad_parameters_are_user_errors(project, params: dict[str, Any], message: str) -> None:
    write(project, numbered(5))
    spec(project, **params)
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_malformed_input_lines_are_named_even_in_later_chunks_and_workers_change_nothing(
        project, monkeypatch: pytest.MonkeyPatch) -> None:
    records = numbered(400)
    write(project, records)
    spec(project, validation=0.2, test=7, leakage="report")
    project.ok("run", "p.yaml")
    single = {n: project.artifact("split", n).name for n in SPLITS}
    monkeypatch.setattr(split_stage, "PARALLEL_MIN_BYTES", 0)      # worker processes on this small file,
    monkeypatch.setattr(split_stage, "CHUNK_BYTES", 1000)          # cut into many blocks
    project.ok("run", "p.yaml", "--force")
    assert {n: project.artifact("split", n).name for n in SPLITS} == single
    text = (project.root / "data/x.jsonl").read_text().splitlines()
    text[349] = '{"messages": ['
    project.write("data/x.jsonl", "\n".join(text) + "\n")
    result = project.run("run", "p.yaml")
    assert result.exit_code == 2
    assert "data/x.jsonl:350: not valid JSON (" in result.stderr


def test_an_ingest_to_split_pipeline_reads_a_folder_artifact(project) -> None:
    write(project, [chat(f"q{i}") for i in range(50)])
    project.spec("stages:\n  ingest:\n    uses: ingest\n    inputs: {data: data/x.jsonl}\n"
                 "  split:\n    uses: split\n    inputs: {examples: ingest.records}\n")
    result = project.ok("run", "p.yaml")
    assert "split     done" in result.stdout and "leaks=0" in result.stdout
    out = outputs(project)
    assert sum(len(v) for v in out.values()) == 50 and all("meta" not in r for v in out.values() for r in v)
    assert report(project)["parameters"] == {"validation": 0.1, "test": 0, "seed": 0, "group_by": None,
                                             "stratify_by": None, "leakage": "fail", "keep_meta": False,
                                             "allow_empty": False}
