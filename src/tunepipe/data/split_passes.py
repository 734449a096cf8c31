"""The split stage's passes over its input files (the decisions are :mod:`tunepipe.data.splitting`'s).

* Pass 1, in the workers: :func:`scan` parses a block of lines (:mod:`tunepipe.data.blocks`),
  hashes each example's key and prompt, and without ``keep_meta`` stages the example without
  ``meta`` to a scratch file; in the parent, :class:`Hashes` gathers the blocks' hashes, in input
  order, into the per-example arrays the assignment works on.
* Pass 2: :func:`write_splits` copies each example's line into its split's file, from the staged
  files (:func:`staged_lines`) or the input again (:func:`input_lines`), without parsing.
* With bands (ratios, no strata, no ``leakage: dedupe``: :func:`~tunepipe.data.splitting.direct_bands`)
  each example's split is known in pass 1, so there is no pass 2: the workers write each block's
  lines to one part per split, and the parent appends them (:func:`append_parts`) while later
  blocks are still being read. The default split of the format stage's examples takes this path.
* :func:`locate` finds examples by index again, for the messages and the report's findings.
"""

from __future__ import annotations

import contextlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

import orjson

from tunepipe.data.blocks import Block, count_lines, cut, file_lines
from tunepipe.data.outfile import OutputFile
from tunepipe.data.record import Provenance, prompt_text, user_prompt
from tunepipe.data.splitting import (LOW2, SPLITS, BadExample, Leaks, ScanConfig, band_split, canonical, example_key,
                                     key_digest, prompt_digest, required_field)
from tunepipe.errors import StageInputError

if TYPE_CHECKING:
    import numpy as np

    from tunepipe.plugins import Artifact

MAX_STRATA = 10_000          # a stratum number is 2 bytes per example
MAX_FINDINGS = 20            # leaking prompts described in the report (all are counted)
MAX_OCCURRENCES = 10         # occurrences listed per described prompt


class BadLine(NamedTuple):
    """The first example of a block that split cannot use: its line in the block, where its meta
    says it comes from (None: name the line of the input), and why."""

    line: int
    where: Provenance | None
    message: str


@dataclass
class Scanned:
    """Pass 1's result for one block."""

    lines: int                          # physical lines in the block (for line numbers)
    keys: bytes                         # 8 bytes per example
    prompts: bytes                      # 8 bytes per example
    strata: list[bytes] | None          # the stratify_by value's canonical JSON per example
    error: BadLine | None = None
    written: tuple[int, int, int] | None = None  # with bands: the lines written to each split's part


def part_path(folder: str | Path, index: int, split: int | None = None) -> Path:
    """Where a block's worker writes: its staged examples, or (with bands) one split's lines."""
    return Path(folder) / (f"{index:06d}.jsonl" if split is None else f"{index:06d}.{split}.jsonl")


def scan(cfg: ScanConfig, block: Block) -> Scanned:
    """Parse a block's examples and hash their keys and prompts (in a worker); stage them without
    meta, or, with bands, write each to its split's part."""
    keys, prompts = bytearray(), bytearray()
    strata: list[bytes] | None = [] if cfg.stratify_by is not None else None
    salt, loads, dumps, bands, raw_lines = cfg.salt, orjson.loads, orjson.dumps, cfg.bands, cfg.keep_meta
    written = [0, 0, 0]
    data = block.read()
    # lines go straight to buffered files: holding them in a list costs more than writing them
    with _Parts(cfg, block.index) as parts:
        for rel, raw in block.lines(data):
            record: Any = None
            try:
                record = loads(raw)
                if record.__class__ is not dict:
                    raise BadExample(f"expected a JSON object, got {type(record).__name__}. The examples input "
                                     "must hold one example object per line")
                prompt = user_prompt(record)
                digest = key_digest(example_key(record, cfg, prompt), salt)
                keys += digest
                prompts += prompt_digest(prompt)
                if strata is not None:
                    strata.append(canonical(required_field(record, cfg.stratify_by, "stratify_by",
                                                           cfg.stratify_label)))
                if parts.folder is not None:
                    s = 0 if bands is None else band_split(int.from_bytes(digest, "little"), bands)
                    if raw_lines:
                        line = raw
                    else:
                        if "meta" in record:
                            del record["meta"]
                        line = dumps(record)
                    out = parts.file(s)
                    out.write(line)
                    out.write(b"\n")
                    written[s] += 1
            except orjson.JSONDecodeError as e:
                return Scanned(0, b"", b"", None, BadLine(rel, None, f"not valid JSON ({e}). The examples input "
                                                                     "must be JSONL with one example per line, "
                                                                     "as the format stage writes it"))
            except BadExample as e:
                where = Provenance.of(record)
                return Scanned(0, b"", b"", None, BadLine(rel, where if where and where.unit else None, str(e)))
    return Scanned(count_lines(data), bytes(keys), bytes(prompts), strata,
                   written=tuple(written) if bands is not None else None)  # type: ignore[arg-type]


class _Parts(contextlib.AbstractContextManager["_Parts"]):
    """A block's files in ``cfg.staged``, opened when first written: one (staged examples) or,
    with bands, one per split."""

    def __init__(self, cfg: ScanConfig, index: int) -> None:
        self.folder, self.index, self.by_split = cfg.staged, index, cfg.bands is not None
        self._files: dict[int, BinaryIO] = {}

    def file(self, split: int) -> BinaryIO:
        key = split if self.by_split else 0
        f = self._files.get(key)
        if f is None:
            assert self.folder is not None
            f = self._files[key] = open(part_path(self.folder, self.index, split if self.by_split else None), "wb",
                                        buffering=1 << 20)
        return f

    def __exit__(self, *exc: object) -> None:
        for f in self._files.values():
            f.close()


class Hashes:
    """Pass 1's per-example arrays, gathered from the blocks' results in input order."""

    def __init__(self, cfg: ScanConfig, input_name: str) -> None:
        self.cfg, self.input_name = cfg, input_name
        self.keys, self.prompts, self.strata = bytearray(), bytearray(), array("H")
        self.written = [0, 0, 0]  # with bands: the lines the workers wrote to each split
        self.names: dict[bytes, int] = {}  # each stratum value's canonical JSON -> its number

    @property
    def count(self) -> int:
        return len(self.keys) // 8

    def add(self, got: Scanned) -> None:
        self.keys += got.keys
        for s, n in enumerate(got.written or ()):
            self.written[s] += n
        self.prompts += got.prompts
        for value in got.strata or ():
            sid = self.names.setdefault(value, len(self.names))
            if sid >= MAX_STRATA:
                raise StageInputError(
                    f"{self.input_name}: stratify_by '{self.cfg.stratify_label}' has more than {MAX_STRATA:,} "
                    "distinct values; stratify by a category (a label, a source), not by an identifier")
            self.strata.append(sid)

    def arrays(self) -> Hashed:
        """The per-example arrays. Call it once, after the last :meth:`add`: they are views of the
        bytes gathered, not copies."""
        import numpy as np

        u = np.frombuffer(self.keys, dtype="<u8") if self.keys else np.zeros(0, dtype=np.uint64)
        ph = np.frombuffer(self.prompts, dtype="<u8") if self.prompts else np.zeros(0, dtype=np.uint64)
        ph &= np.uint64(LOW2)  # the two low bits carry the split in find_leaks
        st = (np.frombuffer(self.strata, dtype=np.uint16) if self.strata else np.zeros(0, dtype=np.uint16)) \
            if self.cfg.stratify_by is not None else None
        return Hashed(u, ph, st, [orjson.loads(v) for v in self.names], self.written)


class Hashed(NamedTuple):
    """Pass 1's result: per example, in input order, its key hash, prompt hash and stratum."""

    u: np.ndarray                # key hash (uint64)
    ph: np.ndarray               # prompt hash with the two low bits clear; 0: no prompt
    st: np.ndarray | None        # stratum number (uint16), with stratify_by
    values: list[Any]            # each stratum's value, by number
    written: list[int]           # with bands: the lines the workers wrote to each split


def staged_lines(staged: Path) -> Iterator[list[bytes]]:
    """The examples pass 1 staged without meta, a block's lines at a time, in input order."""
    return (p.read_bytes().split(b"\n")[:-1] for p in sorted(staged.iterdir()))


def input_lines(art: Artifact, files: Sequence[Path]) -> Iterator[list[bytes]]:
    """The input's examples as they are, a block's lines at a time."""
    return ([raw for _, raw in block.lines()] for block in cut(art, files))


def write_splits(outs: Sequence[OutputFile], split: np.ndarray, blocks: Iterable[list[bytes]],
                 tick: Callable[[], None] = lambda: None) -> None:
    """Copy each example's line into ``outs[s]``, the file of its split ``s``, in input order;
    ``tick`` runs after each block (to stop when the run is cancelled)."""
    import numpy as np

    done = 0
    for lines in blocks:
        where = split[done:done + len(lines)]
        done += len(lines)
        for s, out in enumerate(outs):
            picked = np.flatnonzero(where == s).tolist()
            if picked:
                out.write(b"\n".join([lines[i] for i in picked]))
                out.write(b"\n")
        tick()
    if done != len(split):
        raise RuntimeError(f"pass 2 read {done} examples, pass 1 {len(split)}: the input changed")


def append_parts(outs: Sequence[OutputFile], folder: str | Path, index: int, written: Sequence[int]) -> None:
    """Append block ``index``'s split parts (written with bands) to the splits' files, and remove them."""
    for s, n in enumerate(written):
        if n:
            outs[s].append(part_path(folder, index, s), remove=True)


class Located(NamedTuple):
    """An example found again by its index: where it comes from, and the record."""

    where: Provenance
    record: dict[str, Any]


def locate(art: Artifact, files: Sequence[Path], wanted: set[int]) -> dict[int, Located]:
    """The examples at the given indices (reads up to the last one)."""
    out: dict[int, Located] = {}
    last = max(wanted, default=-1)
    i = -1
    for p in files:
        label = art.label(p)
        for lineno, raw in file_lines(p):
            i += 1
            if i > last:
                return out
            if i in wanted:
                record = orjson.loads(raw)
                out[i] = Located(Provenance.located(record, label, lineno), record)
    return out


def check_groups_within_strata(u: np.ndarray, st: np.ndarray, art: Artifact, files: Sequence[Path],
                               group_by: str, stratify_by: str) -> None:
    """Raise when two examples share a group (a key hash) but not a stratum, naming both."""
    import numpy as np

    order = np.argsort(u, kind="stable")
    su, sst = u[order], st[order]
    bad = np.flatnonzero((su[1:] == su[:-1]) & (sst[1:] != sst[:-1]))
    if not len(bad):
        return
    a, b = sorted((int(order[bad[0]]), int(order[bad[0] + 1])))
    found = locate(art, files, {a, b})
    raise StageInputError(
        f"{found[b].where}: this example's group (group_by '{group_by}') is also in {found[a].where}, but the two "
        f"have different '{stratify_by}' values, and a group must lie in one stratum to stay together. "
        "Give a group's examples the same stratum value, or drop stratify_by or group_by")


def findings(leaks: Leaks, ph: np.ndarray, split: np.ndarray, art: Artifact, files: Sequence[Path],
             mode: str) -> list[dict[str, Any]]:
    """The first MAX_FINDINGS leaking prompts (by first occurrence), with where they occur."""
    import numpy as np

    chosen = leaks.first[:MAX_FINDINGS]
    dropped = set(leaks.dropped.tolist()) if mode == "dedupe" else set()
    wanted: dict[int, int] = {}
    totals = []
    for n, first in enumerate(chosen.tolist()):
        same = leaks.examples[ph[leaks.examples] == ph[first]]
        totals.append({SPLITS[s]: int(c) for s, c in enumerate(np.bincount(split[same], minlength=3)) if c})
        for i in same[:MAX_OCCURRENCES].tolist():
            wanted[i] = n
    found = locate(art, files, set(wanted))
    out = []
    for n, first in enumerate(chosen.tolist()):
        text = prompt_text(found[first].record)
        out.append({
            "prompt": text if len(text) <= 120 else text[:117] + "...",
            "splits": totals[n],
            "occurrences": [{"where": str(found[i].where), "split": SPLITS[int(split[i])],
                             **({"action": "dropped" if i in dropped else "kept"} if mode == "dedupe" else {})}
                            for i in sorted(i for i, m in wanted.items() if m == n)],
        })
    return out
