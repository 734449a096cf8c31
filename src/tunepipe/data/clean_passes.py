"""The clean stage's pass over its input (what is done to each record is :mod:`tunepipe.data.cleaning`'s).

* In the workers: :func:`clean_block` reads its block of the input file itself
  (:mod:`tunepipe.data.blocks`), cleans each record, applies the token limits, computes the dedupe
  fingerprints, and stages the kept records' lines in a scratch file. What it returns, a
  :class:`CleanedBlock`, holds no record bytes: where each record came from, what was dropped and
  why, what changed, and the fingerprints. (With one worker, which runs in the parent, the kept
  lines come back in the result instead: staging them would only copy them twice more.)
* In the parent, block by block in input order (so the first occurrence is kept and the output is
  the same for any number of workers): :class:`Gather` checks the fingerprints against the dedupe
  index (:class:`~tunepipe.data.dedupe.Deduper`), copies the staged lines but the duplicates'
  into ``records.jsonl`` (:func:`copy_kept`, hashing them on the way), writes ``rejects.jsonl`` and
  ``changes.jsonl``, and keeps the counts (:class:`Tally`).
"""

from __future__ import annotations

import os
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import orjson

from tunepipe.data.blocks import Block, count_lines
from tunepipe.data.cleaning import EXACT, NEAR, TOO_LONG, TOO_SHORT, Config, Reason, cleaner_for, plain_line
from tunepipe.data.outfile import OutputFile
from tunepipe.data.pii import KINDS
from tunepipe.data.record import Provenance

if TYPE_CHECKING:
    import numpy as np

    from tunepipe.data import jsonl
    from tunepipe.data.dedupe import Deduper, Duplicate
    from tunepipe.data.rejects import Rejects


class BadLine(NamedTuple):
    """The first line of a block that clean cannot read (the block stops there): its line in the block, and why."""

    line: int
    message: str


#: Where a record came from, as a worker sends it: its Provenance as a plain (source, unit, position)
#: triple (cheaper to send and to rebuild than the named tuple), or an int: its line in the block,
#: when its meta gives no position (the parent adds the lines of the file before the block).
Where: TypeAlias = tuple[str, str, Any] | int


class Drop(NamedTuple):
    """A record dropped in a worker: the kept records of its block before it (its place among them),
    where it came from, why, and details for rejects.jsonl."""

    before: int
    where: Where
    reason: Reason
    details: dict[str, int] | None = None


class NearPrints(NamedTuple):
    """The kept records' near-duplicate fingerprints: band keys (n, bands), the low 16 bits of
    their signatures (n, num_perm), and whether each has words at all."""

    bands: np.ndarray
    sigs: np.ndarray
    has: list[bool]


@dataclass
class CleanedBlock:
    """What a worker says about a block (:func:`clean_block`)."""

    lines: int                                  # physical lines in the block (for line numbers)
    records: int                                # records read
    wheres: list[Where] = field(default_factory=list)  # per kept record
    lengths: array = field(default_factory=lambda: array("I"))    # per kept record: its line's length
    kept: bytes | None = None                   # the kept lines, when not staged (a worker in the parent)
    keys: bytes | None = None                   # per kept record: its exact key (8 bytes), with dedupe
    near: NearPrints | None = None              # with near dedupe
    changed: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # (kept index, changes)
    drops: list[Drop] = field(default_factory=list)
    error: BadLine | None = None


def staged_file(staged: str | Path, block: Block) -> Path:
    """Where a block's kept lines are staged."""
    return Path(staged) / f"{block.index:06d}.jsonl"


def clean_block(cfg: Config, staged: str | None, block: Block) -> CleanedBlock:
    """Clean a block's records, stage the kept lines in the folder ``staged``, and say what happened
    (in a worker). ``staged`` None: the work runs in the parent, and the kept lines come back in
    :attr:`CleanedBlock.kept`."""
    cleaner = cleaner_for(cfg)
    enc, lo, hi = cleaner.enc, cfg.min_tokens, cfg.max_tokens
    loads, dumps, meta_of = orjson.loads, orjson.dumps, Provenance.of
    data = block.read()
    got = CleanedBlock(count_lines(data), 0)
    wheres, changed, drops = got.wheres, got.changed, got.drops
    sources: dict[str, str] = {}  # one string per source: pickled once
    exact = cfg.dedupe != "none"
    key_texts: list[str] = []
    near_texts: list[str] = []
    lines: list[bytes] = []
    for number, raw in block.lines(data):
        changes: dict[str, int] = {}
        try:
            record = loads(raw)
            if record.__class__ is not dict:
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            found = meta_of(record)
            cleaned = cleaner.clean(record, plain_line(raw), changes)
        except (ValueError, TypeError, AttributeError) as e:  # orjson's decode error is a ValueError
            got.error = BadLine(number, str(e))
            return got
        got.records += 1
        where: Where = number if found is None or found.unit is None else \
            (sources.setdefault(found.source, found.source), found.unit, found.position)
        if cleaned.__class__ is not dict:
            drops.append(Drop(len(wheres), where, cleaned))  # type: ignore[arg-type]
            continue
        if enc is not None:
            tokens = cleaner.tokens(cleaned)  # type: ignore[arg-type]
            if lo is not None and tokens < lo:
                drops.append(Drop(len(wheres), where, TOO_SHORT, {"tokens": tokens, "min_tokens": lo}))
                continue
            if hi is not None and tokens > hi:
                drops.append(Drop(len(wheres), where, TOO_LONG, {"tokens": tokens, "max_tokens": hi}))
                continue
        if exact:
            key_text, near_text = cleaner.dedupe_texts(cleaned, cleaned is record)  # type: ignore[arg-type]
            key_texts.append(key_text)
            near_texts.append(near_text)
        if changes:
            changed.append((len(wheres), changes))
        wheres.append(where)
        lines.append(dumps(cleaned))
    got.lengths = array("I", map(len, lines))
    if lines:
        lines.append(b"")  # a newline after the last line too
    kept = b"\n".join(lines)
    if staged is None:
        got.kept = kept
    else:
        with open(staged_file(staged, block), "wb") as out:
            out.write(kept)
    if exact:
        from tunepipe.data.dedupe import exact_keys

        got.keys = exact_keys(key_texts)
    if cleaner.hasher is not None:
        from tunepipe.data.minhash import band_keys

        full, has_words = cleaner.hasher.signatures(near_texts)
        got.near = NearPrints(band_keys(full, cfg.bands, cfg.rows), (full & 0xFFFF).astype("uint16"),
                              has_words.tolist())
    return got


def copy_kept(out: OutputFile, source: bytes | Path, lengths: Sequence[int], dups: Sequence[int]) -> int:
    """Append the lines of ``source`` (bytes, or the file they are staged in) to ``out``, but the
    lines numbered in ``dups`` (sorted), runs of lines at a time; how many were copied."""
    if not lengths:
        return 0
    ends = list(accumulate(n + 1 for n in lengths))  # where each line ends, with the newline after it
    runs = []  # (start, end) of each run of kept lines
    first = 0  # the first line of the current run
    for d in [*dups, len(lengths)]:
        if d > first:
            runs.append((ends[first - 1] if first else 0, ends[d - 1]))
        first = d + 1
    if isinstance(source, bytes):
        view = memoryview(source)
        for start, end in runs:
            out.write(view[start:end])
    else:
        fd = os.open(source, os.O_RDONLY)
        try:
            for start, end in runs:
                out.append(fd, start, end - start)
        finally:
            os.close(fd)
    return len(lengths) - len(dups)


@dataclass
class Tally:
    """The counts the report gives."""

    records_in: int = 0
    records_out: int = 0
    changed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)    # per reason text
    redacted: Counter[str] = field(default_factory=Counter)   # replacements per kind, in kept records
    changes: Counter[str] = field(default_factory=Counter)    # kept records per kind of change

    def changed_record(self, changes: Mapping[str, int]) -> None:
        self.changed += 1
        for kind, n in changes.items():
            if kind in KINDS:
                self.redacted[kind] += n
            else:
                self.changes[kind] += 1
        if any(k in KINDS for k in changes):
            self.changes["redacted"] += 1


class Gather:
    """The parent's side: each block's result, in input order, into the outputs (see the module's documentation).

    ``out``: ``records.jsonl``; ``deduper``: None without deduplication.
    """

    def __init__(self, out: OutputFile, rejects: Rejects, changes: jsonl.Writer, deduper: Deduper | None,
                 staged: Path) -> None:
        self.out, self.rejects, self.changes, self.deduper, self.staged = out, rejects, changes, deduper, staged
        self.tally = Tally()

    def add(self, block: Block, got: CleanedBlock, before: int) -> None:
        """Take a block's result; ``before``: the lines of its file before it."""
        self.tally.records_in += got.records
        label = block.label
        wheres = [w if w.__class__ is not int else (label, "line", before + w)  # type: ignore[operator]
                  for w in got.wheres]
        verdicts: list[Duplicate | None] = []
        dups: list[int] = []  # kept records found to be duplicates
        if self.deduper is not None and wheres:
            import numpy as np

            near = got.near
            keys = np.frombuffer(got.keys, dtype="<u8") if got.keys is not None else None
            verdicts = self.deduper.check(keys, *(near or (None, None, None)), wheres)
            if verdicts.count(None) != len(verdicts):
                dups = [i for i, v in enumerate(verdicts) if v is not None]
        if got.kept is not None:
            self.tally.records_out += copy_kept(self.out, got.kept, got.lengths, dups)
        else:
            path = staged_file(self.staged, block)
            self.tally.records_out += copy_kept(self.out, path, got.lengths, dups)
            path.unlink()
        if got.changed:
            skip = set(dups)
            for i, changes in got.changed:
                if i not in skip:
                    self.tally.changed_record(changes)
                    source, unit, position = wheres[i]
                    self.changes.write({"source": source, unit: position, "changes": changes})
        if got.drops or dups:  # in input order: a drop comes before the kept record it precedes
            events = sorted([(d.before, 0, j) for j, d in enumerate(got.drops)] + [(i, 1, i) for i in dups])
            for _, is_dup, j in events:
                if is_dup:
                    self._duplicate(wheres[j], verdicts[j])
                else:
                    drop = got.drops[j]
                    where = drop.where if drop.where.__class__ is not int else (label, "line", before + drop.where)
                    self.tally.dropped[drop.reason.text] += 1
                    self.rejects.write(Provenance(*where), drop.reason.code, drop.reason.text,  # type: ignore[misc]
                                       **(drop.details or {}))

    def _duplicate(self, where: tuple[str, str, Any], dup: Duplicate | None) -> None:
        assert self.deduper is not None and dup is not None
        reason = EXACT if dup.kind == "exact" else NEAR
        self.tally.dropped[reason.text] += 1
        more = {"similarity": round(dup.similarity, 3)} if dup.kind == "near" else {}
        self.rejects.write(Provenance(*where), reason.code, reason.text, duplicate_of=self.deduper.origins[dup.of],
                           **more)
