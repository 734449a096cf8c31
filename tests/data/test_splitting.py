"""The split stage's decisions called directly (tunepipe.data.splitting): no stage, no files.

The hashing and assignment rules themselves are pinned in tests/stages/test_split.py; here, the
steps the stage chains together, on arrays built by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from tunepipe.data import splitting as S


def hashes(keys: list[bytes], seed: int = 0) -> np.ndarray:
    return np.array([S.key_hash(k, seed) for k in keys], dtype=np.uint64)


def test_assign_all_is_assign_over_the_sorted_distinct_keys() -> None:
    u = hashes([b"k%d" % (i % 700) for i in range(1000)])  # 300 repeated keys
    for validation, test in ((S.Size(0.1), S.Size(0)), (S.Size(50), S.Size(20)), (S.Size(0.2), S.Size(30))):
        got = S.assign_all(u, None, [], validation, test)
        split, counts = S.assign(u, None, 0, [], validation, test)
        assert got.keys == 700 and got.split.tolist() == split.tolist()
        if validation.is_count:
            assert got.key_counts == [700]
    same = {}
    for key, s in zip([i % 700 for i in range(1000)], got.split.tolist()):
        assert same.setdefault(key, s) == s  # a key lands in one split


def test_stratified_counts_are_shared_by_size_and_ties_go_by_the_values_order() -> None:
    u = hashes([b"%d" % i for i in range(90)])
    strata = np.array([0] * 45 + [1] * 45, dtype=np.uint16)
    got = S.assign_all(u, strata, ["b", "a"], S.Size(5), S.Size(0))
    assert got.key_counts == [45, 45]
    per = np.bincount(strata[got.split == S.VALIDATION], minlength=2).tolist()
    assert per == [2, 3]  # 2.5 each: the remainder goes to "a" (stratum 1), first in canonical order
    assert S.rank([S.canonical(v) for v in ["b", "a", 3]]) == [1, 0, 2]  # by canonical JSON bytes: "a" < "b" < 3


def test_a_leak_is_a_prompt_in_two_splits_and_dedupe_keeps_its_first_split() -> None:
    p = np.array([S.key_hash(b"p%d" % i, 0) for i in (1, 2, 1, 3, 1, 0)], dtype=np.uint64) & np.uint64(S.LOW2)
    p[5] = 0  # no prompt: never a leak
    split = np.array([S.VALIDATION, S.TRAIN, S.TRAIN, S.TRAIN, S.VALIDATION, S.TEST], dtype=np.uint8)
    leaks = S.find_leaks(p, split)
    assert leaks.prompts == 1 and leaks.examples.tolist() == [0, 2, 4]
    assert leaks.first.tolist() == [0] and leaks.dropped.tolist() == [2]  # the first occurrence is validation


def test_example_key_and_required_field_name_what_is_missing() -> None:
    cfg = S.ScanConfig(salt=S.seed_salt(0), group_by=None, by_prompt=True, stratify_by=None, staged=None)
    assert S.example_key({"messages": []}, cfg, "hi") == b"prompt\x00hi"
    assert S.example_key({"messages": [], "meta": {"a": 1}}, cfg, "") == b'{"messages":[]}'
    with pytest.raises(S.BadExample, match=r"the stratify_by field 'meta\.label' is missing: the record has no key"):
        S.required_field({"x": 1}, ("meta", "label"), "stratify_by", "meta.label")
