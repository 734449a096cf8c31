"""Why stored results cannot be trusted: an artifact whose files no longer have their published
sizes (a cheap check, no hashing), and the records built, directly or through others, from an
artifact ``cache verify`` found corrupt. Pure functions over listings and records: the stores
(:mod:`tunepipe.cache.store`, :mod:`tunepipe.cache.remote`) act on what they say.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tunepipe.cache.digests import tree_entries

Entries = list[tuple[str, Path, os.stat_result]]


def file_sizes(entries: Entries) -> dict[str, int]:
    """Size by relative path of every non-folder entry of a tree (``tree_entries``)."""
    return {rel: st.st_size for rel, _p, st in entries if not stat.S_ISDIR(st.st_mode)}


def size_damage(now: Mapping[str, int], published: Mapping[str, int]) -> str | None:
    """The first way a folder's files differ from those published (names, sizes), else None."""
    for rel in sorted(published):
        if rel not in now:
            return f"{rel} is gone"
        if now[rel] != published[rel]:
            return f"{rel} has {now[rel]} bytes, {published[rel]} when published"
    added = sorted(set(now) - set(published))
    return f"{added[0]} was added" if added else None


def object_damage(folder: Path, published: Mapping[str, int] | None) -> str | None:
    """Why a stored folder cannot be trusted, from a listing only (no file is read), else None.
    Without a manifest (``published``: None) only its existence is checked."""
    if not folder.is_dir():
        return "it is missing"
    if published is None:
        return None
    try:
        return size_damage(file_sizes(tree_entries(folder)), published)
    except OSError as e:  # a file removed while we list it
        return f"it cannot be listed: {e.strerror}"


def entry_digests(entry: Any) -> list[str]:
    """The digests in one input entry of key parts, whatever the key format: a digest (format 1),
    a mapping holding one under "digest" (format 2), or a list of either."""
    if isinstance(entry, str):
        return [entry]
    if isinstance(entry, Mapping):
        return [entry["digest"]] if isinstance(entry.get("digest"), str) else []
    if isinstance(entry, (list, tuple)):
        return [d for e in entry for d in entry_digests(e)]
    return []


def record_inputs(record: Mapping[str, Any]) -> set[str]:
    """The digests a record's stage read (its key parts' inputs); an odd record reads nothing."""
    parts = record.get("parts")
    inputs = parts.get("inputs") if isinstance(parts, Mapping) else None
    entries = inputs.values() if isinstance(inputs, Mapping) else ()
    return {d for entry in entries for d in entry_digests(entry)}


def record_outputs(record: Mapping[str, Any]) -> list[str]:
    outputs = record.get("outputs")
    return [d for d in outputs.values() if isinstance(d, str)] if isinstance(outputs, Mapping) else []


def downstream(records: Mapping[str, Mapping[str, Any]], bad: Iterable[str]) -> dict[str, str]:
    """The records built from a ``bad`` artifact, directly or from the outputs of other such
    records, each with the digest it read that taints it: their keys match again once the bad
    artifact is recomputed, so they would serve results made from damaged data."""
    readers: dict[str, list[str]] = {}
    for key, rec in records.items():
        for digest in record_inputs(rec):
            readers.setdefault(digest, []).append(key)
    tainted: dict[str, str] = {}  # in the order found: readers before the readers of their outputs
    queue = deque(sorted(set(bad)))
    while queue:
        digest = queue.popleft()
        for key in sorted(readers.get(digest, ())):
            if key not in tainted:
                tainted[key] = digest
                queue.extend(record_outputs(records[key]))
    return tainted


def _stage(record: Mapping[str, Any]) -> str:
    return str(record.get("stage") or "?")


def maker_lines(records: Mapping[str, Mapping[str, Any]], bad: set[str]) -> list[tuple[str, str, str]]:
    """(key, stage, why) of each record that made a ``bad`` artifact."""
    out = []
    for key, rec in sorted(records.items()):
        corrupt = [d for d in record_outputs(rec) if d in bad]
        if corrupt:
            out.append((key, _stage(rec), f"its output {corrupt[0][:12]} is corrupt"))
    return out


def reader_lines(records: Mapping[str, Mapping[str, Any]], bad: set[str],
                 tainted: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(key, stage, why) of each record built from a ``bad`` artifact (``downstream``)."""
    made_by = {d: _stage(records[k]) for k in tainted for d in record_outputs(records[k])}
    out = []
    for key, digest in tainted.items():
        why = (f"built from corrupt artifact {digest[:12]}" if digest in bad
               else f"built from {digest[:12]}, made by stage '{made_by.get(digest, '?')}', which is dropped too")
        out.append((key, _stage(records[key]), why))
    return out
