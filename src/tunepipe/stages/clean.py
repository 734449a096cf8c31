"""clean: normalize, redact, filter and deduplicate chat records, accounting for every change.

Reads the ``records`` artifact of ``ingest`` (chat records with ``messages``, or DPO records with
``input``/``preferred_output``/``non_preferred_output``; a JSONL file given directly works too) and
writes:

* ``records/records.jsonl``: the kept records, cleaned, in input order, ``meta`` unchanged;
* ``rejects/rejects.jsonl``: one line per dropped record: ``{"source", "line"|"row"|"index",
  "reason"}`` as in its ``meta`` (else this input's file and line), plus ``duplicate_of``
  (``source:line`` of the kept record) and ``similarity`` for duplicates, ``tokens`` and the
  limit for the length filters;
* ``report/report.json``: records in and out, dropped per reason, replacements per redaction
  kind, kept records per kind of change, the dedupe settings and index size;
  ``report/changes.jsonl``: one line per kept record that changed, with what changed (texts per
  normalization, ``empty_turns`` dropped, replacements per redaction kind).

Per record, in worker processes (``ordered_map``, a block of about 1 MiB of raw lines at a time,
the kept lines coming back joined): every text is normalized (:mod:`tunepipe.data.normalize`) and
redacted (:mod:`tunepipe.data.pii`), tool-call arguments are redacted; empty system, user and
assistant turns are dropped (tool results stay: their call needs an answer); a conversation without
an assistant reply is rejected, a DPO record with an empty prompt or output or two identical
outputs too; the token filters apply (OpenAI's count, :mod:`tunepipe.data.tokens`); the dedupe
fingerprints are computed (:mod:`tunepipe.data.dedupe`). A plain chat record whose line is ASCII
without escapes (the common case) takes a fused path that gives the same result with a fraction of
the work (:meth:`_Worker.plain`). In this process, in input order: exact and near-duplicate
membership, so the first occurrence is kept and the output is the same for any number of workers.
Memory stays flat apart from the dedupe index, which ``max_index`` bounds.

No record left (an empty input, or every record dropped) fails the stage with the count per reason
and what to change, unless ``allow_empty: true``: the stages after it cannot use an empty data set.
"""
from __future__ import annotations

import contextlib
import hashlib
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from itertools import accumulate
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunepipe.data import jsonl
from tunepipe.data.normalize import FORMS, TextCleaner, dedupe_form, flag_names
from tunepipe.data.parallel import ordered_map, worker_count
from tunepipe.data.pii import KINDS, Redactor
from tunepipe.data.tokens import OFFLINE_ENCODINGS
from tunepipe.errors import StageInputError, UserError
from tunepipe.plugins import Artifact, Port, StageContext

if TYPE_CHECKING:  # numpy and the dedupe index load when the stage runs, not to plan a cached rerun
    from tunepipe.data.dedupe import Deduper, Duplicate

# Reasons a record is dropped (the keys of report.json's "dropped_by_reason").
EMPTY = "empty conversation"
NO_ASSISTANT = "no assistant reply"
EMPTY_PROMPT = "empty prompt"
EMPTY_PREFERRED = "empty preferred output"
EMPTY_NON_PREFERRED = "empty non-preferred output"
SAME_OUTPUTS = "preferred and non-preferred outputs are identical"
TOO_SHORT = "too few tokens"
TOO_LONG = "too many tokens"
EXACT = "exact duplicate"
NEAR = "near duplicate"

POSITION_KEYS = ("line", "row", "index")
_TEXT_ROLES = ("system", "user", "assistant")

PARAMS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "unicode_form": {"enum": list(FORMS), "default": "NFC",
                         "description": "Unicode normalization of every text: NFC (compose), NFKC (also fold "
                                        "compatibility forms such as full-width letters), or none."},
        "whitespace": {"type": "boolean", "default": True,
                       "description": "Trim each turn, remove trailing spaces, collapse runs of spaces and tabs "
                                      "inside lines (indentation and fenced code blocks are kept)."},
        "max_blank_lines": {"type": "integer", "minimum": 0, "default": 1,
                            "description": "Longer runs of blank lines shrink to this many (with whitespace: true)."},
        "redact": {"type": "array", "items": {"enum": list(KINDS)}, "uniqueItems": True, "default": list(KINDS),
                   "description": "Kinds of personal data and secrets replaced with [EMAIL], [PHONE], "
                                  "[CREDIT_CARD] (Luhn-checked) and [SECRET]; [] turns redaction off."},
        "min_tokens": {"type": ["integer", "null"], "minimum": 0, "default": None,
                       "description": "Drop examples with fewer tokens (OpenAI's count: messages, tools, priming)."},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "default": None,
                       "description": "Drop examples with more tokens (e.g. the model's training context)."},
        "encoding": {"enum": [None, *OFFLINE_ENCODINGS], "default": None,
                     "description": "tiktoken encoding for the token limits; default: the model's, else o200k_base."},
        "model": {"type": ["string", "null"], "default": None,
                  "description": "OpenAI model whose encoding counts tokens (e.g. gpt-4o-mini-2024-07-18)."},
        "dedupe": {"enum": ["none", "exact", "near"], "default": "near",
                   "description": "Drop exact duplicates (exact), and also near duplicates by MinHash LSH (near)."},
        "dedupe_on": {"enum": ["conversation", "prompt"], "default": "conversation",
                      "description": "Compare the user and assistant texts (conversation) or the user texts only "
                                     "(prompt); casefolded, whitespace collapsed. The first occurrence is kept."},
        "near_threshold": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.85,
                           "description": "Estimated Jaccard similarity of word shingles from which a record is "
                                          "a near duplicate of a kept one."},
        "num_perm": {"type": "integer", "minimum": 16, "maximum": 512, "default": 64,
                     "description": "MinHash permutations: more is more accurate, slower and larger "
                                    "(index: about 240 bytes a record at 64, 430 at 128)."},
        "shingle_size": {"type": "integer", "minimum": 1, "maximum": 16, "default": 3,
                         "description": "Words per shingle for near-duplicate detection."},
        "max_index": {"type": "integer", "minimum": 0, "default": 1_000_000,
                      "description": "Records kept in the dedupe index; later records are still checked "
                                     "against it but not added (bounds memory)."},
        "allow_empty": {"type": "boolean", "default": False,
                        "description": "Let the stage succeed when no record is left. By default that fails the "
                                       "stage, with the count dropped per reason: nothing after clean can use "
                                       "an empty data set."},
    },
}


# --- the per-record work (worker processes) -----------------------------------------------------

@dataclass(frozen=True)
class Config:
    """What a worker needs to clean a batch (plain data: it travels to the worker processes)."""

    form: str = "NFC"
    whitespace: bool = True
    max_blank_lines: int = 1
    redact: tuple[str, ...] = KINDS
    min_tokens: int | None = None
    max_tokens: int | None = None
    encoding: str = "o200k_base"
    dedupe: str = "near"
    dedupe_on: str = "conversation"
    num_perm: int = 64
    shingle_size: int = 3
    bands: int = 0
    rows: int = 0


class _Worker:
    """Cleans records; one per configuration and process (see :func:`_worker`)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.cleaner = TextCleaner(cfg.form, cfg.whitespace, cfg.max_blank_lines)
        self.redactor = Redactor(cfg.redact) if cfg.redact else None
        self.enc = None
        if cfg.min_tokens is not None or cfg.max_tokens is not None:
            from tunepipe.data.tokens import get_encoding

            self.enc = get_encoding(cfg.encoding)
        self.hasher = None
        if cfg.dedupe == "near":
            from tunepipe.data.dedupe import MinHasher

            self.hasher = MinHasher(cfg.num_perm, cfg.shingle_size)

    # -- texts

    def _text(self, text: str, changes: dict[str, int]) -> str:
        text, flags = self.cleaner.clean(text)
        if flags:
            for name in flag_names(flags):
                changes[name] = changes.get(name, 0) + 1
        if self.redactor is not None:
            text, counts = self.redactor.redact(text)
            for kind, n in counts.items():
                changes[kind] = changes.get(kind, 0) + n
        return text

    def _message(self, m: dict[str, Any], changes: dict[str, int]) -> dict[str, Any] | None:
        """The cleaned message, or None when it is an empty turn to drop."""
        content = m.get("content")
        if isinstance(content, str):
            content = self._text(content, changes)
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part = {**part, "text": self._text(part["text"], changes)}
                    if not part["text"]:
                        continue
                parts.append(part)
            content = parts
        tool_calls = m.get("tool_calls")
        if isinstance(tool_calls, list) and self.redactor is not None:
            tool_calls = [self._tool_call(c, changes) for c in tool_calls]
        if not content and not tool_calls and m.get("role") in _TEXT_ROLES:
            changes["empty_turns"] = changes.get("empty_turns", 0) + 1
            return None
        out = dict(m)
        if "content" in m:
            out["content"] = content
        if "tool_calls" in m:
            out["tool_calls"] = tool_calls
        return out

    def _tool_call(self, call: Any, changes: dict[str, int]) -> Any:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
            return call
        assert self.redactor is not None
        args, counts = self.redactor.redact(fn["arguments"])
        if not counts:
            return call
        for kind, n in counts.items():
            changes[kind] = changes.get(kind, 0) + n
        return {**call, "function": {**fn, "arguments": args}}

    def _messages(self, messages: list[Any], changes: dict[str, int]) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            if not isinstance(m, dict):
                raise ValueError("a message is not an object")
            cleaned = self._message(m, changes)
            if cleaned is not None:
                out.append(cleaned)
        return out

    # -- records

    def plain(self, record: dict[str, Any], breaks: bool = False) -> tuple[Any, ...] | None:
        """The fused path for a plain chat record: what :meth:`clean` then :meth:`dedupe_texts` give.

        Only for a record whose JSON line is ASCII without DEL, and without a backslash, or with
        ``breaks`` only the escapes of line breaks and quotes (:func:`_work` checks the line): its
        texts are then printable ASCII and line breaks, so there is no Unicode form, control
        character, carriage return or tab to fix; with no run of spaces, space before a line break
        or run of blank lines to shrink either, cleaning a text is trimming it (what
        :class:`TextCleaner` then does), and its comparison form is its lower case, line breaks
        as spaces. Redaction runs only when :meth:`Redactor.may_redact` says one of the texts may
        hold something. None when the record needs the full path: messages that are not exactly a
        role and a text, or whitespace to tidy inside a text.
        """
        msgs = record["messages"]
        if type(msgs) is not list or not msgs:
            return None
        roles = []
        texts = []
        edges = False  # a text is empty, or starts or ends with whitespace
        for m in msgs:
            if type(m) is not dict or len(m) != 2:
                return None
            text = m.get("content")
            if type(text) is not str or "role" not in m:
                return None
            roles.append(m["role"])
            texts.append(text)
            if not text or text[0] in " \n" or text[-1] in " \n":
                edges = True
        joined = "\x00".join(texts)  # no text holds NUL: it would be escaped
        trim = self.cfg.whitespace
        if trim and ("  " in joined or (breaks and not self.cleaner.only_trims(joined))):
            return None
        redactor = self.redactor
        if redactor is not None and not redactor.may_redact(joined):
            redactor = None
        wanted = ("user",) if self.cfg.dedupe_on == "prompt" else ("user", "assistant")
        if trim and not edges and redactor is None:  # nothing to change: the common case
            if "assistant" not in roles:
                return None, NO_ASSISTANT, {}, None, None
            forms = joined.lower().split("\x00")
            keys = []
            near = []
            for role, form in zip(roles, forms):
                if role in wanted:
                    if breaks and "\n" in form:
                        form = " ".join(form.split())
                    keys.append(f"{role}\x1f{form}")
                    near.append(form)
            return record, None, {}, "\x1e".join(keys), "\n".join(near)
        changes: dict[str, int] = {}
        kept: list[tuple[dict[str, Any], str, bool]] = []  # message, cleaned text, comparison form is lower()
        changed = False
        for m, text in zip(msgs, texts):
            cleaned = text.strip() if trim else text
            if len(cleaned) != len(text):
                changes["whitespace"] = changes.get("whitespace", 0) + 1
                changed = True
            lower = trim and "\n" not in cleaned
            if redactor is not None:
                cleaned, counts = redactor.redact(cleaned)
                if counts:
                    for kind, n in counts.items():
                        changes[kind] = changes.get(kind, 0) + n
                    changed = True
                    lower = False
            if not cleaned and m["role"] in _TEXT_ROLES:
                changes["empty_turns"] = changes.get("empty_turns", 0) + 1
                changed = True
                continue
            kept.append((m, cleaned, lower))
        if not kept:
            return None, EMPTY, changes, None, None
        if not any(m["role"] == "assistant" and text for m, text, _ in kept):
            return None, NO_ASSISTANT, changes, None, None
        if changed:
            record = {**record, "messages": [m if m["content"] is text else {**m, "content": text}
                                             for m, text, _ in kept]}
        keys = []
        near = []
        for m, text, lower in kept:
            role = m["role"]
            if role in wanted:
                form = text.lower() if lower else dedupe_form(text)
                keys.append(f"{role}\x1f{form}")
                near.append(form)
        return record, None, changes, "\x1e".join(keys), "\n".join(near)

    def clean(self, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None, dict[str, int]]:
        """(cleaned record, None, changes) or (None, reason, changes).

        ``changes`` counts, per kind, the texts normalized (unicode, control_chars, whitespace), the
        turns dropped (empty_turns) and the replacements made (email, phone, credit_card, secret).
        """
        changes: dict[str, int] = {}
        if "messages" in record:
            messages = self._messages(_list(record, "messages"), changes)
            if not messages:
                return None, EMPTY, changes
            if not any(_has_reply(m) for m in messages):
                return None, NO_ASSISTANT, changes
            return {**record, "messages": messages}, None, changes
        if "input" in record and isinstance(record["input"], dict):
            prompt = self._messages(_list(record["input"], "messages"), changes)
            preferred = self._messages(_list(record, "preferred_output"), changes)
            rejected = self._messages(_list(record, "non_preferred_output"), changes)
            if not prompt:
                return None, EMPTY_PROMPT, changes
            if not any(_has_reply(m) for m in preferred):
                return None, EMPTY_PREFERRED, changes
            if not any(_has_reply(m) for m in rejected):
                return None, EMPTY_NON_PREFERRED, changes
            if _outputs_key(preferred) == _outputs_key(rejected):
                return None, SAME_OUTPUTS, changes
            return ({**record, "input": {**record["input"], "messages": prompt}, "preferred_output": preferred,
                     "non_preferred_output": rejected}, None, changes)
        raise ValueError("neither a chat record ('messages') nor a DPO record ('input', 'preferred_output', "
                         "'non_preferred_output')")

    def tokens(self, record: dict[str, Any]) -> int:
        from tunepipe.data.tokens import count_chat_tokens

        if "messages" in record:
            return count_chat_tokens(self.enc, record["messages"], record.get("tools"))
        prompt = record["input"]["messages"]
        tools = record["input"].get("tools")
        return max(count_chat_tokens(self.enc, prompt + record["preferred_output"], tools),
                   count_chat_tokens(self.enc, prompt + record["non_preferred_output"], tools))

    def dedupe_texts(self, record: dict[str, Any]) -> tuple[str, str]:
        """(exact-key text, near-duplicate text) of a cleaned record, casefolded, whitespace collapsed.

        The key text tags each compared turn with its role; the near text is the turns' words only.
        """
        if "messages" in record:
            turns = [m for m in record["messages"] if m.get("role") in ("user", "assistant")]
        else:
            turns = [m for m in record["input"]["messages"] if m.get("role") in ("user", "assistant")]
            if self.cfg.dedupe_on == "conversation":
                turns += record["preferred_output"]
        if self.cfg.dedupe_on == "prompt":
            turns = [m for m in turns if m.get("role") == "user"]
        texts = [dedupe_form(_plain_text(m)) for m in turns]
        key = "\x1e".join(f"{m.get('role')}\x1f{t}" for m, t in zip(turns, texts))
        return key, "\n".join(texts)


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise ValueError(f"'{key}' is not a list")
    return value


def _has_reply(m: dict[str, Any]) -> bool:
    return m.get("role") == "assistant" and bool(m.get("content") or m.get("tool_calls"))


def _plain_text(m: dict[str, Any]) -> str:
    """A message's text for comparison: its content, and an assistant's tool calls."""
    content = m.get("content")
    if isinstance(content, list):
        content = " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    text = content if isinstance(content, str) else ""
    calls = m.get("tool_calls")
    if isinstance(calls, list):
        for c in calls:
            fn = c.get("function") if isinstance(c, dict) else None
            if isinstance(fn, dict):
                text += f" {fn.get('name')}({fn.get('arguments')})"
    return text


def _outputs_key(messages: list[dict[str, Any]]) -> list[str]:
    return [dedupe_form(_plain_text(m)) for m in messages]


def _position(record: dict[str, Any], label: str, lineno: int) -> tuple[str, str, Any]:
    """(source, position key, position) from the record's meta, else this input file and line."""
    meta = record.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("source"), str):
        for key in POSITION_KEYS:
            if key in meta:
                return meta["source"], key, meta[key]
    return label, "line", lineno


_WORKERS: dict[Config, _Worker] = {}  # one per configuration and process (stages may run on threads)


def _worker(cfg: Config) -> _Worker:
    worker = _WORKERS.get(cfg)
    if worker is None:
        worker = _WORKERS[cfg] = _Worker(cfg)
    return worker


# A block of input: (settings, file label, lines before the block, the lines, without the newline
# after the last). Raw bytes: the worker splits and parses them; nothing is pickled line by line.
Task = tuple[Config, str, int, bytes]
# What a worker returns for a block, compact (it is pickled back to the parent):
#   (label, records read,
#    the kept records' output lines joined by newlines, and the length of each,
#    their exact keys (8 bytes each, little-endian, as exact_key gives) or b"",
#    their (source, position key, position),
#    (kept index, changes) for each kept record that changed,
#    (kept records before it, (source, key, position), reason, extra or None) for each dropped record,
#    the first unreadable line as (line number, message) or None (the block stops there),
#    and for near-dedupe the kept records' band keys, signatures and whether each has words, else None)
Batch = tuple[str, int, bytes, Any, bytes, list[Any], list[Any], list[Any], Any, Any, Any, Any]

_BOM = b"\xef\xbb\xbf"
_SPACE = frozenset(b" \t\n\r\x0b\x0c")  # what bytes.strip removes
_BACKSLASH, _DEL = 0x5C, 0x7F  # bytes to look for as ints: memchr (a bytes needle first tries int())
BLOCK_BYTES = 1 << 20  # input per work item: about 1,600 chat records, few round trips to the workers


def _work(task: Task) -> Batch:
    """Clean one block of lines of one file (numbered and skipped as :func:`jsonl.iter_lines` does).

    A chat record whose line is ASCII without DEL, and without escapes other than line breaks and
    quotes (the common case), takes the fused path (:meth:`_Worker.plain`); every other record the
    full one, which gives the same result.
    """
    cfg, label, before, block = task
    w = _worker(cfg)
    loads, dumps = jsonl.loads, jsonl.dumps
    blake2b = hashlib.blake2b
    exact = cfg.dedupe != "none"
    lines: list[bytes] = []
    digests: list[bytes] = []
    wheres: list[tuple[str, str, Any]] = []
    changed: list[tuple[int, dict[str, int]]] = []
    drops: list[tuple[int, tuple[str, str, Any], str, dict[str, Any] | None]] = []
    near_texts: list[str] = []
    sources: dict[str, str] = {}  # one object per source name: pickled once
    error = None
    n = 0
    for lineno, raw in enumerate(block.split(b"\n"), start=before + 1):
        if raw[-1:] == b"\r":
            raw = raw.rstrip(b"\r")
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[3:]  # a UTF-8 byte-order mark
        if not raw or (raw[0] in _SPACE and not raw.strip()):
            continue
        n += 1
        try:
            record = loads(raw)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            source, key, pos = _position(record, label, lineno)
            where = (sources.setdefault(source, source), key, pos)
            fused = None
            if "messages" in record and raw.isascii() and _DEL not in raw:
                if _BACKSLASH not in raw:
                    fused = w.plain(record)
                elif raw.count(b"\\") == raw.count(b"\\n") + raw.count(b'\\"'):  # no other escape
                    fused = w.plain(record, breaks=True)
            if fused is None:
                cleaned, reason, changes = w.clean(record)
                key_text = near_text = None
            else:
                cleaned, reason, changes, key_text, near_text = fused
        except (ValueError, TypeError, AttributeError) as e:  # orjson's decode error is a ValueError
            n -= 1
            error = (lineno, str(e))
            break
        if cleaned is None:
            drops.append((len(lines), where, reason, None))
            continue
        if w.enc is not None:
            tokens = w.tokens(cleaned)
            if cfg.min_tokens is not None and tokens < cfg.min_tokens:
                drops.append((len(lines), where, TOO_SHORT, {"tokens": tokens, "min_tokens": cfg.min_tokens}))
                continue
            if cfg.max_tokens is not None and tokens > cfg.max_tokens:
                drops.append((len(lines), where, TOO_LONG, {"tokens": tokens, "max_tokens": cfg.max_tokens}))
                continue
        if exact:
            if key_text is None:
                key_text, near_text = w.dedupe_texts(cleaned)
            digests.append(blake2b(key_text.encode("utf-8", "surrogatepass"), digest_size=8).digest())
            near_texts.append(near_text)
        if changes:
            changed.append((len(lines), changes))
        wheres.append(where)
        lines.append(dumps(cleaned))
    bands = sigs = has = None
    if w.hasher is not None:
        from tunepipe.data.dedupe import band_keys

        full, has_words = w.hasher.signatures(near_texts)
        bands = band_keys(full, cfg.bands, cfg.rows)
        sigs = (full & 0xFFFF).astype("uint16")
        has = has_words.tolist()
    return (label, n, b"\n".join(lines), array("I", map(len, lines)), b"".join(digests), wheres, changed, drops,
            error, bands, sigs, has)


# --- the stage (this process) -------------------------------------------------------------------

def _tasks(records: Artifact, cfg: Config, size: int = BLOCK_BYTES) -> Iterator[Task]:
    """Blocks of whole lines, about ``size`` bytes each, per file: the file itself, or a folder's *.jsonl files."""
    files = [records.path] if records.path.is_file() else [p for p in records.files() if p.suffix == ".jsonl"]
    if not files:
        raise StageInputError(f"{records.name or records.path}: no .jsonl file to clean; pass the records of "
                              "ingest (ingest.records) or a JSONL file")
    for path in files:
        label = records.label(path)
        before = 0  # lines before the block
        rest = b""
        with open(path, "rb") as f:
            while True:
                chunk = f.read(size)
                if not chunk:
                    if rest:
                        yield cfg, label, before, rest  # a last line without a newline
                    break
                data = rest + chunk if rest else chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    rest = data  # a line longer than the block: read on
                    continue
                block, rest = data[:cut], data[cut + 1:]
                yield cfg, label, before, block
                before += block.count(b"\n") + 1


def _config(params: Mapping[str, Any]) -> Config:
    from tunepipe.data.tokens import encoding_name_for_model

    lo, hi = params["min_tokens"], params["max_tokens"]
    if lo is not None and hi is not None and lo > hi:
        raise UserError(f"clean: min_tokens ({lo}) is larger than max_tokens ({hi}); lower min_tokens or raise "
                        "max_tokens")
    encoding = params["encoding"] or "o200k_base"
    if params["model"]:
        by_model = encoding_name_for_model(params["model"])
        if params["encoding"] and params["encoding"] != by_model:
            raise UserError(f"clean: model {params['model']} uses the encoding {by_model}, but encoding is set to "
                            f"{params['encoding']}; set one of them")
        encoding = by_model
    bands = rows = 0
    if params["dedupe"] == "near":
        from tunepipe.data.dedupe import lsh_bands

        bands, rows = lsh_bands(params["near_threshold"], params["num_perm"])
    return Config(form=params["unicode_form"], whitespace=params["whitespace"],
                  max_blank_lines=params["max_blank_lines"], redact=tuple(k for k in KINDS if k in params["redact"]),
                  min_tokens=lo, max_tokens=hi, encoding=encoding, dedupe=params["dedupe"],
                  dedupe_on=params["dedupe_on"], num_perm=params["num_perm"], shingle_size=params["shingle_size"],
                  bands=bands, rows=rows)


def _reject(where: tuple[str, str, Any], reason: str, **extra: Any) -> dict[str, Any]:
    source, key, pos = where
    return {"source": source, key: pos, "reason": reason, **extra}


def _write_kept(out: Any, lines: bytes, lengths: Sequence[int], dups: list[int]) -> int:
    """Write the kept lines of a block but the duplicates (runs of lines at once); how many were written."""
    if not lengths:
        return 0
    if not dups:
        out.write(lines)
        out.write(b"\n")
        return len(lengths)
    ends = list(accumulate(n + 1 for n in lengths))  # where each line ends, with the newline after it
    view = memoryview(lines)
    first = 0  # the first line of the current run
    for d in [*dups, len(lengths)]:
        if d > first:
            out.write(view[ends[first - 1] if first else 0:ends[d - 1] - 1])
            out.write(b"\n")
        first = d + 1
    return len(lengths) - len(dups)


class Clean:
    name = "clean"
    version = "0.1.0"
    description = "Normalize, redact, filter by tokens and deduplicate chat records; every change accounted for."
    params_schema: Mapping[str, Any] = PARAMS_SCHEMA
    inputs = {"records": Port("records.jsonl of chat or DPO records (ingest.records)")}
    outputs = {"records": Port("records.jsonl: the kept records, cleaned"),
               "rejects": Port("rejects.jsonl: dropped records with source, line and reason (duplicate_of)"),
               "report": Port("report.json: counts per reason, redaction kind and change; changes.jsonl")}
    packages: tuple[str, ...] = ("datasketch", "tiktoken")

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        from tunepipe.data.dedupe import Deduper

        cfg = _config(params)
        deduper = Deduper(exact=cfg.dedupe != "none", near=cfg.dedupe == "near", threshold=params["near_threshold"],
                          num_perm=cfg.num_perm, bands=cfg.bands, max_index=params["max_index"])
        workers = worker_count(ctx.threads, ctx.engine)
        ctx.log.info("cleaning with %d worker process(es); %s", workers, cfg)
        _worker(cfg)  # built once here (token encoding, MinHash tables): forked workers inherit it
        tally = _Tally()
        records_out = 0
        with open(ctx.output("records") / "records.jsonl", "wb", buffering=1 << 20) as out, \
                jsonl.Writer(ctx.output("rejects") / "rejects.jsonl") as rej, \
                jsonl.Writer(ctx.output("report") / "changes.jsonl") as chg, \
                contextlib.closing(ordered_map(_work, _tasks(inputs["records"], cfg), workers,
                                                engine=ctx.engine)) as batches:
            for label, n, lines, lengths, keys, wheres, changed, drops, error, bands, sigs, has in batches:
                ctx.check_cancelled()
                tally.records_in += n
                verdicts: list[Duplicate | None] = []
                dups: list[int] = []  # kept records found to be duplicates
                if cfg.dedupe != "none" and wheres:
                    verdicts = deduper.check(np.frombuffer(keys, dtype="<u8"), bands, sigs, has, wheres)
                    if verdicts.count(None) != len(verdicts):
                        dups = [i for i, v in enumerate(verdicts) if v is not None]
                records_out += _write_kept(out, lines, lengths, dups)
                if changed:
                    skip = set(dups)
                    for i, changes in changed:
                        if i not in skip:
                            tally.changed_record(changes)
                            source, key, pos = wheres[i]
                            chg.write({"source": source, key: pos, "changes": changes})
                if drops or dups:  # in input order: a drop comes before the kept record it precedes
                    events = sorted([(d[0], 0, j) for j, d in enumerate(drops)] + [(i, 1, i) for i in dups])
                    for _, is_dup, j in events:
                        if not is_dup:
                            _, where, reason, extra = drops[j]
                            tally.dropped[reason] += 1
                            rej.write(_reject(where, reason, **(extra or {})))
                            continue
                        dup = verdicts[j]
                        assert dup is not None
                        reason = EXACT if dup.kind == "exact" else NEAR
                        tally.dropped[reason] += 1
                        more: dict[str, Any] = {"duplicate_of": deduper.provenance.label(dup.of)}
                        if dup.kind == "near":
                            more["similarity"] = round(dup.similarity, 3)
                        rej.write(_reject(wheres[j], reason, **more))
                if error is not None:
                    raise StageInputError(
                        f"{label}:{error[0]}: not a record clean can read ({error[1]}). clean reads the records "
                        "artifact of ingest (chat records with 'messages', or DPO records): pass ingest.records")
                ctx.progress(f"{tally.records_in:,} records")
        if deduper.full:
            ctx.log.warning("the dedupe index is full (max_index=%d): later records were checked against the "
                            "first %d kept records but not added", params["max_index"], deduper.indexed)
        if not records_out and not params.get("allow_empty", False):
            raise StageInputError(_empty_message(inputs["records"], tally))
        report = tally.report(records_out, cfg, params, deduper)
        (ctx.output("report") / "report.json").write_bytes(jsonl.dumps(report) + b"\n")
        ctx.log.info("records in %d, out %d; dropped %s; redacted %s", tally.records_in, records_out,
                     report["dropped_by_reason"], report["redacted"])
        return {"records_in": tally.records_in, "records_out": records_out, "dropped": report["dropped"],
                "redacted": sum(tally.redacted.values()), "duplicates": tally.dropped[EXACT],
                "near_duplicates": tally.dropped[NEAR]}


# What to change when every record was dropped for a reason (the most common reason's hint is given).
_HINTS = {
    TOO_SHORT: "lower min_tokens",
    TOO_LONG: "raise max_tokens",
    EXACT: "dedupe: none keeps duplicates",
    NEAR: "raise near_threshold, or set dedupe: exact",
    NO_ASSISTANT: "check that the records carry the assistant replies (ingest's map)",
    EMPTY: "check that the records carry text (ingest's map)",
    EMPTY_PROMPT: "check that the DPO records carry their prompts (ingest's map)",
    EMPTY_PREFERRED: "check that the DPO records carry their outputs (ingest's map)",
    EMPTY_NON_PREFERRED: "check that the DPO records carry their outputs (ingest's map)",
    SAME_OUTPUTS: "a DPO record needs two different outputs",
}


def _empty_message(records: Artifact, tally: _Tally) -> str:
    """Why clean kept nothing (each drop reason with its count), and what to do."""
    name = records.name or str(records.path)
    if not tally.records_in:
        return (f"{name} holds no records, so clean has nothing to keep: fix the stage or file that feeds it, or "
                "set `allow_empty: true` on this stage to pass an empty data set on (the stages after it need "
                "records)")
    counts = tally.dropped.most_common()
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in counts)
    hint = _HINTS.get(counts[0][0]) if counts else None
    return (f"clean dropped all {tally.records_in:,} records of {name} ({reasons}), so nothing is left. Fix the data "
            f"or the settings{f' ({hint})' if hint else ''}, or set `allow_empty: true` on this stage to pass an "
            "empty data set on (the stages after it need records)")


@dataclass
class _Tally:
    """The counts report.json gives."""

    records_in: int = 0
    changed: int = 0

    def __post_init__(self) -> None:
        self.dropped: Counter[str] = Counter()
        self.redacted: Counter[str] = Counter()  # replacements per kind, in kept records
        self.changes: Counter[str] = Counter()  # kept records per kind of change

    def changed_record(self, changes: Mapping[str, int]) -> None:
        self.changed += 1
        for kind, n in changes.items():
            if kind in KINDS:
                self.redacted[kind] += n
            else:
                self.changes[kind] += 1
        if any(k in KINDS for k in changes):
            self.changes["redacted"] += 1

    def report(self, records_out: int, cfg: Config, params: Mapping[str, Any], deduper: Deduper) -> dict[str, Any]:
        near = {"near_threshold": params["near_threshold"], "num_perm": cfg.num_perm, "bands": cfg.bands,
                "rows": cfg.rows, "shingle_size": cfg.shingle_size} if cfg.dedupe == "near" else {}
        limits = cfg.min_tokens is not None or cfg.max_tokens is not None
        return {
            "records_in": self.records_in,
            "records_out": records_out,
            "dropped": sum(self.dropped.values()),
            "changed": self.changed,
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "redacted": {k: self.redacted[k] for k in cfg.redact},
            "changes": dict(sorted(self.changes.items())),
            "dedupe": {"mode": cfg.dedupe, "on": cfg.dedupe_on, "indexed": deduper.indexed,
                       "index_full": deduper.full, "index_bytes": deduper.nbytes, **near},
            "tokens": {"encoding": cfg.encoding, "min_tokens": cfg.min_tokens,
                       "max_tokens": cfg.max_tokens} if limits else None,
        }
