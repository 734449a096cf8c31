"""How the split stage decides splits: keys, hashes, sizes, assignment and the leakage check (pure).

The stage itself (:mod:`tunepipe.stages.split`) is a shell over this module and
:mod:`tunepipe.data.split_passes` (its passes over the files); tests call these functions directly.

How an example's split is decided
---------------------------------
Every example has a *key*: by default the whole example (the canonical JSON of the record without
``meta``: keys sorted, as orjson writes it; for a rendered chat, as format's ``hf-chat-template``
target writes it, without ``text``, ``assistant_spans`` and ``tokens``, which a tokenizer derives
from its ``messages``), or the value of the ``group_by`` field (a dotted path
such as ``meta.conversation_id``), or with ``group_by: "@prompt"`` the normalized user prompt (see
below; an example without a user turn is then keyed by itself). The key is hashed with BLAKE2b
(64 bits, salted with the ``seed``) into a number ``u``; examples with the same key always land in
the same split. Changing ``seed`` reshuffles everything, on purpose.

* **Ratios** (``validation: 0.1``): ``u`` below ``0.1·2⁶⁴`` is validation, ``u`` in the top
  ``test·2⁶⁴`` band is test, the rest is train. Each example's split depends on nothing but its own
  key, so adding, removing or reordering other examples never moves it: existing examples keep their
  split when data is appended. The sizes are binomial: with 3 examples and ``validation: 0.1``
  validation is empty about 73 % of the time (a warning says so); use a count for small data sets. A
  ratio whose realised count is more than two binomial standard deviations (and a percentage point)
  off gets a warning naming the count to ask for instead (``validation: 0.3`` on 90 examples giving 38).
* **Counts** (``validation: 50``, an integer): the 50 keys with the smallest ``u`` are validation,
  the ``test`` keys with the largest ``u`` (among the rest) are test. A count is a number of *keys*:
  of groups with ``group_by``, of distinct examples otherwise (identical examples share a key and
  land together, so 50 keys can be 51 examples). Appending data can only push an existing
  validation or test key out (to train, when a new key hashes below it); a train example never
  moves into validation or test, and validation and test never trade examples (while train is not
  empty), so a model trained on the old train split can still be evaluated on the new validation
  split without leakage.
* **Mixed** (``validation: 0.1, test: 200``): validation is decided first, test takes its count
  from what remains.
* **Stratified** (``stratify_by: meta.label``): ratios are applied *within each stratum* with exact
  quotas, ``round(ratio · keys in the stratum)`` (half up), taken as the keys with the smallest
  ``u`` in the stratum (and the largest for test); a count is shared among the strata in proportion
  to their sizes (largest remainder, ties by the stratum's value). Exact proportions cost strict
  stability: when a stratum grows, the keys at its quota's edge can change split (the counts'
  guarantee holds: a train key only moves into validation or test when that stratum's quota grows).
  With ``group_by``, a group must lie in one stratum.

Leakage
-------
A *prompt* is the concatenation of an example's user turns (for a DPO record, those of its
``input``; for a ``prompt``/``completion`` record, ``prompt``), each normalized: NFC, casefolded,
whitespace collapsed. A prompt found in two splits is a leak. ``leakage: fail`` (default) stops with
examples and how to fix it; ``report`` only counts; ``dedupe`` keeps, for each leaking prompt, the
examples in the split of its *first occurrence in input order* and drops its examples in the other
splits (listed in the report). Appended data comes after existing data, so dedupe never drops an
existing example because of a new one. ``group_by: "@prompt"`` makes leaks impossible instead.

Memory and passes
-----------------
Pass 1 parses each line once and keeps, per example, its key hash (8 bytes), its prompt hash
(8 bytes) and with ``stratify_by`` a stratum number (2 bytes); the analysis adds the split (1 byte)
and a sorted copy of the key hashes (8 bytes, freed before the leakage check, which sorts a copy of
the prompt hashes in its place). Peak: about 27 bytes per example over a constant ~60 MB (measured:
88 MB RSS for 1M examples, 172 MB for 4M), about 35 with ``stratify_by``. Nothing else grows with
the data: the leakage findings keep at most 20 prompts, and the leaking examples' indices (8 bytes
each). Without ``keep_meta`` pass 1 also writes the examples without ``meta`` to scratch files (a
temporary copy of the data on disk), so pass 2 copies lines into the split files without parsing.

Pass 1 (parse, normalize, hash: about 3 times the cost of parsing alone) runs in worker processes
on 8 MB chunks of the input when it is over 32 MB; results come back in input order, so the output
does not depend on the number of workers. On a 2-core machine it took a million examples from
15.5–18.8 s with one process to 9.1–11.6 s with two (the machine was shared; a plain orjson
read-parse-write pass of the same file took 6.3–7.7 s there).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from tunepipe.data import fields

if TYPE_CHECKING:
    import numpy as np

SPLITS = ("train", "validation", "test")
TRAIN, VALIDATION, TEST, DROPPED = 0, 1, 2, 3
GROUP_BY_PROMPT = "@prompt"
BLOCK = 1 << 20               # examples per step of the analysis (bounds its temporary arrays)
#: What format's hf-chat-template target derives from ``messages`` through a tokenizer: not part of
#: the key, so changing the tokenizer or its template does not move examples between splits.
DERIVED = frozenset({"text", "assistant_spans", "tokens"})
TOP = 2**64 - 1
LOW2 = ~3 & TOP


# ---------------------------------------------------------------------------------------------
# Hashing and keys (pure functions, used by the workers and by the unit tests)

def seed_salt(seed: int | str) -> bytes:
    """The BLAKE2b salt derived from the ``seed`` parameter (7 and "7" are the same seed)."""
    return hashlib.blake2b(b"tunepipe.split\x00" + str(seed).encode(), digest_size=16).digest()


def key_digest(data: bytes, salt: bytes) -> bytes:
    """The 8-byte BLAKE2b digest of a key; read as a little-endian integer it is the key's hash ``u``."""
    return hashlib.blake2b(data, digest_size=8, salt=salt).digest()


def key_hash(data: bytes, seed: int | str) -> int:
    """``u``, the number in [0, 2⁶⁴) that decides the split of the key ``data``."""
    return int.from_bytes(key_digest(data, seed_salt(seed)), "little")


def canonical(value: Any) -> bytes:
    """Canonical JSON: keys sorted at every level, no whitespace, UTF-8."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def prompt_digest(prompt: str) -> bytes:
    """8 bytes identifying a normalized prompt (8 zero bytes for none)."""
    if not prompt:
        return bytes(8)
    return hashlib.blake2b(prompt.encode(), digest_size=8, person=b"tunepipe.prompt").digest()


def band(ratio: float) -> int:
    """How many of the 2⁶⁴ hash values a ratio covers."""
    return min(TOP, int(ratio * 2**64))


def ratio_split(u: int, validation: float, test: float) -> int:
    """The split of key hash ``u`` for ratios: validation at the bottom, test at the top."""
    if u < band(validation):
        return VALIDATION
    if test and u >= 2**64 - band(test):
        return TEST
    return TRAIN


@dataclass(frozen=True)
class ScanConfig:
    """What pass 1 needs to know (picklable, sent to the workers)."""

    salt: bytes
    group_by: tuple[str, ...] | None
    by_prompt: bool
    stratify_by: tuple[str, ...] | None
    staged: str | None                  # folder the workers write to; None: they write nothing (keep_meta)
    group_label: str = ""
    stratify_label: str = ""
    # (largest validation hash, smallest test hash) when each example's split follows from its key
    # hash alone (see :func:`direct_bands`): the workers then write the splits' lines themselves
    bands: tuple[int | None, int | None] | None = None
    keep_meta: bool = False             # with bands: write the lines as they are, meta included


def direct_bands(validation: Size, test: Size, stratified: bool, leakage: str) -> tuple[int | None, int | None] | None:
    """The hash bands of the splits when they are known before any example is read: both sizes are
    ratios or zero (a count needs every key), there are no strata, and no leaking copy will be
    dropped (``leakage: dedupe`` decides on the whole set). None otherwise."""
    counted = any(size.is_count and size.value for size in (validation, test))
    if stratified or counted or leakage == "dedupe":
        return None
    return cutoffs(None, validation, test, stratified=False)


def band_split(u: int, bands: tuple[int | None, int | None]) -> int:
    """The split of key hash ``u`` in :func:`direct_bands`' bands (as :func:`assign` decides it)."""
    val_max, test_min = bands
    if val_max is not None and u <= val_max:
        return VALIDATION
    if test_min is not None and u >= test_min:
        return TEST
    return TRAIN


class BadExample(Exception):
    """A problem with one example (its provenance is added by the caller)."""


def required_field(record: dict[str, Any], path: tuple[str, ...], param: str, dotted: str) -> Any:
    """The value at ``path`` (parameter ``param``'s field ``dotted``); BadExample when missing or null."""
    value = fields.get(record, path)
    if value is fields.MISSING or value is None:
        why = "is null" if value is None else f"is missing: {fields.why_missing(record, path)}"
        raise BadExample(f"the {param} field '{dotted}' {why}. Every example needs a value there: add it to the "
                         f"records upstream (e.g. in ingest's meta), or choose a field every example has, "
                         f"or remove `{param}`")
    return value


def example_key(record: dict[str, Any], cfg: ScanConfig, prompt: str) -> bytes:
    """The bytes an example's split is decided by (``record`` with its ``meta``, which is not part of it)."""
    if cfg.by_prompt and prompt:
        return b"prompt\x00" + prompt.encode()
    if cfg.group_by is not None:
        return canonical(required_field(record, cfg.group_by, "group_by", cfg.group_label))
    if "messages" in record and not DERIVED.isdisjoint(record):
        return canonical({k: v for k, v in record.items() if k != "meta" and k not in DERIVED})
    if "meta" in record:
        meta = record.pop("meta")
        try:
            return canonical(record)
        finally:
            record["meta"] = meta
    return canonical(record)


# ---------------------------------------------------------------------------------------------
# Assignment (vectorized over the per-example hashes)

@dataclass(frozen=True)
class Size:
    """A split's size: a ratio (float) or a count (int)."""

    value: float | int

    @property
    def is_count(self) -> bool:
        return isinstance(self.value, int) and not isinstance(self.value, bool)

    def quota(self, keys: int) -> int:
        """The number of keys this size asks for out of ``keys`` (ratios rounded half up)."""
        return int(self.value) if self.is_count else int(math.floor(self.value * keys + 0.5))


def allocate(total: int, sizes: Sequence[int], order: Sequence[int]) -> list[int]:
    """Share ``total`` among strata of ``sizes`` keys in proportion (largest remainder; ties by ``order``)."""
    n = sum(sizes)
    if n == 0:
        return [0] * len(sizes)
    if total >= n:
        return list(sizes)
    shares = [total * s // n for s in sizes]
    rank = sorted(range(len(sizes)), key=lambda i: (-(total * sizes[i] % n), order[i]))
    for i in rank[: total - sum(shares)]:
        shares[i] += 1
    return shares


def cutoffs(distinct: np.ndarray | None, validation: Size, test: Size, stratified: bool,
            quota_val: int | None = None, quota_test: int | None = None) -> tuple[int | None, int | None]:
    """(largest validation hash, smallest test hash) for one stratum; None where the split is empty.

    ``distinct`` holds the stratum's distinct key hashes, sorted (needed for quotas only).
    """
    import numpy as np

    n = 0 if distinct is None else len(distinct)
    if not stratified and not validation.is_count:
        t = band(validation.value)
        val_max = t - 1 if t else None
        taken = int(np.searchsorted(distinct, np.uint64(t))) if distinct is not None and t else 0
    else:
        k = min(n, quota_val if quota_val is not None else validation.quota(n))
        val_max = int(distinct[k - 1]) if k else None
        taken = k
    if not stratified and not test.is_count:
        t = band(test.value)
        test_min = 2**64 - t if t else None
    else:
        k = min(n - taken, quota_test if quota_test is not None else test.quota(n))
        test_min = int(distinct[n - k]) if k > 0 else None
    if val_max is not None and test_min is not None and test_min <= val_max:
        test_min = val_max + 1 if val_max < TOP else None
    return val_max, test_min


def _distinct_sorted(values: np.ndarray) -> np.ndarray:
    """The distinct values of a sorted array, as a new array (for small arrays)."""
    import numpy as np

    if len(values) == 0:
        return values
    return values[np.concatenate(([True], values[1:] != values[:-1]))]


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """Sort ``values`` in place and return a view of its distinct values (no copy of the whole array).

    np.unique would copy the array twice (and NumPy 2's hash-based unique is slow on 64-bit keys).
    """
    values.sort()
    if len(values) == 0:
        return values
    kept = 1
    for a in range(1, len(values), BLOCK):
        block = values[a:a + BLOCK]
        new = block[block != values[a - 1:a - 1 + len(block)]]   # a copy, at most BLOCK long
        values[kept:kept + len(new)] = new                       # kept <= a: never overwrites unread values
        kept += len(new)
    return values[:kept]


def assign(u: np.ndarray, strata: np.ndarray | None, n_strata: int, order: Sequence[int],
           validation: Size, test: Size, distinct: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
    """The split (0 train, 1 validation, 2 test) of every example, and the number of keys per stratum.

    ``distinct``: the distinct key hashes, sorted (:func:`sorted_distinct`), if the caller has them.
    """
    import numpy as np

    n = len(u)
    split = np.zeros(n, dtype=np.uint8)
    if strata is None:
        if distinct is None and (validation.is_count or test.is_count):
            distinct = sorted_distinct(u.copy())
        val_max, test_min = cutoffs(distinct, validation, test, stratified=False)
        if val_max is not None:
            split[u <= np.uint64(val_max)] = VALIDATION
        if test_min is not None:
            split[(u >= np.uint64(test_min)) & (split == TRAIN)] = TEST
        return split, [len(distinct) if distinct is not None else 0]
    su = u[np.lexsort((u, strata))]            # by stratum, then by hash
    bounds = np.concatenate(([0], np.cumsum(np.bincount(strata, minlength=n_strata))))
    per_stratum = [_distinct_sorted(su[bounds[s]:bounds[s + 1]]) for s in range(n_strata)]
    sizes = [len(d) for d in per_stratum]
    qv = allocate(int(validation.value), sizes, order) if validation.is_count else [None] * n_strata
    qt_counts = test.is_count
    val_max = np.zeros(n_strata, dtype=np.uint64)
    has_val = np.zeros(n_strata, dtype=bool)
    test_min = np.zeros(n_strata, dtype=np.uint64)
    has_test = np.zeros(n_strata, dtype=bool)
    taken = []
    for s, d in enumerate(per_stratum):
        vm, _ = cutoffs(d, validation, Size(0), True, quota_val=qv[s])
        taken.append(0 if vm is None else int(np.searchsorted(d, np.uint64(vm), side="right")))
    qt = allocate(int(test.value), [sizes[s] - taken[s] for s in range(n_strata)], order) if qt_counts \
        else [None] * n_strata
    for s, d in enumerate(per_stratum):
        vm, tm = cutoffs(d, validation, test, True, quota_val=qv[s], quota_test=qt[s])
        if vm is not None:
            val_max[s], has_val[s] = vm, True
        if tm is not None:
            test_min[s], has_test[s] = tm, True
    del su, per_stratum
    is_val = has_val[strata] & (u <= val_max[strata])
    split[is_val] = VALIDATION
    split[~is_val & has_test[strata] & (u >= test_min[strata])] = TEST
    return split, sizes


class Assigned(NamedTuple):
    """Every example's split, and how many distinct keys there are (in all, and per stratum)."""

    split: np.ndarray            # per example: TRAIN, VALIDATION or TEST (uint8)
    keys: int
    key_counts: list[int]


def assign_all(u: np.ndarray, strata: np.ndarray | None, values: list[Any], validation: Size,
               test: Size) -> Assigned:
    """:func:`assign` for pass 1's arrays (``values``: each stratum's value, by stratum number).

    The sorted distinct key hashes (8 bytes per example) live only in here, so they are freed
    before the leakage check sorts a copy of the prompt hashes.
    """
    distinct = sorted_distinct(u.copy())
    split, key_counts = assign(u, strata, len(values), rank([canonical(v) for v in values]), validation, test,
                               distinct)
    return Assigned(split, len(distinct), key_counts)


def rank(names: list[bytes]) -> list[int]:
    """Each stratum's rank in the order of its canonical JSON (the tie-break of count allocation)."""
    order = [0] * len(names)
    for r, i in enumerate(sorted(range(len(names)), key=names.__getitem__)):
        order[i] = r
    return order


@dataclass
class Leaks:
    """Prompts found in more than one split."""

    prompts: int                 # distinct leaking prompts
    examples: np.ndarray         # indices of the examples that carry one, in input order
    first: np.ndarray            # per leaking prompt (sorted by first occurrence): index of its first example
    dropped: np.ndarray          # indices dedupe drops (in input order)


def find_leaks(ph: np.ndarray, split: np.ndarray) -> Leaks:
    """Leaking prompts, and which examples ``leakage: dedupe`` drops (those outside the first occurrence's split)."""
    import numpy as np

    empty = np.zeros(0, dtype=np.int64)
    pairs = ph | split                         # the prompt hash's two low bits are free for the split
    pairs.sort()
    found = []                                 # sorted: the same prompt next to itself with another split
    for a in range(0, max(len(pairs) - 1, 0), BLOCK):
        b = min(a + BLOCK, len(pairs) - 1)
        x = pairs[a + 1:b + 1] ^ pairs[a:b]
        found.append(pairs[a + 1:b + 1][(x != 0) & (x < 4)] & np.uint64(LOW2))
    del pairs
    leaking = _distinct_sorted(np.concatenate(found)) if found else np.zeros(0, dtype=np.uint64)
    leaking = leaking[leaking != 0]            # 0 is "no prompt"
    if len(leaking) == 0:
        return Leaks(0, empty, empty, empty)
    parts = []
    for a in range(0, len(ph), BLOCK):
        block = ph[a:a + BLOCK]
        pos = np.minimum(np.searchsorted(leaking, block), len(leaking) - 1)
        parts.append(np.flatnonzero(leaking[pos] == block) + a)
    examples = np.concatenate(parts)
    lp = ph[examples]
    order = np.argsort(lp, kind="stable")      # by prompt, then input order
    lp_sorted = lp[order]
    starts = np.flatnonzero(np.concatenate(([True], lp_sorted[1:] != lp_sorted[:-1])))
    first_idx = examples[order[starts]]        # each leaking prompt's first occurrence
    winner = np.repeat(split[first_idx], np.diff(np.append(starts, len(order))))
    ex_sorted = examples[order]
    dropped = np.sort(ex_sorted[split[ex_sorted] != winner])
    return Leaks(len(leaking), examples, np.sort(first_idx), dropped)
