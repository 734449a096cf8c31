"""A compact multimap from 64-bit keys to item ids, for the dedupe index (:mod:`tunepipe.data.dedupe`).

Keys live in sorted numpy runs merged like a log-structured merge tree (each run at least twice
the size of the next), so a batch's lookups are a few ``searchsorted`` calls; recent keys wait in
a dict until there are ``flush_at`` of them. Once frozen, an entry costs 12 bytes (the key and a
4-byte id).
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import numpy as np

_U64 = np.uint64
FLUSH_AT = 1 << 16  # recent keys kept in a dict before they are frozen into a sorted run


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
