"""Exact and near-duplicate detection (tunepipe.data.dedupe, minhash, key_index): datasketch-equal signatures,
a compact index."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import numpy as np
import pytest
from datasketch import MinHash

from tunepipe.data.dedupe import (Deduper, KeyIndex, MinHasher, Origins, band_keys, exact_key, exact_keys,
                                  lsh_bands, shingle_hashes)
from tunepipe.data.minhash import _band_errors
from tunepipe.data.record import Provenance
from tunepipe.data.normalize import dedupe_form

WORDS = "the quick brown fox jumps over lazy dog Straße café naïve 東京 emoji🙂 snake_case x1 42".split()


def random_texts(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    texts = [dedupe_form(" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40))) + rng.choice(["", "...", "!"]))
             for _ in range(n)]
    return texts + ["", "...", "one", "one two", "a b c d", "ünïcödé only"]


@pytest.mark.parametrize(("chunk_bytes", "chunk"), [(1 << 20, 1 << 15), (40, 5)])
def test_signatures_are_datasketch_minhashes_of_the_shingle_hashes(chunk_bytes: int, chunk: int) -> None:
    texts = random_texts(400)
    sigs, has = MinHasher(64, 3, chunk_bytes=chunk_bytes, chunk=chunk).signatures(texts)
    assert sigs.shape == (len(texts), 64) and sigs.dtype == np.uint32
    for i, text in enumerate(texts):
        hashes = shingle_hashes(text, 3)
        assert bool(has[i]) == bool(hashes), text
        reference = MinHash(num_perm=64, seed=1, hashfunc=int)
        reference.update_batch(hashes)
        assert (reference.hashvalues == sigs[i]).all(), text


def test_shingles_are_word_ngrams_that_ignore_punctuation_and_spacing() -> None:
    assert shingle_hashes("paris, obviously!  did you need a map?", 3) == \
        shingle_hashes("paris obviously did you need a map", 3)
    assert len(shingle_hashes("one two three four five", 3)) == 3
    assert len(shingle_hashes("one two", 3)) == 1  # shorter than a shingle: one shingle of all words
    assert shingle_hashes("one two", 3) != shingle_hashes("two one", 3)
    assert shingle_hashes("...!?", 3) == [] and shingle_hashes("", 3) == []
    assert len(shingle_hashes("東京 café", 1)) == 2  # non-ASCII letters are word characters
    assert all(0 <= h < 1 << 32 for h in shingle_hashes("some words here and there", 2))


def test_the_signature_estimates_jaccard_similarity() -> None:
    base = [f"w{i}" for i in range(200)]
    edited = base[:170] + [f"x{i}" for i in range(30)]  # shingle Jaccard of 3-grams: 168 / 232
    a, b = (" ".join(t) for t in (base, edited))
    sa, sb = set(shingle_hashes(a, 3)), set(shingle_hashes(b, 3))
    true = len(sa & sb) / len(sa | sb)
    sigs, _ = MinHasher(128, 3).signatures([a, b])
    estimate = float((sigs[0] == sigs[1]).mean())
    assert abs(estimate - true) < 0.12, (estimate, true)
    same, _ = MinHasher(64, 3).signatures([a, a])
    assert (same[0] == same[1]).all()


def test_banding_favours_recall_at_the_threshold() -> None:
    bands, rows = lsh_bands(0.85, 64)
    assert (bands, rows) == (7, 9)
    assert 1 - (1 - 0.85 ** rows) ** bands > 0.8  # a pair at the threshold is a candidate
    assert 1 - (1 - 0.3 ** rows) ** bands < 1e-3  # an unrelated pair almost never is
    keys = band_keys(np.arange(2 * 64, dtype=np.uint32).reshape(2, 64), bands, rows)
    assert keys.shape == (2, 7) and keys.dtype == np.uint64 and len(set(keys.ravel().tolist())) == 14


def test_exact_keys_are_stable_64_bit_hashes() -> None:
    assert exact_key("user\x1fhello") == exact_key("user\x1fhello")
    assert exact_key("user\x1fhello") != exact_key("user\x1fhello ")
    assert 0 <= exact_key("x") < 1 << 64
    texts = ["user\x1fhello", "", "caf\u00e9 \ud800"]  # a lone surrogate too
    assert exact_keys(texts) == b"".join(exact_key(t).to_bytes(8, "little") for t in texts)


def test_key_index_is_a_multimap_across_flushes_and_merges() -> None:
    index = KeyIndex(flush_at=4)
    items = [(k % 7, i) for i, k in enumerate(range(40))]  # every key several times
    for n, (key, item) in enumerate(items):
        index.add(key, item)
        if n % 3 == 2:
            index.flush()
    assert len(index._runs) > 1  # several sorted runs, merged as they grow
    sizes = [len(k) for k, _ in index._runs]
    assert all(older >= 2 * newer for older, newer in zip(sizes, sizes[1:]))
    index.flush(force=True)
    hits = index.frozen_lookup(np.array([3, 99, 0], dtype=np.uint64))
    assert hits == {0: [i for k, i in items if k == 3], 2: [i for k, i in items if k == 0]}  # oldest first
    assert index.recent(3) == [] and len(index) == 40 and index.nbytes == 40 * 12


def test_origins_name_the_kept_record() -> None:
    origins = Origins()
    origins.add(Provenance("data/a.jsonl", "line", 3))
    origins.add(("data/b.csv", "row", 12))  # any (source, unit, position) triple
    origins.add(Provenance("data/a.jsonl", "line", "7b"))  # an odd position is kept as it is
    assert origins[1] == Provenance("data/b.csv", "row", 12) and isinstance(origins[1], Provenance)
    assert [str(origins[i]) for i in range(3)] == ["data/a.jsonl:3", "data/b.csv:row 12", "data/a.jsonl:7b"]


class Fingerprints:
    """Real fingerprints of texts, as the clean stage's workers compute them."""

    def __init__(self, num_perm: int = 64, threshold: float = 0.85) -> None:
        self.hasher = MinHasher(num_perm, 3)
        self.bands, self.rows = lsh_bands(threshold, num_perm)

    def __call__(self, texts: list[str]) -> tuple[list[int], np.ndarray, np.ndarray, list[bool]]:
        texts = [dedupe_form(t) for t in texts]
        sigs, has = self.hasher.signatures(texts)
        return ([exact_key(t) for t in texts], band_keys(sigs, self.bands, self.rows),
                (sigs & 0xFFFF).astype(np.uint16), has.tolist())


def where(*lines: int) -> list[tuple[str, str, int]]:
    return [("data.jsonl", "line", n) for n in lines]


LONG = ("Paris is the capital of France, obviously. Did you really need to ask me that, or were you just "
        "testing whether I know anything about geography at all")


def test_first_occurrence_is_kept_and_duplicates_name_it() -> None:
    fp = Fingerprints()
    dedupe = Deduper(threshold=0.85, bands=fp.bands)
    first = dedupe.check(*fp([LONG, "Something else entirely, with other words.", LONG.upper() + "  "]), where(1, 2, 3))
    assert first[:2] == [None, None]
    assert first[2] is not None and (first[2].kind, str(dedupe.origins[first[2].of])) == ("exact", "data.jsonl:1")
    # a later batch: an exact duplicate, a near one (a word added), and a new text
    later = dedupe.check(*fp([LONG, LONG + ", honestly", "A brand new question about Rome."]), where(4, 5, 6))
    assert later[0] is not None and later[0].kind == "exact" and later[0].of == 0
    assert later[1] is not None and later[1].kind == "near" and str(dedupe.origins[later[1].of]) == "data.jsonl:1"
    assert 0.85 <= later[1].similarity < 1
    assert later[2] is None
    # one word replaced in a text of 30 words changes 3 of its 28 shingles: similarity about 25/31, kept
    assert dedupe.check(*fp([LONG.replace("geography", "maps")]), where(7)) == [None]
    assert dedupe.indexed == 4  # only kept records are indexed


def test_a_near_duplicate_within_one_batch_is_found() -> None:
    fp = Fingerprints()
    dedupe = Deduper(bands=fp.bands)
    out = dedupe.check(*fp([LONG, LONG + " really"]), where(1, 2))
    assert out[0] is None and out[1] is not None and out[1].kind == "near"


def test_lookups_see_frozen_runs_and_recent_keys_alike() -> None:
    fp = Fingerprints()
    texts = [f"record number {i} says {' '.join(WORDS[i % 7:])}" for i in range(60)]
    dedupe = Deduper(bands=fp.bands, flush_at=8)  # tiny runs: most lookups go to the frozen runs
    for start in range(0, 60, 10):
        assert dedupe.check(*fp(texts[start:start + 10]), where(*range(start, start + 10))) == [None] * 10
    again = dedupe.check(*fp(texts[::-1]), where(*range(100, 160)))
    assert [d.kind if d else None for d in again] == ["exact"] * 60
    assert [d.of for d in again if d] == list(range(59, -1, -1))


def test_exact_only_and_texts_without_words() -> None:
    fp = Fingerprints()
    dedupe = Deduper(near=False)
    keys, bands, sigs, has = fp([LONG, LONG + " really", "...", "..."])
    out = dedupe.check(keys, None, None, None, where(1, 2, 3, 4))
    assert [d.kind if d else None for d in out] == [None, None, None, "exact"]
    dedupe = Deduper(bands=fp.bands)
    assert has[2:] == [False, False]  # no words: no near check, exact still applies
    out = dedupe.check(keys, bands, sigs, has, where(1, 2, 3, 4))
    assert [d.kind if d else None for d in out] == [None, "near", None, "exact"]


def test_the_index_stops_growing_at_max_index_but_still_answers() -> None:
    fp = Fingerprints()
    dedupe = Deduper(bands=fp.bands, max_index=2)
    texts = ["first text here", "second text there", "third text elsewhere", "first text here",
             "third text elsewhere"]
    out = dedupe.check(*fp(texts), where(1, 2, 3, 4, 5))
    # the third record is kept but not indexed, so its later copy is not caught; the first's is
    assert [d.kind if d else None for d in out] == [None, None, None, "exact", None]
    assert dedupe.indexed == 2 and dedupe.full


def test_index_memory_per_item_is_bounded() -> None:
    """About 240 bytes per indexed record at 64 permutations (the figure in the module docstring)."""
    n, perms = 30_000, 64
    bands, rows = lsh_bands(0.85, perms)
    rng = np.random.default_rng(0)
    batches = []
    for start in range(0, n, 2000):
        sigs = rng.integers(0, 1 << 32, (2000, perms), dtype=np.uint32)
        batches.append((rng.integers(0, 1 << 63, 2000).tolist(), band_keys(sigs, bands, rows),
                        (sigs & 0xFFFF).astype(np.uint16), where(*range(start, start + 2000))))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        dedupe = Deduper(bands=bands, max_index=n)
        for keys, band, sig, prov in batches:
            dedupe.check(keys, band, sig, [True] * len(prov), prov)
        dedupe.flush()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert dedupe.indexed == n
    assert dedupe.nbytes / n < 260  # 12 (exact) + 7 * 12 (bands) + 128 (signature) + 12 (provenance) + slack
    assert used / n < 300


class OneByOne:
    """The reference: each record checked and indexed in turn, with plain dicts (what check must equal)."""

    def __init__(self, threshold: float, max_index: int, near: bool) -> None:
        self.threshold, self.max_index, self.near = threshold, max_index, near
        self.exact: dict[int, int] = {}
        self.bands: dict[int, list[int]] = {}
        self.sigs: list[np.ndarray] = []
        self.where: list[tuple[str, str, int]] = []
        self.full = False

    def check(self, keys, bands, sigs, has, prov) -> list[tuple[str, int, float] | None]:
        out: list[tuple[str, int, float] | None] = []
        for i, key in enumerate(keys):
            if key in self.exact:
                out.append(("exact", self.exact[key], 1.0))
                continue
            if self.near and has[i]:
                ids = sorted({c for k in bands[i].tolist() for c in self.bands.get(k, [])})
                if ids:
                    sims = [float((self.sigs[c] == sigs[i]).mean()) for c in ids]
                    best = int(np.argmax(sims))
                    if sims[best] >= self.threshold:
                        out.append(("near", ids[best], sims[best]))
                        continue
            out.append(None)
            if len(self.where) >= self.max_index:
                self.full = True
                continue
            item = len(self.where)
            self.where.append(prov[i])
            self.exact[key] = item
            self.sigs.append(sigs[i])
            if self.near and has[i]:
                for k in bands[i].tolist():
                    self.bands.setdefault(k, []).append(item)
        return out


@pytest.mark.parametrize("seed", range(8))
def test_batch_check_equals_checking_one_record_at_a_time(seed: int) -> None:
    """Many collisions (few distinct keys, bands and signatures), tiny flushes, sometimes a full index."""
    rng = np.random.default_rng(seed)
    near = seed % 4 != 3
    max_index = [10**6, 150, 400, 10**6][seed % 4]
    dedupe = Deduper(near=near, threshold=0.75, num_perm=8, bands=4, max_index=max_index,
                     flush_at=[8, 64, 1 << 16][seed % 3])
    ref = OneByOne(0.75, max_index, near)
    protos = rng.integers(0, 1 << 16, (40, 8), dtype=np.uint16)
    for batch in range(12):
        n = int(rng.integers(0, 120))
        keys = rng.integers(0, [300, 10**9][seed % 2], n).tolist()
        base = protos[rng.integers(0, len(protos), n)]
        sigs = np.where(rng.random((n, 8)) < 0.15, rng.integers(0, 1 << 16, (n, 8), dtype=np.uint16), base)
        sigs = sigs.astype(np.uint16)
        bands = band_keys(sigs.astype(np.uint32), 4, 2)
        has = (rng.random(n) > 0.1).tolist()
        prov = [("data.jsonl", "line", batch * 1000 + i) if i % 17 else ("other.csv", "row", i) for i in range(n)]
        got = dedupe.check(keys, bands if near else None, sigs if near else None, has if near else None, prov)
        want = ref.check(keys, bands, sigs, has, prov)
        assert [None if d is None else (d.kind, d.of, d.similarity) for d in got] == want
    assert dedupe.indexed == len(ref.where) and dedupe.full == ref.full
    assert [dedupe.origins[i] for i in range(dedupe.indexed)] == ref.where


def test_origins_extend_equals_adding_one_at_a_time() -> None:
    items = [("a.jsonl", "line", i) for i in range(5)] + [("a.jsonl", "line", True), ("a.jsonl", "line", 1 << 70)]
    for chunk in (items[:5], items[5:], [("b.csv", "row", 1), ("a.jsonl", "line", 9)], items[:3]):
        one, many = Origins(), Origins()
        for item in chunk:
            one.add(item)
        many.extend(chunk)
        assert [many[i] for i in range(len(chunk))] == [one[i] for i in range(len(chunk))]
        assert [type(many[i][2]) for i in range(len(chunk))] == [type(one[i][2]) for i in range(len(chunk))]


@pytest.mark.parametrize("num_perm", [16, 64])
def test_lsh_bands_are_what_datasketch_chooses(num_perm: int) -> None:
    """The banding is computed without datasketch (and scipy): the same choice as its optimiser."""
    from datasketch import MinHashLSH

    thresholds = [round(0.05 * i, 2) for i in range(1, 21)] + [0.123, 0.777, 0.85, 0.999]
    for threshold in thresholds:
        try:
            lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
            want: Any = (lsh.b, lsh.r)
        except ValueError as e:
            want = str(e)
        try:
            got: Any = lsh_bands(threshold, num_perm)
        except ValueError as e:
            got = str(e)
        assert got == want, threshold


def test_lsh_band_probabilities_match_scipy_quad() -> None:
    from datasketch.lsh import _false_negative_probability, _false_positive_probability

    for threshold, num_perm in [(0.85, 128), (0.5, 256), (0.95, 200)]:
        pairs, fp, fn = _band_errors(threshold, num_perm)
        picks = range(0, len(pairs), 7)
        assert max(abs(fp[i] - _false_positive_probability(threshold, *pairs[i])) for i in picks) < 1e-9
        assert max(abs(fn[i] - _false_negative_probability(threshold, *pairs[i])) for i in picks) < 1e-9


def test_close_calls_are_left_to_datasketch(monkeypatch: pytest.MonkeyPatch) -> None:
    import tunepipe.data.minhash as minhash_module

    monkeypatch.setattr(minhash_module, "_TIE", 1.0)  # every choice is a close call
    assert lsh_bands(0.85, 64) == (7, 9)


@pytest.mark.parametrize(("num_perm", "seed"), [(16, 1), (128, 7), (512, 0)])
def test_permutations_are_datasketch_affine32_ones(num_perm: int, seed: int) -> None:
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    hasher = MinHasher(num_perm, 3, seed=seed)
    assert (hasher._a == a).all() and (hasher._b == b).all()
