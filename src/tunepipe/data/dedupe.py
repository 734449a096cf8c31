"""Deduplication: exact keys and MinHash LSH near-duplicates, in a compact, bounded index.

The work is split the way a streaming stage needs it:

* **Fingerprints** (CPU-bound, per record, in worker processes): :func:`exact_key` hashes a
  record's normalized text to 64 bits; :class:`MinHasher` computes the MinHash signatures of the
  word shingles of a whole batch of texts at once; :func:`band_keys` hashes each LSH band of a
  signature to 64 bits.
* **Membership** (order-dependent, in the parent, in input order): :class:`Deduper` keeps the
  first occurrence and answers, for each later record, which kept record it duplicates.

Signatures are datasketch ``MinHash`` values: its ``affine32`` scheme and its permutations for the
given ``num_perm`` and seed, applied to the 32-bit shingle hashes of :func:`shingle_hashes`. They
equal ``datasketch.MinHash(num_perm, seed, hashfunc=int)`` updated with those hashes (a test checks
it), but are computed for a batch of texts with a few numpy operations over the batch's bytes:
one ``MinHash`` object per record with SHA-1 shingles costs about ten times more (140 µs a record
here). The permutations are drawn here as datasketch draws them, and the banding (``b`` bands of
``r`` rows) is the choice of datasketch's ``MinHashLSH`` optimiser with false negatives weighted
0.9, computed here too (:func:`lsh_bands`): importing datasketch, and scipy with it, costs about a
second of CPU per process. LSH proposes candidates generously, and each candidate is then
verified against its stored signature, so a record is a near duplicate only when the estimated
Jaccard similarity of its shingles with a kept record reaches the threshold. With 64 permutations
and threshold 0.85 that is 7 bands of 9 rows: a pair at similarity 0.85 becomes a candidate with
probability 0.84, at 0.9 with 0.97, at 0.95 with 0.999 (datasketch's default weighting gives 4
bands of 15 rows: 0.31, 0.60 and 0.92).

Memory. datasketch's in-memory ``MinHashLSH`` costs about 1,500 bytes per item at 64 permutations
(4 bands; tracemalloc over 20,000 inserts): a million items would take 1.5 GB. :class:`Deduper`
keeps per indexed record: the exact key (8 bytes and a 4-byte id), each band key (8 + 4 bytes;
7 bands at 64 permutations: 84 bytes), the low 16 bits of each signature value for verification
(128 bytes at 64 permutations; two different values then match by chance with probability
2**-16), and its provenance (12 bytes). Keys live in sorted numpy runs merged like a
log-structured merge tree (each run at least twice the size of the next), so a batch's lookups
are a few ``searchsorted`` calls; each batch's new keys become one more run at its end (a dict
holds only those that a later record of the same batch shares), and a batch is checked with a
few vectorised lookups, only records that share a key with the index or an earlier record of
the batch being checked one by one.

Measured with tracemalloc (random signatures, in batches of 2,000 records):

==============  ===========  ==================  ===================
permutations    records      bytes per record    peak (merges)
==============  ===========  ==================  ===================
64              200,000      241                 316
64              1,000,000    239                 247
128             200,000      419                 536
==============  ===========  ==================  ===================

``max_index`` bounds the index (the clean stage's default, 1,000,000 records, is about 240 MB at
64 permutations, 250 MB at the peak of a merge): beyond it, records are still checked against
everything indexed but not added; :attr:`Deduper.full` says when that happened. Exact
deduplication alone (no signatures, no bands) costs 24 bytes per indexed record.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Sequence
from itertools import repeat
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

_U64 = np.uint64
FLUSH_AT = 1 << 16  # recent keys kept in a dict before they are frozen into a sorted run


def exact_key(text: str) -> int:
    """A 64-bit key for a normalized text (BLAKE2b; collisions at a million records: ~3e-8)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


_LSH_WEIGHTS = (0.1, 0.9)  # false positives, false negatives
_TIE = 1e-6  # closer than this, datasketch itself decides (scipy's quad is accurate to about 1e-8)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) for a similarity threshold, from datasketch's optimiser, favouring recall.

    datasketch's ``MinHashLSH(threshold, num_perm, weights=(0.1, 0.9))`` minimises 0.1 × P(false
    positive) + 0.9 × P(false negative) over every b × r ≤ num_perm, integrating the two
    probabilities with scipy's ``quad``. Importing datasketch and scipy costs about a second of CPU,
    so the integrals are computed here with Gauss-Legendre quadrature (within 1e-10 of quad's; a
    test checks the choice against datasketch), and datasketch is asked only when the best two
    settings come within :data:`_TIE` of each other.
    """
    pairs, fp, fn = _band_errors(threshold, num_perm)
    error = _LSH_WEIGHTS[0] * fp + _LSH_WEIGHTS[1] * fn
    best = int(np.argmin(error))  # the first of equal minima, as datasketch's loop keeps it
    if len(error) > 1 and np.partition(error, 1)[1] - error[best] < _TIE:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=_LSH_WEIGHTS)
        return int(lsh.b), int(lsh.r)
    b, r = (int(v) for v in pairs[best])
    if b < 2:
        raise ValueError("The number of bands are too small (b < 2)")  # what MinHashLSH says
    return b, r


def _band_errors(threshold: float, num_perm: int, panels: int = 16,
                 nodes: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (b, r) with b × r ≤ num_perm, in datasketch's order, with P(false positive) and P(false negative).

    A pair at similarity s becomes a candidate with probability 1 - (1 - s^r)^b; the probabilities
    are its integral below the threshold and that of the complement above it (composite
    Gauss-Legendre quadrature: ``panels`` intervals of ``nodes`` points each).
    """
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)])
    b = pairs[:, :1].astype(float)
    r = pairs[:, 1:].astype(float)
    x, w = np.polynomial.legendre.leggauss(nodes)

    def integral(f: Any, lo: float, hi: float) -> np.ndarray:
        if hi <= lo:
            return np.zeros(len(pairs))
        edges = np.linspace(lo, hi, panels + 1)
        half = (edges[1:] - edges[:-1]) / 2
        s = (edges[:-1] + half)[:, None] + half[:, None] * x[None, :]
        return f(s.reshape(1, -1)) @ (half[:, None] * w[None, :]).ravel()

    with np.errstate(divide="ignore", over="ignore", under="ignore"):
        fp = integral(lambda s: 1 - (1 - s ** r) ** b, 0.0, threshold)
        fn = integral(lambda s: 1 - (1 - (1 - s ** r) ** b), threshold, 1.0)
    return pairs, fp, fn


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (what datasketch applies before its affine permutations)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _mix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: an avalanching bijection on 64-bit values."""
    h = (h ^ (h >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> _U64(27))) * _U64(0x94D049BB133111EB)
    return h ^ (h >> _U64(31))


# --- word shingles, hashed -----------------------------------------------------------------------
#
# A word is a run of ASCII letters, digits and "_" and of non-ASCII characters (in the UTF-8 bytes
# of a casefolded text): punctuation and spaces separate words. A word's hash is a polynomial hash
# of its bytes mod 2**64, mixed with its length; a shingle's hash chains the hashes of ``size``
# consecutive words; a text of fewer words is one shingle. The top 32 bits of a shingle hash are
# the values fed to MinHash. :func:`shingle_hashes` is the plain-Python definition;
# :class:`MinHasher` computes the same values for a whole batch with numpy.

_M64 = (1 << 64) - 1
_BASE = 0x100000001B3  # odd, so invertible mod 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15
_CHAIN = 0xD6E8FEB86659FD93
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[list(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")] = True
_WORD_BYTE[128:] = True
_WORDS = re.compile(rb"[0-9A-Za-z_\x80-\xff]+")
_WORD_TABLE = bytes(_WORD_BYTE.astype(np.uint8))  # for bytes.translate: 1 for a word byte, else 0


def _mix64_int(h: int) -> int:
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def _word_hash(word: bytes) -> int:
    h = 0
    for i, byte in enumerate(word):
        h = (h + byte * pow(_BASE, i, 1 << 64)) & _M64
    return _mix64_int((h + len(word) * _GOLDEN) & _M64)


def shingle_hashes(text: str, size: int) -> list[int]:
    """The 32-bit hashes of a text's word ``size``-grams (plain Python; the definition)."""
    hashes = [_word_hash(w) for w in _WORDS.findall(text.encode("utf-8", "surrogatepass"))]
    k = min(size, len(hashes))
    out = []
    for i in range(len(hashes) - k + 1) if hashes else ():
        h = hashes[i]
        for j in range(1, k):
            h = _mix64_int((h * _CHAIN + hashes[i + j]) & _M64)
        out.append(h >> 32)
    return out


@lru_cache(maxsize=None)
def _datasketch_2() -> bool:
    """Whether datasketch 2.0 or later is installed (its affine32 scheme), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = version("datasketch").split(".")[0]
    except PackageNotFoundError:
        return False
    return major.isdigit() and int(major) >= 2


class _Powers:
    """BASE**i and BASE**-i mod 2**64 for i < n, grown on demand (one table per process, see :data:`_POWERS`)."""

    def __init__(self) -> None:
        self.tables = (np.ones(0, dtype=_U64), np.ones(0, dtype=_U64))  # (up, down), replaced together

    def need(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(up, down), at least ``n`` long."""
        tables = self.tables
        if n > len(tables[0]):
            n = max(n, (1 << 20) + 1)
            up = np.cumprod(np.concatenate([[_U64(1)], np.full(n - 1, _BASE, dtype=_U64)]), dtype=_U64)
            down = np.cumprod(np.concatenate([[_U64(1)], np.full(n - 1, _BASE_INV, dtype=_U64)]), dtype=_U64)
            self.tables = tables = (up, down)
        return tables


_POWERS = _Powers()  # shared by every MinHasher of the process


class MinHasher:
    """datasketch MinHash signatures of word shingles, for a batch of texts at once.

    The values equal ``datasketch.MinHash(num_perm, seed, hashfunc=int)`` updated with
    :func:`shingle_hashes` (datasketch's affine32 scheme and permutations; a test checks it).
    Building one ``MinHash`` per record instead costs about ten times more. ``chunk_bytes`` and
    ``chunk`` bound the temporary arrays (text bytes hashed at a time; shingles × num_perm).
    """

    def __init__(self, num_perm: int = 64, shingle_size: int = 3, seed: int = 1,
                 chunk_bytes: int = 1 << 20, chunk: int = 1 << 14) -> None:
        if not _datasketch_2():
            raise RuntimeError("near-duplicate detection needs datasketch 2.0 or later (its affine32 "
                               "MinHash scheme): pip install 'datasketch>=2.0'")
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        # datasketch's affine32 permutations (MinHash._init_permutations), drawn the same way here:
        # importing datasketch (and scipy with it) costs about a second of CPU in every process
        gen = np.random.RandomState(seed)
        self._a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self._b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        self._chunk_bytes = chunk_bytes
        self._chunk = chunk
        _POWERS.need(chunk_bytes + 1)  # once per process (forked workers inherit the tables)

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures, has_words): one row of ``num_perm`` uint32 per text; False for a text without words."""
        out = np.full((self.num_perm, len(texts)), 0xFFFFFFFF, dtype=np.uint32)  # one row per permutation
        has = np.zeros(len(texts), dtype=bool)
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        lo = 0
        while lo < len(encoded):
            hi, size = lo + 1, len(encoded[lo])
            while hi < len(encoded) and size + len(encoded[hi]) + 1 <= self._chunk_bytes:
                size += len(encoded[hi]) + 1
                hi += 1
            hashes, owner = self._shingles(encoded[lo:hi])
            if len(hashes):
                rows = lo + owner
                has[rows] = True
                self._minhash(hashes, rows, out)
            lo = hi
        return np.ascontiguousarray(out.T), has

    def _shingles(self, docs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes (uint32) of some texts, and the index of the text each belongs to (sorted)."""
        data = b"\x00".join(docs)
        buf = np.frombuffer(data, dtype=np.uint8)
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        doc_start = np.zeros(len(docs), dtype=np.int64)
        np.cumsum(lengths[:-1] + 1, out=doc_start[1:])
        up, down = _POWERS.need(len(buf) + 1)
        word = np.frombuffer(data.translate(_WORD_TABLE), dtype=np.int8)
        edges = np.diff(word, prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        if not len(starts):
            return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
        prefix = np.zeros(len(buf) + 1, dtype=_U64)
        np.cumsum(buf * up[:len(buf)], out=prefix[1:])
        words = (prefix[ends] - prefix[starts]) * down[starts]
        words = _mix64(words + (ends - starts).astype(_U64) * _U64(_GOLDEN))
        # words per text (a word never spans the separator between two texts), and each word's text
        counts = np.diff(np.searchsorted(starts, doc_start), append=len(starts))
        owner = np.repeat(np.arange(len(docs)), counts)
        first = np.cumsum(counts) - counts
        k = self.shingle_size
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        n = len(words)
        if n >= k:  # full windows of k words inside one text
            m = n - k + 1
            h = words[:m].copy()
            for j in range(1, k):
                h = _mix64(h * _U64(_CHAIN) + words[j:m + j])
            inside = owner[:m] == owner[k - 1:]
            parts.append((h[inside], owner[:m][inside]))
        for c in range(1, k):  # texts of fewer than k words: one shingle of all of them
            short = np.nonzero(counts == c)[0]
            if len(short):
                h = words[first[short]]
                for j in range(1, c):
                    h = _mix64(h * _U64(_CHAIN) + words[first[short] + j])
                parts.append((h, short))
        if len(parts) == 1:  # already in text order
            hashes, owners = parts[0]
            return (hashes >> _U64(32)).astype(np.uint32), owners
        hashes = np.concatenate([p[0] for p in parts])
        owners = np.concatenate([p[1] for p in parts])
        order = np.argsort(owners, kind="stable")
        return (hashes[order] >> _U64(32)).astype(np.uint32), owners[order]

    def _minhash(self, hashes: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """Fold the permuted shingle hashes into columns ``rows`` of ``out`` (num_perm, texts); ``rows`` sorted.

        Permutations along the first axis: each one's values for a chunk of shingles are contiguous,
        so the per-text minimum (``reduceat``) runs over contiguous memory, in a reused buffer.
        """
        hv = _fmix32(hashes)
        a = self._a[:, None]
        b = self._b[:, None]
        buf = np.empty((self.num_perm, min(self._chunk, len(hv))), dtype=np.uint32)
        for lo in range(0, len(hv), self._chunk):
            hi = min(lo + self._chunk, len(hv))
            part = rows[lo:hi]
            seg = np.concatenate([[0], np.flatnonzero(part[1:] != part[:-1]) + 1])
            phv = buf[:, :hi - lo]
            np.multiply(a, hv[None, lo:hi], out=phv)
            phv += b
            targets = part[seg]
            out[:, targets] = np.minimum(out[:, targets], np.minimum.reduceat(phv, seg, axis=1))


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys: each band's ``rows`` values (and the band's number) hashed together."""
    n = signatures.shape[0]
    sig = signatures[:, :bands * rows].astype(_U64).reshape(n, bands, rows)
    seeds = np.array([(b + 1) * 0x9E3779B97F4A7C15 % (1 << 64) for b in range(bands)], dtype=_U64)
    h = np.repeat(seeds[None, :], n, axis=0)
    for j in range(rows):  # all bands at once, row by row
        h = _mix64(h ^ sig[:, :, j])
    return h


def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted runs (keys, ids); for equal keys the older run ``a`` comes first.

    A stable sort of the two runs end to end: numpy's timsort finds the two runs and merges them
    in one pass (about twice as fast as placing ``b`` with ``searchsorted`` for runs of millions).
    """
    keys = np.concatenate([a[0], b[0]])
    order = np.argsort(keys, kind="stable")
    return keys[order], np.concatenate([a[1], b[1]])[order]


class KeyIndex:
    """A multimap from 64-bit keys to item ids: 12 bytes an entry once frozen.

    Recent entries live in a dict; :meth:`flush` freezes them into sorted numpy runs (merged so
    that each run is at least twice the size of the next), and :meth:`freeze` does so together
    with entries given as arrays. Lookups against the frozen runs are vectorised per batch
    (:meth:`frozen_lookup`); the dict answers for what was added since.
    """

    def __init__(self, flush_at: int = FLUSH_AT) -> None:
        self._recent: dict[int, Any] = {}  # key -> id, or a list of ids
        self._multi: set[int] = set()  # the keys of self._recent that hold a list
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._flush_at = flush_at

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self._runs) + sum(
            len(v) if isinstance(v, list) else 1 for v in self._recent.values())

    @property
    def nbytes(self) -> int:
        """Bytes held by the frozen runs (the recent dict is bounded by ``flush_at``)."""
        return sum(k.nbytes + i.nbytes for k, i in self._runs)

    def add(self, key: int, item: int) -> None:
        old = self._recent.get(key)
        if old is None:
            self._recent[key] = item
        elif isinstance(old, list):
            old.append(item)
        else:
            self._recent[key] = [old, item]
            self._multi.add(key)

    def recent(self, key: int) -> list[int]:
        """The ids added under ``key`` since the last flush."""
        found = self._recent.get(key)
        if found is None:
            return []
        return found if isinstance(found, list) else [found]

    def recent_many(self, keys: list[int]) -> list[Any]:
        """For each key, None, an id, or a list of ids added since the last flush (one C-level pass)."""
        return list(map(self._recent.get, keys))

    def add_many(self, keys: list[int], item: int, found: list[Any]) -> None:
        """Add ``item`` under each key; ``found`` is what :meth:`recent_many` said for them."""
        if found.count(None) == len(found):
            self._recent.update(zip(keys, repeat(item)))
            return
        for key in keys:
            self.add(key, item)

    def recent_hits(self, keys: list[int]) -> list[int]:
        """The positions in ``keys`` of those added since the last flush."""
        if not self._recent:
            return []
        found = list(map(self._recent.get, keys))
        if found.count(None) == len(found):
            return []
        return [i for i, v in enumerate(found) if v is not None]

    def frozen_lookup(self, keys: np.ndarray) -> dict[int, list[int]]:
        """For each position in ``keys`` found in the frozen runs, the ids stored under it (oldest first)."""
        hits: dict[int, list[int]] = {}
        if not self._runs or not len(keys):
            return hits
        order = np.argsort(keys)  # sorted queries make searchsorted much faster (it reuses bounds)
        queries = keys[order]
        for run_keys, run_ids in self._runs:
            left = np.searchsorted(run_keys, queries, side="left")
            found = np.nonzero(run_keys[np.minimum(left, len(run_keys) - 1)] == queries)[0]
            for j in found.tolist():
                lo = hi = int(left[j])
                while hi < len(run_keys) and run_keys[hi] == queries[j]:
                    hi += 1
                hits.setdefault(int(order[j]), []).extend(run_ids[lo:hi].tolist())
        return hits

    def flush(self, force: bool = False) -> None:
        """Freeze the recent entries into a sorted run once there are ``flush_at`` of them (or now)."""
        if not self._recent or (not force and len(self._recent) < self._flush_at):
            return
        keys, ids = self._take_recent()
        order = np.argsort(keys, kind="stable")  # equal keys: ids stay in insertion order
        self._push(keys[order], ids[order])

    def freeze(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Freeze the recent entries and these (``keys``, ``ids``), which are not among them, into one run.

        Equal keys keep their ids in increasing order: ids must grow with time, as item ids do.
        """
        if self._recent:
            more_keys, more_ids = self._take_recent()
            keys = np.concatenate([keys.astype(_U64, copy=False), more_keys])
            ids = np.concatenate([ids.astype(np.uint32, copy=False), more_ids])
        if not len(keys):
            return
        order = np.lexsort((ids, keys))
        self._push(keys[order].astype(_U64, copy=False), ids[order].astype(np.uint32, copy=False))

    def _take_recent(self) -> tuple[np.ndarray, np.ndarray]:
        """The recent entries as (keys, ids) arrays, in insertion order per key; the dict is emptied."""
        recent, self._recent = self._recent, {}
        multi = {k: recent.pop(k) for k in self._multi}
        self._multi = set()
        keys = np.fromiter(recent.keys(), dtype=_U64, count=len(recent))
        ids = np.fromiter(recent.values(), dtype=np.uint32, count=len(recent))
        if multi:
            keys = np.concatenate([keys, np.array([k for k, v in multi.items() for _ in v], dtype=_U64)])
            ids = np.concatenate([ids, np.array([i for v in multi.values() for i in v], dtype=np.uint32)])
        return keys, ids

    def _push(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Append a sorted run (newer than every other) and merge runs until each is twice the next."""
        self._runs.append((keys, ids))
        while len(self._runs) > 1 and len(self._runs[-2][0]) < 2 * len(self._runs[-1][0]):
            newer = self._runs.pop()
            older = self._runs.pop()
            self._runs.append(_merge(older, newer))


class Provenance:
    """Where each indexed record came from: (source, position key, position), 12 bytes a record."""

    def __init__(self) -> None:
        self._names: list[tuple[str, str]] = []
        self._name_ids: dict[tuple[str, str], int] = {}
        self._name_of = array("I")
        self._pos = array("q")
        self._odd: dict[int, Any] = {}  # positions that are not 64-bit integers

    def add(self, source: str, key: str, pos: Any) -> None:
        name = (source, key)
        idx = self._name_ids.get(name)
        if idx is None:
            idx = self._name_ids[name] = len(self._names)
            self._names.append(name)
        self._name_of.append(idx)
        if isinstance(pos, int) and not isinstance(pos, bool) and -(1 << 63) <= pos < (1 << 63):
            self._pos.append(pos)
        else:
            self._odd[len(self._pos)] = pos
            self._pos.append(0)

    def extend(self, items: Sequence[tuple[str, str, Any]]) -> None:
        """:meth:`add` each of ``items``; at once when they share their name and hold plain integers."""
        if not items:
            return
        sources, keys, positions = zip(*items)
        if (sources.count(sources[0]) == len(sources) and keys.count(keys[0]) == len(keys)
                and all(type(p) is int for p in positions)):
            name = (sources[0], keys[0])
            idx = self._name_ids.get(name)
            if idx is None:
                idx = self._name_ids[name] = len(self._names)
                self._names.append(name)
            try:
                pos = array("q", positions)
            except OverflowError:
                pass
            else:
                self._name_of.extend(array("I", [idx]) * len(items))
                self._pos.extend(pos)
                return
        for item in items:
            self.add(*item)

    def __getitem__(self, item: int) -> tuple[str, str, Any]:
        source, key = self._names[self._name_of[item]]
        return source, key, self._odd.get(item, self._pos[item])

    def label(self, item: int) -> str:
        """``source:position``, the way a reject names the record it duplicates."""
        source, _, pos = self[item]
        return f"{source}:{pos}"

    @property
    def nbytes(self) -> int:
        return self._name_of.itemsize * len(self._name_of) + self._pos.itemsize * len(self._pos)


def _repeats(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position, whether the same key occurs at an earlier position, and at a later one."""
    earlier = np.zeros(len(keys), dtype=bool)
    later = np.zeros(len(keys), dtype=bool)
    if len(keys) > 1:
        order = np.argsort(keys, kind="stable")  # equal keys stay in their order
        ordered = keys[order]
        same = ordered[1:] == ordered[:-1]
        earlier[order[1:][same]] = True
        later[order[:-1][same]] = True
    return earlier, later


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, dtype=_U64), np.zeros(0, dtype=np.uint32)
    return np.concatenate([k for k, _ in parts]), np.concatenate([i for _, i in parts])


class _BatchState:
    """What :meth:`Deduper.check` works with for one batch."""

    def __init__(self) -> None:
        self.keys: list[int] = []  # exact keys
        self.ex_array: np.ndarray = np.zeros(0, dtype=_U64)  # the same, as an array
        self.ex_later: np.ndarray = np.zeros(0, dtype=bool)  # whether a later record has the same exact key
        self.ex_frozen: dict[int, list[int]] = {}  # record -> ids with its exact key in the frozen runs
        self.nb = 0  # bands per record
        self.bands: np.ndarray = np.zeros((0, 0), dtype=_U64)  # (records, nb) band keys
        self.band_keys: list[int] = []  # the same, flattened
        self.band_later: np.ndarray = np.zeros((0, 0), dtype=bool)  # whether a later position has the key
        self.frozen: dict[int, list[int]] = {}  # record -> ids sharing a band key in the frozen runs
        self.has: np.ndarray = np.zeros(0, dtype=bool)
        self.low: np.ndarray = np.zeros((0, 0), dtype=np.uint16)
        self.pending: dict[int, int] = {}  # item -> row of this batch, for signatures not stored yet
        self.new_exact: list[tuple[np.ndarray, np.ndarray]] = []  # (keys, ids) indexed in bulk, not in the dict
        self.new_bands: list[tuple[np.ndarray, np.ndarray]] = []


@dataclass(frozen=True)
class Duplicate:
    """A record found to duplicate an earlier kept one (``of``: its index in :class:`Provenance`)."""

    kind: str  # "exact" or "near"
    of: int
    similarity: float = 1.0


class Deduper:
    """Exact and near-duplicate membership, in input order; the first occurrence is kept.

    Call :meth:`check` once per batch, in input order. ``near`` needs band keys and signatures;
    exact keys are optional too (``None`` switches exact deduplication off).
    """

    def __init__(self, *, exact: bool = True, near: bool = True, threshold: float = 0.85, num_perm: int = 64,
                 bands: int | None = None, max_index: int = 1_000_000, flush_at: int = FLUSH_AT) -> None:
        self.exact = exact
        self.near = near
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands = bands or 0
        self.max_index = max_index
        self.provenance = Provenance()
        self.indexed = 0
        self.full = False
        self._exact = KeyIndex(flush_at)
        self._bands = KeyIndex(flush_at)
        self._sig_chunks: list[np.ndarray] = []  # up to 2**16 rows each

    def _sig(self, item: int) -> np.ndarray:
        return self._sig_chunks[item >> 16][item & 0xFFFF]

    def _store_sigs(self, items: list[int], values: np.ndarray) -> None:
        """Store signature rows ``values`` for ``items`` (increasing ids)."""
        last = items[-1]
        while len(self._sig_chunks) <= last >> 16:
            self._sig_chunks.append(np.empty((0, self.num_perm), dtype=np.uint16))
        ids = np.asarray(items, dtype=np.int64)
        for chunk in range(items[0] >> 16, (last >> 16) + 1):
            sel = (ids >> 16) == chunk
            rows = ids[sel] & 0xFFFF
            block = self._sig_chunks[chunk]
            need = int(rows[-1]) + 1 if len(rows) else 0
            if need > len(block):  # grow to a power of two from 1024 rows up to 2**16: sizes follow the count
                grown = np.empty((min(1 << 16, max(1024, 1 << (need - 1).bit_length())), self.num_perm),
                                 dtype=np.uint16)
                grown[:len(block)] = block
                self._sig_chunks[chunk] = block = grown
            block[rows] = values[sel]

    def flush(self) -> None:
        """Freeze every recent key into the sorted runs (done by :meth:`check` every 2**16 keys)."""
        self._exact.flush(force=True)
        self._bands.flush(force=True)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index (frozen runs, stored signatures, provenance), recent keys aside."""
        return (self._exact.nbytes + self._bands.nbytes + self.provenance.nbytes
                + sum(c.nbytes for c in self._sig_chunks))

    def check(self, exact_keys: Sequence[int] | np.ndarray | None, bands: np.ndarray | None, sigs: np.ndarray | None,
              has_sig: Sequence[bool] | None, provenance: Sequence[tuple[str, str, Any]]) -> list[Duplicate | None]:
        """For each record of a batch, in order, the kept record it duplicates, or None (it is kept).

        ``exact_keys``: one :func:`exact_key` per record (or None without exact deduplication);
        ``bands``: (n, bands) uint64 :func:`band_keys`; ``sigs``: (n, num_perm) signatures (only
        their low 16 bits are used); ``has_sig[i]``: false for a record without words, which gets
        no near-duplicate check; ``provenance``: (source, position key, position) per record.

        The answer is that of checking and indexing the records one at a time, in order. Most
        records have no key in common with the index nor with an earlier record of the batch: they
        are found with a few vectorised lookups and indexed in bulk; only the others are checked
        one by one (:meth:`_check_one`).
        """
        n = len(provenance)
        if not n:
            return []
        exact = self.exact and exact_keys is not None
        near = self.near and bands is not None and sigs is not None and has_sig is not None
        st = _BatchState()
        slow = np.zeros(n, dtype=bool)  # records that may have a candidate: checked one by one
        if exact:
            assert exact_keys is not None
            keys = np.asarray(exact_keys, dtype=_U64)
            st.keys = exact_keys if isinstance(exact_keys, list) else keys.tolist()
            st.ex_array = keys
            st.ex_frozen = self._exact.frozen_lookup(keys)
            slow[list(st.ex_frozen)] = True
            slow[self._exact.recent_hits(st.keys)] = True
            earlier, st.ex_later = _repeats(keys)
            slow |= earlier
        if near:
            assert bands is not None and sigs is not None and has_sig is not None
            nb = bands.shape[1]
            flat = bands.reshape(-1)
            st.nb = nb
            st.bands = bands
            st.band_keys = flat.tolist()
            for pos, ids in self._bands.frozen_lookup(flat).items():
                st.frozen.setdefault(pos // nb, []).extend(ids)
            earlier, later = _repeats(flat)
            st.band_later = later.reshape(n, nb)
            band_slow = earlier.reshape(n, nb).any(axis=1)
            band_slow[list(st.frozen)] = True
            band_slow[[p // nb for p in self._bands.recent_hits(st.band_keys)]] = True
            st.has = np.asarray(has_sig, dtype=bool)
            slow |= band_slow & st.has
            st.low = sigs if sigs.dtype == np.uint16 else (sigs & 0xFFFF).astype(np.uint16)
        out: list[Duplicate | None] = [None] * n
        start = 0
        for i in [*np.nonzero(slow)[0].tolist(), n]:
            if i > start:
                self._index_new(start, i, exact, near, provenance, st)
            if i == n:
                break
            out[i] = self._check_one(i, exact, near, provenance, st)
            start = i + 1
        if st.pending:
            self._store_sigs(list(st.pending), st.low[list(st.pending.values())])
        if exact:
            self._exact.freeze(*_joined(st.new_exact))
        if near:
            self._bands.freeze(*_joined(st.new_bands))
        return out

    def _index_new(self, lo: int, hi: int, exact: bool, near: bool, provenance: Sequence[tuple[str, str, Any]],
                   st: _BatchState) -> None:
        """Index records ``lo`` to ``hi`` of a batch, none of which has a key in the index or earlier in it.

        Their keys go straight into the batch's new run (:meth:`KeyIndex.freeze`), but those that a
        later record of the batch shares: those go into the recent dict, where that record looks.
        """
        room = self.max_index - self.indexed
        if hi - lo > room:
            self.full = True
            hi = lo + max(room, 0)
            if hi <= lo:
                return
        first = self.indexed
        self.indexed += hi - lo
        self.provenance.extend(provenance[lo:hi])
        if exact:
            ids = np.arange(first, first + hi - lo, dtype=np.uint32)
            keys = st.ex_array[lo:hi]
            later = st.ex_later[lo:hi]
            if later.any():
                for j in np.nonzero(later)[0].tolist():
                    self._exact.add(st.keys[lo + j], first + j)
                keys, ids = keys[~later], ids[~later]
            st.new_exact.append((keys, ids))
        if near:
            nb = st.nb
            rows = np.nonzero(st.has[lo:hi])[0]
            if len(rows):
                keys = st.bands[lo:hi][rows].reshape(-1)
                ids = np.repeat((first + rows).astype(np.uint32), nb)
                later = st.band_later[lo:hi][rows].reshape(-1)
                if later.any():
                    for j in np.nonzero(later)[0].tolist():
                        self._bands.add(int(keys[j]), int(ids[j]))
                    keys, ids = keys[~later], ids[~later]
                st.new_bands.append((keys, ids))
                st.pending.update(zip((first + rows).tolist(), (lo + rows).tolist()))

    def _check_one(self, i: int, exact: bool, near: bool, provenance: Sequence[tuple[str, str, Any]],
                   st: _BatchState) -> Duplicate | None:
        """Check record ``i`` of a batch against the index, and index it when it is kept."""
        if exact:
            key = st.keys[i]
            hit = st.ex_frozen.get(i) or self._exact.recent(key)
            if hit:
                return Duplicate("exact", hit[0])
        row = found = None
        if near and st.has[i]:
            nb = st.nb
            row = st.band_keys[i * nb:(i + 1) * nb]
            found = self._bands.recent_many(row)
            cands = st.frozen.get(i)
            if cands or found.count(None) != nb:
                ids = set(cands or ())
                for v in found:
                    if isinstance(v, list):
                        ids.update(v)
                    elif v is not None:
                        ids.add(v)
                dup = self._best(sorted(ids), st.low[i], st.pending, st.low)
                if dup is not None:
                    return dup
        if self.indexed >= self.max_index:
            self.full = True
            return None
        item = self.indexed
        self.indexed += 1
        self.provenance.add(*provenance[i])
        if exact:
            self._exact.add(key, item)
        if row is not None:
            self._bands.add_many(row, item, found)  # type: ignore[arg-type]
            st.pending[item] = i
        return None

    def _best(self, ids: list[int], sig: np.ndarray, pending: dict[int, int], batch: np.ndarray) -> Duplicate | None:
        """The most similar candidate at or above the threshold (the earliest among equals), or None."""
        stored = np.stack([batch[pending[c]] if c in pending else self._sig(c) for c in ids])
        sims = (stored == sig).mean(axis=1)
        best = int(np.argmax(sims))
        return Duplicate("near", ids[best], float(sims[best])) if sims[best] >= self.threshold else None
