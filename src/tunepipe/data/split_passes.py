"""The split stage's passes over its input files (the decisions are :mod:`tunepipe.data.splitting`'s).

* Pass 1, in the workers: :func:`scan` parses a block of lines (:mod:`tunepipe.data.blocks`),
  hashes each example's key and prompt, and without ``keep_meta`` stages the example without
  ``meta`` to a scratch file; in the parent, :class:`Hashes` gathers the blocks' hashes, in input
  order, into the per-example arrays the assignment works on.
* Pass 2: :func:`write_splits` copies each example's line into its split's file, from the staged
  files (:func:`staged_lines`) or the input again (:func:`input_lines`), without parsing.
* :func:`locate` finds examples by index again, for the messages and the report's findings.
"""

from __future__ import annotations

import contextlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from tunepipe.data.blocks import Block, count_lines, cut, file_lines
from tunepipe.data.record import Provenance, prompt_text, user_prompt
from tunepipe.data.splitting import (LOW2, SPLITS, BadExample, Leaks, ScanConfig, canonical, example_key,
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


def scan(cfg: ScanConfig, block: Block) -> Scanned:
    """Parse a block's examples, hash their keys and prompts, and stage them without meta (in a worker)."""
    keys, prompts = bytearray(), bytearray()
    strata: list[bytes] | None = [] if cfg.stratify_by is not None else None
    salt, loads, dumps = cfg.salt, orjson.loads, orjson.dumps
    data = block.read()
    # staged lines go straight to a buffered file: holding them in a list costs more than writing them
    with contextlib.ExitStack() as stack:
        staged = stack.enter_context(open(Path(cfg.staged) / f"{block.index:06d}.jsonl", "wb", buffering=1 << 20)) \
            if cfg.staged is not None else None
        for rel, raw in block.lines(data):
            record: Any = None
            try:
                record = loads(raw)
                if record.__class__ is not dict:
                    raise BadExample(f"expected a JSON object, got {type(record).__name__}. The examples input "
                                     "must hold one example object per line")
                prompt = user_prompt(record)
                keys += key_digest(example_key(record, cfg, prompt), salt)
                prompts += prompt_digest(prompt)
                if strata is not None:
                    strata.append(canonical(required_field(record, cfg.stratify_by, "stratify_by",
                                                           cfg.stratify_label)))
                if staged is not None:
                    if "meta" in record:
                        del record["meta"]
                    staged.write(dumps(record))
                    staged.write(b"\n")
            except orjson.JSONDecodeError as e:
                return Scanned(0, b"", b"", None, BadLine(rel, None, f"not valid JSON ({e}). The examples input "
                                                                     "must be JSONL with one example per line, "
                                                                     "as the format stage writes it"))
            except BadExample as e:
                where = Provenance.of(record)
                return Scanned(0, b"", b"", None, BadLine(rel, where if where and where.unit else None, str(e)))
    return Scanned(count_lines(data), bytes(keys), bytes(prompts), strata)


class Hashes:
    """Pass 1's per-example arrays, gathered from the blocks' results in input order."""

    def __init__(self, cfg: ScanConfig, input_name: str) -> None:
        self.cfg, self.input_name = cfg, input_name
        self.keys, self.prompts, self.strata = bytearray(), bytearray(), array("H")
        self.names: dict[bytes, int] = {}  # each stratum value's canonical JSON -> its number

    @property
    def count(self) -> int:
        return len(self.keys) // 8

    def add(self, got: Scanned) -> None:
        self.keys += got.keys
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
        return Hashed(u, ph, st, [orjson.loads(v) for v in self.names])


class Hashed(NamedTuple):
    """Pass 1's result: per example, in input order, its key hash, prompt hash and stratum."""

    u: np.ndarray                # key hash (uint64)
    ph: np.ndarray               # prompt hash with the two low bits clear; 0: no prompt
    st: np.ndarray | None        # stratum number (uint16), with stratify_by
    values: list[Any]            # each stratum's value, by number


def staged_lines(staged: Path) -> Iterator[list[bytes]]:
    """The examples pass 1 staged without meta, a block's lines at a time, in input order."""
    return (p.read_bytes().split(b"\n")[:-1] for p in sorted(staged.iterdir()))


def input_lines(art: Artifact, files: Sequence[Path]) -> Iterator[list[bytes]]:
    """The input's examples as they are, a block's lines at a time."""
    return ([raw for _, raw in block.lines()] for block in cut(art, files))


def write_splits(folders: Sequence[Path], split: np.ndarray, blocks: Iterable[list[bytes]],
                 tick: Callable[[], None] = lambda: None) -> None:
    """Copy each example's line into ``folders[s]/{name}.jsonl`` of its split ``s``, in input order;
    ``tick`` runs after each block (to stop when the run is cancelled)."""
    import numpy as np

    outs = [open(folder / f"{name}.jsonl", "wb", buffering=1 << 20) for folder, name in zip(folders, SPLITS)]
    try:
        done = 0
        for lines in blocks:
            where = split[done:done + len(lines)]
            done += len(lines)
            for s, out in enumerate(outs):
                picked = np.flatnonzero(where == s).tolist()
                if picked:
                    out.write(b"\n".join([lines[i] for i in picked]) + b"\n")
            tick()
        if done != len(split):
            raise RuntimeError(f"pass 2 read {done} examples, pass 1 {len(split)}: the input changed")
    finally:
        for out in outs:
            out.close()


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
