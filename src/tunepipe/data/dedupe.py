"""Deduplication: exact keys and MinHash LSH near-duplicates, in a compact, bounded index.

The work is split the way a streaming stage needs it:

* **Fingerprints** (CPU-bound, per record, in worker processes): :func:`exact_key` hashes a
  record's normalized text to 64 bits; :class:`~tunepipe.data.minhash.MinHasher` computes the
  MinHash signatures of the word shingles of a whole batch of texts at once;
  :func:`~tunepipe.data.minhash.band_keys` hashes each LSH band of a signature to 64 bits
  (:mod:`tunepipe.data.minhash` says how, and how the banding is chosen).
* **Membership** (order-dependent, in the parent, in input order): :class:`Deduper` keeps the
  first occurrence and answers, for each later record, which kept record it duplicates.

Memory. datasketch's in-memory ``MinHashLSH`` costs about 1,500 bytes per item at 64 permutations
(4 bands; tracemalloc over 20,000 inserts): a million items would take 1.5 GB. :class:`Deduper`
keeps per indexed record: the exact key (8 bytes and a 4-byte id), each band key (8 + 4 bytes;
7 bands at 64 permutations: 84 bytes), the low 16 bits of each signature value for verification
(128 bytes at 64 permutations; two different values then match by chance with probability
2**-16), and its provenance (12 bytes). Keys live in sorted numpy runs merged like a
log-structured merge tree (:class:`~tunepipe.data.key_index.KeyIndex`), so a batch's lookups
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
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunepipe.data.key_index import FLUSH_AT, KeyIndex
from tunepipe.data.minhash import MinHasher, band_keys, lsh_bands, shingle_hashes
from tunepipe.data.record import Provenance

__all__ = ["Deduper", "Duplicate", "FLUSH_AT", "KeyIndex", "MinHasher", "Origins", "band_keys", "exact_key",
           "exact_keys", "lsh_bands", "shingle_hashes"]

_U64 = np.uint64


def exact_key(text: str) -> int:
    """A 64-bit key for a normalized text (BLAKE2b; collisions at a million records: ~3e-8)."""
    return int.from_bytes(exact_keys((text,)), "little")


def exact_keys(texts: Iterable[str]) -> bytes:
    """:func:`exact_key` of each text, 8 little-endian bytes each: a block's keys in one call."""
    blake2b = hashlib.blake2b
    return b"".join([blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest() for t in texts])


class Origins:
    """Where each indexed record came from (a :class:`~tunepipe.data.record.Provenance`), 12 bytes a record.

    A record's source and unit are stored once per distinct pair, its position as a 64-bit
    integer (an odd position, such as a string, is kept as it is on the side).
    """

    def __init__(self) -> None:
        self._names: list[tuple[str, str | None]] = []
        self._name_ids: dict[tuple[str, str | None], int] = {}
        self._name_of = array("I")
        self._pos = array("q")
        self._odd: dict[int, Any] = {}  # positions that are not 64-bit integers

    def _name_id(self, name: tuple[str, str | None]) -> int:
        idx = self._name_ids.get(name)
        if idx is None:
            idx = self._name_ids[name] = len(self._names)
            self._names.append(name)
        return idx

    def add(self, where: Sequence[Any]) -> None:
        """One record's (source, unit, position): a Provenance, or any such triple."""
        source, unit, pos = where
        self._name_of.append(self._name_id((source, unit)))
        if isinstance(pos, int) and not isinstance(pos, bool) and -(1 << 63) <= pos < (1 << 63):
            self._pos.append(pos)
        else:
            self._odd[len(self._pos)] = pos
            self._pos.append(0)

    def extend(self, items: Sequence[Sequence[Any]]) -> None:
        """:meth:`add` each of ``items``; at once when they share their source and unit and hold plain integers."""
        if not items:
            return
        sources, units, positions = zip(*items)
        if (sources.count(sources[0]) == len(sources) and units.count(units[0]) == len(units)
                and all(type(p) is int for p in positions)):
            try:
                pos = array("q", positions)
            except OverflowError:
                pass
            else:
                self._name_of.extend(array("I", [self._name_id((sources[0], units[0]))]) * len(items))
                self._pos.extend(pos)
                return
        for item in items:
            self.add(item)

    def __getitem__(self, item: int) -> Provenance:
        source, unit = self._names[self._name_of[item]]
        return Provenance(source, unit, self._odd.get(item, self._pos[item]))

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
    """A record found to duplicate an earlier kept one (``of``: its index in :attr:`Deduper.origins`)."""

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
        self.origins = Origins()
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
        """Bytes held by the index (frozen runs, stored signatures, origins), recent keys aside."""
        return (self._exact.nbytes + self._bands.nbytes + self.origins.nbytes
                + sum(c.nbytes for c in self._sig_chunks))

    def check(self, exact_keys: Sequence[int] | np.ndarray | None, bands: np.ndarray | None, sigs: np.ndarray | None,
              has_sig: Sequence[bool] | None, provenance: Sequence[Provenance]) -> list[Duplicate | None]:
        """For each record of a batch, in order, the kept record it duplicates, or None (it is kept).

        ``exact_keys``: one :func:`exact_key` per record (or None without exact deduplication);
        ``bands``: (n, bands) uint64 :func:`band_keys`; ``sigs``: (n, num_perm) signatures (only
        their low 16 bits are used); ``has_sig[i]``: false for a record without words, which gets
        no near-duplicate check; ``provenance``: where each record comes from (a Provenance, or any
        (source, unit, position) triple).

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

    def _index_new(self, lo: int, hi: int, exact: bool, near: bool, provenance: Sequence[Provenance],
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
        self.origins.extend(provenance[lo:hi])
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

    def _check_one(self, i: int, exact: bool, near: bool, provenance: Sequence[Provenance],
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
        self.origins.add(provenance[i])
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
