"""split: deterministic, append-stable train / validation / test splits, checked for prompt leakage.

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

import contextlib
import functools
import hashlib
import json
import math
import shutil
import unicodedata
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tunepipe.data import fields
from tunepipe.data.jsonl import iter_lines
from tunepipe.data.parallel import ordered_map, worker_count
from tunepipe.errors import StageInputError, UserError
from tunepipe.plugins import Artifact, Port, StageContext

if TYPE_CHECKING:
    import numpy as np

SPLITS = ("train", "validation", "test")
TRAIN, VALIDATION, TEST, DROPPED = 0, 1, 2, 3
GROUP_BY_PROMPT = "@prompt"
MAX_STRATA = 10_000          # a stratum number is 2 bytes per example
MAX_FINDINGS = 20            # leaking prompts described in the report (all are counted)
MAX_OCCURRENCES = 10         # occurrences listed per described prompt
IN_MESSAGE = 5               # leaking prompts shown in a `leakage: fail` error
PARALLEL_MIN_BYTES = 32 << 20    # below this, worker processes cost more than they save
CHUNK_BYTES = 8 << 20
BLOCK = 1 << 20               # examples per step of the analysis (bounds its temporary arrays)
#: What format's hf-chat-template target derives from ``messages`` through a tokenizer: not part of
#: the key, so changing the tokenizer or its template does not move examples between splits.
DERIVED = frozenset({"text", "assistant_spans", "tokens"})
TOP = 2**64 - 1
LOW2 = ~3 & TOP

_SIZE_DOC = ("A ratio of the examples (a number below 1, e.g. 0.1) or a count (an integer, e.g. 50; "
             "with group_by, a number of groups). A ratio is applied by each example's own hash, so on a small "
             "set the share varies (0.3 of 90 examples can give 38, 42%); a count is exact.")
FAR_SDS = 2        # a ratio's realised count this many binomial standard deviations off gets a warning,
FAR_SHARE = 0.01   # when it is also this far off as a share (on large sets two deviations are a rounding error)


def _size(default: float | int, what: str) -> dict[str, Any]:
    return {"type": "number", "minimum": 0,
            "if": {"not": {"type": "integer"}}, "then": {"exclusiveMaximum": 1},  # a ratio is below 1
            "default": default, "description": f"{what} {_SIZE_DOC}"}


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


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def normalize(text: str) -> str:
    """NFC, casefolded, whitespace collapsed (leading and trailing whitespace removed)."""
    if text.isascii():
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold()).split())


def user_prompt(record: Mapping[str, Any]) -> str:
    """The normalized user prompt of a chat, DPO or prompt/completion record ("" when it has none).

    User turns are normalized one by one and joined with U+001F, so turn boundaries count.
    """
    messages = record.get("messages")
    if messages.__class__ is not list:
        given = record.get("input")
        messages = given.get("messages") if isinstance(given, dict) else None
        if not isinstance(messages, list):
            prompt = record.get("prompt")
            return normalize(prompt) if isinstance(prompt, str) else ""
    turns = []
    for m in messages:
        if m.__class__ is dict and m.get("role") == "user":
            content = m.get("content")
            turns.append(normalize(content if content.__class__ is str else _text(content)))
    return "\x1f".join(turns) if any(turns) else ""


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
    staged: str | None                  # folder for the examples without meta; None with keep_meta
    group_label: str = ""
    stratify_label: str = ""


def provenance(record: Any) -> str | None:
    """Where an example comes from, from its ``meta`` (``source:line``, as ingest records it), or None."""
    meta = record.get("meta") if isinstance(record, dict) else None
    if not isinstance(meta, dict) or meta.get("source") is None:
        return None
    return f"{meta['source']}:{meta['line']}" if meta.get("line") is not None else str(meta["source"])


class _Bad(Exception):
    """A problem with one example (its provenance is added by the caller)."""


def _field(record: dict[str, Any], path: tuple[str, ...], param: str, dotted: str) -> Any:
    value = fields.get(record, path)
    if value is fields.MISSING or value is None:
        why = "is null" if value is None else f"is missing: {fields.why_missing(record, path)}"
        raise _Bad(f"the {param} field '{dotted}' {why}. Every example needs a value there: add it to the "
                   f"records upstream (e.g. in ingest's meta), or choose a field every example has, "
                   f"or remove `{param}`")
    return value


def example_key(record: dict[str, Any], cfg: ScanConfig, prompt: str) -> bytes:
    """The bytes an example's split is decided by (``record`` with its ``meta``, which is not part of it)."""
    if cfg.by_prompt and prompt:
        return b"prompt\x00" + prompt.encode()
    if cfg.group_by is not None:
        return canonical(_field(record, cfg.group_by, "group_by", cfg.group_label))
    if "messages" in record and not DERIVED.isdisjoint(record):
        return canonical({k: v for k, v in record.items() if k != "meta" and k not in DERIVED})
    if "meta" in record:
        meta = record.pop("meta")
        try:
            return canonical(record)
        finally:
            record["meta"] = meta
    return canonical(record)


@dataclass(frozen=True)
class Chunk:
    """A byte range of one input file, cut at line ends: the unit of work of pass 1."""

    index: int
    path: Path
    label: str
    start: int
    end: int


def chunks(files: Sequence[Path], art: Artifact, size: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """Cut the files into chunks of about ``size`` bytes that end at a line end."""
    index = 0
    for path in files:
        total = path.stat().st_size
        with open(path, "rb") as f:
            start = 0
            while start < total:
                end = min(total, start + size)
                if end < total:
                    f.seek(end)
                    end += len(f.readline())
                yield Chunk(index, path, art.label(path), start, end)
                index += 1
                start = end


def read_chunk(chunk: Chunk) -> bytes:
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        data = f.read(chunk.end - chunk.start)
    return data[3:] if chunk.start == 0 and data.startswith(b"\xef\xbb\xbf") else data


def chunk_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number within the chunk, line) for each non-blank line, as :func:`jsonl.iter_lines` reads them."""
    for rel, raw in enumerate(data.split(b"\n"), start=1):
        if raw.endswith(b"\r"):
            raw = raw.rstrip(b"\r")
        if raw and not raw.isspace():
            yield rel, raw


@dataclass
class Scanned:
    """Pass 1's result for one chunk."""

    lines: int                          # physical lines in the chunk (for line numbers)
    keys: bytes                         # 8 bytes per example
    prompts: bytes                      # 8 bytes per example
    strata: list[bytes] | None          # the stratify_by value's canonical JSON per example
    error: tuple[int, str | None, str] | None = None  # (line in chunk, provenance from meta, message)


def scan(cfg: ScanConfig, chunk: Chunk) -> Scanned:
    """Parse a chunk's examples, hash their keys and prompts, and stage them without meta (in a worker)."""
    keys, prompts = bytearray(), bytearray()
    strata: list[bytes] | None = [] if cfg.stratify_by is not None else None
    salt, loads, dumps = cfg.salt, orjson.loads, orjson.dumps
    data = read_chunk(chunk)
    # staged lines go straight to a buffered file: holding them in a list costs more than writing them
    with contextlib.ExitStack() as stack:
        staged = stack.enter_context(open(Path(cfg.staged) / f"{chunk.index:06d}.jsonl", "wb", buffering=1 << 20)) \
            if cfg.staged is not None else None
        for rel, raw in chunk_lines(data):
            record: Any = None
            try:
                record = loads(raw)
                if record.__class__ is not dict:
                    raise _Bad(f"expected a JSON object, got {type(record).__name__}. The examples input must "
                               "hold one example object per line")
                prompt = user_prompt(record)
                keys += key_digest(example_key(record, cfg, prompt), salt)
                prompts += prompt_digest(prompt)
                if strata is not None:
                    strata.append(canonical(_field(record, cfg.stratify_by, "stratify_by", cfg.stratify_label)))
                if staged is not None:
                    if "meta" in record:
                        del record["meta"]
                    staged.write(dumps(record))
                    staged.write(b"\n")
            except orjson.JSONDecodeError as e:
                return Scanned(0, b"", b"", None, (rel, None, f"not valid JSON ({e}). The examples input must "
                                                              "be JSONL with one example per line, as the format "
                                                              "stage writes it"))
            except _Bad as e:
                return Scanned(0, b"", b"", None, (rel, provenance(record), str(e)))
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return Scanned(lines, bytes(keys), bytes(prompts), strata)


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
    import numpy as np

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


# ---------------------------------------------------------------------------------------------
# The stage

class Split:
    name = "split"
    version = "0.1.0"
    description = "Deterministic, append-stable train/validation/test split with a prompt-leakage check."
    params_schema: Mapping[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "validation": _size(0.1, "The validation split."),
            "test": _size(0, "The test split (0: none; test.jsonl is then empty)."),
            "seed": {"type": ["integer", "string"], "default": 0,
                     "description": "Salt of the hash that decides splits: change it to reshuffle deliberately."},
            "group_by": {"type": ["string", "null"], "default": None,
                         "pattern": fields.PATTERN,
                         "description": "A dotted path (e.g. meta.conversation_id): examples with the same value "
                                        "land in the same split; every example needs it. \"@prompt\" groups by "
                                        "normalized user prompt, which makes leaks impossible. Default: each "
                                        "example by its whole content (without meta)."},
            "stratify_by": {"type": ["string", "null"], "default": None, "pattern": fields.PATTERN,
                            "description": "A dotted path (e.g. meta.label): ratios apply within each value's "
                                           "examples, with exact quotas (see the stage's documentation)."},
            "leakage": {"enum": ["fail", "dedupe", "report"], "default": "fail",
                        "description": "An identical normalized user prompt in two splits: fail the stage, "
                                       "dedupe (keep the split of its first occurrence, drop the others), "
                                       "or report it only."},
            "keep_meta": {"type": "boolean", "default": False,
                          "description": "Keep each example's meta in the split files (false: the files are "
                                         "ready to upload to OpenAI)."},
            "allow_empty": {"type": "boolean", "default": False,
                            "description": "Let the stage succeed with an empty train split (no examples, or "
                                           "validation and test take them all). By default that fails the "
                                           "stage: there would be nothing to train on."},
        },
    }
    inputs = {"examples": Port("examples.jsonl from the format stage (or any JSONL of examples with meta)")}
    outputs = {"train": Port("train.jsonl"),
               "validation": Port("validation.jsonl"),
               "test": Port("test.jsonl (empty without a test split)"),
               "report": Port("report.json: counts per split and stratum, leakage findings, the parameters")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        validation, test = _sizes(ctx.stage, params)
        art: Artifact = inputs["examples"]
        files = _example_files(art)
        group_by, stratify_by, mode = params["group_by"], params["stratify_by"], params["leakage"]
        staged = ctx.scratch / "staged"
        shutil.rmtree(staged, ignore_errors=True)  # left by a crashed run of this key
        if not params["keep_meta"]:
            staged.mkdir(parents=True)
        cfg = ScanConfig(
            salt=seed_salt(params["seed"]),
            group_by=fields.parse(group_by) if group_by and group_by != GROUP_BY_PROMPT else None,
            by_prompt=group_by == GROUP_BY_PROMPT,
            stratify_by=fields.parse(stratify_by) if stratify_by else None,
            staged=None if params["keep_meta"] else str(staged),
            group_label=group_by or "", stratify_label=stratify_by or "")
        size = sum(p.stat().st_size for p in files)
        workers = worker_count(ctx.threads, ctx.engine) if size >= PARALLEL_MIN_BYTES else 1
        ctx.log.info("%d file(s), %d bytes, %d worker(s)", len(files), size, workers)

        try:
            u, ph, st, values = _pass1(ctx, cfg, files, art, workers)
            if st is not None and group_by:
                _check_groups_within_strata(u, st, files, art, group_by, stratify_by)
            distinct = sorted_distinct(u.copy())  # 8 bytes per example, freed before the leakage check
            n_keys = len(distinct)
            split, key_counts = assign(u, st, len(values), _rank([canonical(v) for v in values]), validation, test,
                                       distinct)
            del distinct
            leaks = find_leaks(ph, split)
            findings = _findings(leaks, ph, split, files, art, mode) if leaks.prompts else []
            if leaks.prompts and mode == "fail":
                raise StageInputError(_leak_message(leaks, findings))
            if mode == "dedupe":
                split[leaks.dropped] = DROPPED
            counts = np.bincount(split, minlength=4)
            if not counts[TRAIN] and not params.get("allow_empty", False):
                raise StageInputError(_empty_train(art, len(u), counts, validation, test,
                                                   len(leaks.dropped) if mode == "dedupe" else 0))
            _pass2(ctx, split, sorted(staged.iterdir()) if cfg.staged else None, files, art)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

        summary: dict[str, int] = {"train": int(counts[TRAIN]), "validation": int(counts[VALIDATION]),
                                   "test": int(counts[TEST]), "leaks": leaks.prompts}
        warnings = _warnings(len(u), summary, validation, test)
        if st is None:
            warnings += _far_ratios(summary, validation, test, n_keys, grouped=bool(group_by))
        for w in warnings:
            ctx.say(w)
        if warnings:
            summary["warnings"] = len(warnings)
        report = {
            "parameters": dict(params),
            "examples": len(u),
            "keys": n_keys,
            "splits": {name: int(counts[s]) for s, name in enumerate(SPLITS)},
            "strata": _strata_report(values, st, split, key_counts) if st is not None else None,
            "leakage": {
                "mode": mode,
                "prompts": leaks.prompts,
                "examples": len(leaks.examples),
                "dropped": len(leaks.dropped) if mode == "dedupe" else 0,
                "without_prompt": int(np.count_nonzero(ph == 0)),
                "findings": findings,
            },
            "warnings": warnings,
            "method": "see the documentation of tunepipe.stages.split; key hash: BLAKE2b-64 salted with the seed",
        }
        (ctx.output("report") / "report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        ctx.log.info("%d examples: %s, %d dropped", len(u), summary, report["leakage"]["dropped"])
        return summary


def _pass1(ctx: StageContext, cfg: ScanConfig, files: list[Path], art: Artifact,
           workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[Any]]:
    """Hash every example's key and prompt (and stage it without meta): the per-example arrays."""
    import numpy as np

    keys, prompts, strata = bytearray(), bytearray(), array("H")
    names: dict[bytes, int] = {}
    base: dict[Path, int] = {}          # physical lines of a file before the current chunk
    todo = list(chunks(files, art))
    # same_node: a chunk is a byte range of a file on this node, and scan stages into this node's scratch
    for chunk, got in zip(todo, ordered_map(functools.partial(scan, cfg), todo, workers, engine=ctx.engine,
                                            same_node=True)):
        first = base.get(chunk.path, 0)
        if got.error is not None:
            rel, place, message = got.error
            raise StageInputError(f"{place or f'{chunk.label}:{first + rel}'}: {message}")
        base[chunk.path] = first + got.lines
        keys += got.keys
        prompts += got.prompts
        for value in got.strata or ():
            sid = names.setdefault(value, len(names))
            if sid >= MAX_STRATA:
                raise StageInputError(
                    f"{art.name or 'examples'}: stratify_by '{cfg.stratify_label}' has more than {MAX_STRATA:,} "
                    "distinct values; stratify by a category (a label, a source), not by an identifier")
            strata.append(sid)
        ctx.check_cancelled()
        ctx.progress(f"{len(keys) // 8:,} examples hashed")
    u = np.frombuffer(keys, dtype="<u8") if keys else np.zeros(0, dtype=np.uint64)
    ph = np.frombuffer(prompts, dtype="<u8") if prompts else np.zeros(0, dtype=np.uint64)
    ph &= np.uint64(LOW2)  # the two low bits carry the split in find_leaks
    st = (np.frombuffer(strata, dtype=np.uint16) if strata else np.zeros(0, dtype=np.uint16)) \
        if cfg.stratify_by is not None else None
    return u, ph, st, [orjson.loads(v) for v in names]


def _pass2(ctx: StageContext, split: np.ndarray, staged: list[Path] | None, files: list[Path],
           art: Artifact) -> None:
    """Copy each example's line into its split's file, in input order (no parsing)."""
    import numpy as np

    outs = [open(ctx.output(name) / f"{name}.jsonl", "wb", buffering=1 << 20) for name in SPLITS]
    try:
        if staged is not None:
            blocks: Iterator[list[bytes]] = (p.read_bytes().split(b"\n")[:-1] for p in staged)
        else:
            blocks = ([raw for _, raw in chunk_lines(read_chunk(c))] for c in chunks(files, art))
        done = 0
        for lines in blocks:
            where = split[done:done + len(lines)]
            done += len(lines)
            for s, out in enumerate(outs):
                picked = np.flatnonzero(where == s).tolist()
                if picked:
                    out.write(b"\n".join([lines[i] for i in picked]) + b"\n")
            ctx.check_cancelled()
        if done != len(split):
            raise RuntimeError(f"pass 2 read {done} examples, pass 1 {len(split)}: the input changed")
    finally:
        for out in outs:
            out.close()


def _sizes(stage: str, params: Mapping[str, Any]) -> tuple[Size, Size]:
    validation, test = Size(params["validation"]), Size(params["test"])
    for name, s in (("validation", validation), ("test", test)):
        if not s.is_count and s.value >= 1:
            raise UserError(f"stage '{stage}': parameter {name} is {s.value}: a ratio must be below 1; "
                            f"write an integer without a decimal point (e.g. {int(s.value)}) for a count")
    ratios = [s.value for s in (validation, test) if not s.is_count]
    if sum(ratios) >= 1:
        raise UserError(f"stage '{stage}': validation + test ratios add up to {sum(ratios):g}, which leaves "
                        "nothing for train; make their sum below 1 (e.g. validation: 0.1, test: 0.1)")
    return validation, test


def _example_files(art: Artifact) -> list[Path]:
    """The input's JSONL: the file itself, a folder's ``examples.jsonl``, or else its ``*.jsonl`` files, sorted."""
    if art.path.is_file():
        return [art.path]
    if (art.path / "examples.jsonl").is_file():
        return [art.path / "examples.jsonl"]
    files = [p for p in art.files() if p.name.endswith(".jsonl")]
    if not files:
        raise StageInputError(f"{art.name or art.path}: holds no .jsonl file; connect the format stage's "
                              "examples output (or a JSONL file of examples) to the input 'examples'")
    return files


def _rank(names: list[bytes]) -> list[int]:
    """Each stratum's rank in the order of its canonical JSON (the tie-break of count allocation)."""
    rank = [0] * len(names)
    for r, i in enumerate(sorted(range(len(names)), key=names.__getitem__)):
        rank[i] = r
    return rank


def _locate(files: list[Path], art: Artifact, wanted: set[int]) -> dict[int, tuple[str, dict[str, Any]]]:
    """Provenance and record of the examples at the given indices (reads up to the last one)."""
    out: dict[int, tuple[str, dict[str, Any]]] = {}
    last = max(wanted, default=-1)
    i = -1
    for p in files:
        label = art.label(p)
        for lineno, raw in iter_lines(p):
            i += 1
            if i > last:
                return out
            if i in wanted:
                record = orjson.loads(raw)
                out[i] = (provenance(record) or f"{label}:{lineno}", record)
    return out


def _check_groups_within_strata(u: np.ndarray, st: np.ndarray, files: list[Path], art: Artifact,
                                group_by: str, stratify_by: str) -> None:
    import numpy as np

    order = np.argsort(u, kind="stable")
    su, sst = u[order], st[order]
    bad = np.flatnonzero((su[1:] == su[:-1]) & (sst[1:] != sst[:-1]))
    if not len(bad):
        return
    a, b = sorted((int(order[bad[0]]), int(order[bad[0] + 1])))
    found = _locate(files, art, {a, b})
    raise StageInputError(
        f"{found[b][0]}: this example's group (group_by '{group_by}') is also in {found[a][0]}, but the two "
        f"have different '{stratify_by}' values, and a group must lie in one stratum to stay together. "
        "Give a group's examples the same stratum value, or drop stratify_by or group_by")


def _findings(leaks: Leaks, ph: np.ndarray, split: np.ndarray, files: list[Path], art: Artifact,
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
    found = _locate(files, art, set(wanted))
    out = []
    for n, first in enumerate(chosen.tolist()):
        record = found[first][1]
        messages = record.get("messages") or (record.get("input") or {}).get("messages") or []
        text = " / ".join(_text(m.get("content")) for m in messages if isinstance(m, dict)
                          and m.get("role") == "user") or str(record.get("prompt", ""))
        out.append({
            "prompt": text if len(text) <= 120 else text[:117] + "...",
            "splits": totals[n],
            "occurrences": [{"where": found[i][0], "split": SPLITS[int(split[i])],
                             **({"action": "dropped" if i in dropped else "kept"} if mode == "dedupe" else {})}
                            for i in sorted(i for i, m in wanted.items() if m == n)],
        })
    return out


def _leak_message(leaks: Leaks, findings: list[dict[str, Any]]) -> str:
    n = leaks.prompts
    lines = [f"{n} user prompt{'s' if n != 1 else ''} appear{'s' if n == 1 else ''} in more than one split "
             f"({len(leaks.examples)} examples):"]
    for f in findings[:IN_MESSAGE]:
        places = "; ".join(f"{o['split']} {o['where']}" for o in f["occurrences"][:4])
        lines.append(f"  {json.dumps(f['prompt'], ensure_ascii=False)}: {places}")
    if n > IN_MESSAGE:
        lines.append(f"  ... and {n - IN_MESSAGE} more")
    lines.append("Fix: remove the repeated prompts upstream (clean's deduplication), or keep them in one split "
                 "with `group_by: \"@prompt\"`, or set `leakage: dedupe` to drop the copies outside the split "
                 "of each prompt's first occurrence, or `leakage: report` to accept them")
    return "\n".join(lines)


def _strata_report(values: list[Any], st: np.ndarray, split: np.ndarray, key_counts: list[int]) -> list[dict]:
    import numpy as np

    table = np.bincount(st.astype(np.int64) * 4 + split, minlength=4 * len(values)).reshape(-1, 4)
    rows = [{"value": v, "keys": key_counts[s], **{name: int(table[s, k]) for k, name in enumerate(SPLITS)},
             "dropped": int(table[s, DROPPED])} for s, v in enumerate(values)]
    return sorted(rows, key=lambda r: canonical(r["value"]))


def _empty_train(art: Artifact, n: int, counts: np.ndarray, validation: Size, test: Size, dropped: int) -> str:
    """Why train would be empty, and what to do."""
    name = art.name or str(art.path)
    if not n:
        return (f"{name} holds no examples, so every split would be empty: fix the stage or file that feeds split, "
                "or set `allow_empty: true` on this stage to write empty splits")
    taken = f"validation: {validation.value} takes {int(counts[VALIDATION]):,}"
    if test.value:
        taken += f" and test: {test.value} takes {int(counts[TEST]):,}"
    if dropped:
        taken += f" (leakage: dedupe dropped {dropped:,})"
    return (f"train would be empty: {taken} of the {n:,} example{'s' if n != 1 else ''} in {name}, leaving nothing to "
            "train on. Ask for less (a smaller count, such as validation: 1, or a smaller ratio), add examples, or "
            "set `allow_empty: true` on this stage")


def far_ratio(name: str, size: Size, got: int, n: int, keys: int, grouped: bool) -> str | None:
    """A warning when a ratio's realised count of ``n`` examples is far from what it asks, naming the count.

    Far: more than FAR_SDS standard deviations of the binomial count a fair hash gives (by chance
    about 5 % of the time) and at least FAR_SHARE off as a share, so that large sets stay quiet.
    An empty split has its own warning (:func:`_warnings`).
    """
    p = float(size.value)
    if size.is_count or not p or not got or not n:
        return None
    expected = n * p
    if abs(got - expected) <= FAR_SDS * math.sqrt(expected * (1 - p)) or abs(got / n - p) < FAR_SHARE:
        return None
    per, unit = ("per-group", " groups") if grouped else ("per-example", "")
    count = size.quota(keys if grouped else n)
    return (f"{name} is {got:,} of {n:,} examples ({got / n:.0%}) for {name}: {p:g} — ratios are {per} hashes, so "
            f"small sets vary; for exactly {count:,}{unit} use {name}: {count}")


def _far_ratios(summary: Mapping[str, int], validation: Size, test: Size, keys: int, grouped: bool) -> list[str]:
    n = summary["train"] + summary["validation"] + summary["test"]
    found = (far_ratio(name, size, summary[name], n, keys, grouped)
             for name, size in (("validation", validation), ("test", test)))
    return [w for w in found if w]


def _warnings(n: int, summary: Mapping[str, int], validation: Size, test: Size) -> list[str]:
    out = []
    if n == 0:
        return ["the input holds no examples: every split is empty"]
    if summary["train"] == 0:
        out.append("train is empty: lower validation/test")
    for name, size in (("validation", validation), ("test", test)):
        if size.value and summary[name] == 0:
            hint = (f"a ratio of {size.value} on {n} examples often picks none; ask for a count "
                    f"(e.g. {name}: 1)" if not size.is_count else "")
            out.append(f"{name} is empty" + (f": {hint}" if hint else ""))
    return out
