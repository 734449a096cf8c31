"""The careful-script baseline of issue 16: tunepipe's four default data stages, by hand, on one core.

What tunepipe's ``ingest -> clean (dedupe: exact, redact: []) -> format (openai-chat, exact o200k
token counts) -> split (validation: 0.1)`` does, written as a skilled engineer would write a one-off
script: one process, orjson, four staged passes that each read the previous pass's JSONL and write
their own (as the pipeline's stages do), every line parsed once per pass, a line copied through as
it is when the pass does not change its record, and the token counts with a plain tiktoken
``encode_ordinary`` loop over every message's text. Usage::

    careful_script.py IN.jsonl OUTDIR

It prints, and writes to ``OUTDIR/timings.json``, the wall time of each pass and of the token
counting (timed inside pass 3, where it runs), and the counts.

The passes and what each checks (as tunepipe's stages do, with their default settings):

1. **ingest** (``OUTDIR/ingest/records.jsonl``): physical line numbers (a UTF-8 BOM on line 1,
   CRLF, blank lines skipped); each line must parse as a JSON object with a non-empty
   ``messages`` list of objects, each with a role among system/user/assistant/tool and a string
   content (or content parts with a ``type``, or ``tool_calls`` on a null content); ``tools`` a
   list of objects, ``parallel_tool_calls`` a boolean, ``meta`` an object. Written as
   ``{"messages", "tools"?, "parallel_tool_calls"?, "meta": {...own meta, "source", "line"}}``.
   A bad line stops the script naming its line (tunepipe's ``on_error: fail``).
2. **clean** (``OUTDIR/clean/``: records, rejects, changes, report): every text (string content,
   and the text of content parts) is cleaned as ``tunepipe.data.normalize.TextCleaner`` does by
   default: line breaks (CR, CRLF, U+0085/2028/2029) to ``\\n``; NFC; C0/C1 control characters and
   U+200B/2060/FEFF removed; trailing spaces at line ends removed, inner runs of spaces, tabs and
   Unicode spaces after the first non-space collapsed to one space, more than one blank line in a
   row shrunk to one, outside fenced code blocks; trimmed. Empty system/user/assistant turns are
   dropped; a conversation left empty, or without an assistant reply, is rejected. Exact dedupe:
   the user and assistant turns, casefolded with whitespace collapsed, tagged with their roles,
   hashed with BLAKE2b-64; the first occurrence is kept, a duplicate goes to the rejects with the
   ``source:line`` of the kept record. Counts per reason and per kind of change in the report.
3. **format** (``OUTDIR/format/``: examples, problems, report): the OpenAI chat checks of
   ``tunepipe.data.chat`` as errors (no non-empty messages list, a message that is not an object,
   without role or content, an unknown role, a key its role does not allow, empty or non-string
   content, a bad ``name`` or ``weight``, ``tools`` and ``tool_calls`` shapes with arguments that
   must parse as a JSON object, a tool message without a matching open call, a system message
   that is not first, two user messages in a row, no assistant message) and warnings (no system
   message, no user message, no trained assistant message, unknown top-level keys). Exact token
   counts, the cookbook's way (3 per example + per message 3 + the tokens of every value + 1 for a
   name; tools as their JSON), with o200k_base (the encoding of format's default model,
   gpt-4o-mini-2024-07-18): every text is encoded, the system prompt included; only the role
   names, a closed set of six words, are counted once. The report has the exact p5/p50/p95 and
   mean of messages, tokens and assistant tokens (from histograms, as tunepipe does), the examples
   over the 65,536-token context, the billable tokens, the cookbook's default epochs and the cost.
   An invalid example stops the script after the pass (tunepipe's ``on_invalid: fail``).
4. **split** (``OUTDIR/split/``: train, validation, test, report): the key of an example is its
   canonical JSON without ``meta`` (keys sorted, orjson), hashed with BLAKE2b-64 salted with the
   seed 0 exactly as tunepipe salts it, so each example lands in the same split as in tunepipe;
   hash below 0.1 * 2**64 is validation. Written without ``meta``. The prompt-leakage check: user
   turns normalised (NFC, casefolded, whitespace collapsed), joined with U+001F, hashed; a prompt
   in both splits fails the script (tunepipe's ``leakage: fail``).

What it does not do (the generated benchmark data needs none of it): other input formats (JSON
arrays, CSV, Parquet, gzip) and presets (DPO, ShareGPT, Alpaca, ``map``), ``on_error: skip`` and
reject rates, redaction (``redact: []``), near-duplicate detection, token filters in clean, the
DPO and chat-template targets, the deprecated ``functions``/``function_call`` warnings,
stratification, grouping, counts instead of ratios and the split stage's binomial warnings;
``tools[].function.parameters`` is checked to be an object, not validated as a JSON Schema.
Nothing is cached, no run record or manifest is written, and there is no cancellation, progress
or logging: that is the pipeline's overhead the script does not pay. Its files are not meant to be
byte-identical to tunepipe's (the records, examples and split files are, on the generated data;
the reports differ in layout).
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
import unicodedata
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

try:
    from tunepipe.data.tokens import get_encoding  # offline tiktoken files (the bpe-openai wheel's), fast load
except ImportError:  # run from a checkout without tunepipe installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from tunepipe.data.tokens import get_encoding  # noqa: E402

BOM = b"\xef\xbb\xbf"
BUF = 1 << 20


class Stop(Exception):
    """A record the default settings do not accept: the script stops, naming where."""


def lines(path: Path):
    """(physical line number, line with its newline) of each non-blank line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.endswith(b"\r\n"):
                raw = raw[:-2] + b"\n"
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[3:]
            if raw.isspace() or not raw:
                continue
            yield lineno, raw if raw.endswith(b"\n") else raw + b"\n"


# ------------------------------------------------------------------------------------------ pass 1: ingest

INGEST_ROLES = frozenset(("system", "user", "assistant", "tool"))


def ingest_record(rec: Any) -> dict[str, Any]:
    if type(rec) is not dict:
        raise Stop(f"expected a JSON object, got {type(rec).__name__}")
    msgs = rec.get("messages")
    if type(msgs) is not list or not msgs:
        raise Stop("missing a non-empty 'messages' list")
    for i, m in enumerate(msgs):
        if type(m) is not dict:
            raise Stop(f"messages[{i}] is not an object")
        if m.get("role") not in INGEST_ROLES:
            raise Stop(f"messages[{i}].role must be one of system, user, assistant, tool")
        c = m.get("content")
        if type(c) is str:
            continue
        calls = m.get("tool_calls")
        if c is None and calls:
            if type(calls) is not list or not all(type(x) is dict for x in calls):
                raise Stop(f"messages[{i}].tool_calls must be a list of objects")
            continue
        if type(c) is list and c and all(type(p) is dict and type(p.get("type")) is str for p in c):
            continue
        raise Stop(f"messages[{i}].content must be a string")
    out: dict[str, Any] = {"messages": msgs}
    tools = rec.get("tools")
    if tools is not None:
        if type(tools) is not list or not all(type(t) is dict for t in tools):
            raise Stop("'tools' must be a list of objects")
        out["tools"] = tools
    par = rec.get("parallel_tool_calls")
    if par is not None:
        if type(par) is not bool:
            raise Stop("'parallel_tool_calls' must be true or false")
        out["parallel_tool_calls"] = par
    meta = rec.get("meta")
    if meta is None:
        out["meta"] = {}
    elif type(meta) is dict:
        out["meta"] = dict(meta)
    else:
        raise Stop("'meta' must be an object when present")
    return out


def ingest(src: Path, label: str, folder: Path) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    loads, dumps = orjson.loads, orjson.dumps
    n = 0
    with open(folder / "records.jsonl", "wb", buffering=BUF) as out:
        (folder / "rejects.jsonl").write_bytes(b"")
        write = out.write
        for lineno, raw in lines(src):
            try:
                try:
                    rec = loads(raw)
                except orjson.JSONDecodeError as e:
                    raise Stop(f"not valid JSON ({e})") from None
                rec = ingest_record(rec)
            except Stop as e:
                raise SystemExit(f"{label}:{lineno}: {e}") from None
            meta = rec["meta"]
            meta["source"] = label
            meta["line"] = lineno
            write(dumps(rec))
            write(b"\n")
            n += 1
    return {"records": n}


# ------------------------------------------------------------------------------------------- pass 2: clean

NEWLINES = re.compile("\r\n?|[\x85\u2028\u2029]")
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\u200b\u2060\ufeff]")
HSPACE = "[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
TRAILING = re.compile(HSPACE + "+$", re.M)
INNER = re.compile(r"(?<=\S)(?:" + HSPACE + "{2,}|[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000])")
ODD_SPACE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
BLANKS = re.compile("\n{3,}")  # more than one blank line in a row
FENCE = re.compile(r"[ ]{0,3}(`{3,}|~{3,})")
TEXT_ROLES = ("system", "user", "assistant")
UNICODE, CONTROL_CHARS, WHITESPACE = 1, 2, 4
FLAGS = ((UNICODE, "unicode"), (CONTROL_CHARS, "control_chars"), (WHITESPACE, "whitespace"))


def prose(text: str) -> str:
    if "  " in text or "\t" in text or " \n" in text or (not text.isascii() and ODD_SPACE.search(text)):
        text = INNER.sub(" ", TRAILING.sub("", text))
    if "\n\n\n" in text:
        text = BLANKS.sub("\n\n", text)
    return text


def code_aware(text: str) -> str:
    """Whitespace tidied outside fenced code blocks (lines inside are kept verbatim)."""
    out, run, fence, in_code = [], [], "", False
    for line in text.splitlines(keepends=True):
        m = FENCE.match(line)
        is_fence = m is not None and (not fence or (m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence)))
        line_code = bool(fence) and not is_fence
        if line_code != in_code and run:
            out.append("".join(run) if in_code else prose("".join(run)))
            run = []
        in_code = line_code
        run.append(line)
        if is_fence:
            fence = "" if fence else m.group(1)
    if run:
        out.append("".join(run) if in_code else prose("".join(run)))
    return "".join(out)


def clean_text(text: str, changes: dict[str, int]) -> str:
    """The default clean-up of one text; counts the texts changed per kind of change in ``changes``."""
    ascii_ = text.isascii()
    if ascii_ and text.isprintable():  # one line of printable ASCII: only spaces to tidy
        tidy = (INNER.sub(" ", text) if "  " in text else text).strip()
        if tidy != text:
            changes["whitespace"] = changes.get("whitespace", 0) + 1
        return tidy
    flags = 0
    if "\r" in text or (not ascii_ and ("\x85" in text or "\u2028" in text or "\u2029" in text)):
        text = NEWLINES.sub("\n", text)
        flags |= WHITESPACE
    if not ascii_:
        nfc = unicodedata.normalize("NFC", text)  # the text itself when it is NFC already
        if nfc != text:
            text = nfc
            flags |= UNICODE
    if not text.isprintable() and CONTROL.search(text):
        text = CONTROL.sub("", text)
        flags |= CONTROL_CHARS
    tidy = (prose(text) if "```" not in text and "~~~" not in text else code_aware(text)).strip()
    if tidy != text:
        text = tidy
        flags |= WHITESPACE
    if flags:
        for bit, name in FLAGS:
            if flags & bit:
                changes[name] = changes.get(name, 0) + 1
    return text


def dedupe_text(m: dict[str, Any]) -> str:
    """A turn's text for comparison: content (parts joined by a space) and an assistant's tool calls."""
    c = m.get("content")
    if len(m) == 2 and type(c) is str:  # role and text
        return c
    if type(c) is list:
        c = " ".join(p["text"] for p in c if type(p) is dict and type(p.get("text")) is str)
    text = c if type(c) is str else ""
    calls = m.get("tool_calls")
    if type(calls) is list:
        for call in calls:
            fn = call.get("function") if type(call) is dict else None
            if type(fn) is dict:
                text += f" {fn.get('name')}({fn.get('arguments')})"
    return text


def clean(src: Path, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    loads, dumps, blake2b = orjson.loads, orjson.dumps, hashlib.blake2b
    seen: dict[bytes, Any] = {}  # exact key -> the kept record's line (or "source:line" from another source)
    first_source = None
    dropped: Counter[str] = Counter()
    changed_kinds: Counter[str] = Counter()
    n_in = n_out = changed = 0
    with open(folder / "records.jsonl", "wb", buffering=BUF) as out, \
            open(folder / "rejects.jsonl", "wb", buffering=BUF) as rej, \
            open(folder / "changes.jsonl", "wb", buffering=BUF) as chg:
        for lineno, raw in lines(src):
            n_in += 1
            rec = loads(raw)
            meta = rec.get("meta") or {}
            source, line = meta.get("source", str(src)), meta.get("line", lineno)
            changes: dict[str, int] = {}
            kept = []
            touched = False
            for m in rec["messages"]:
                c = m.get("content")
                if type(c) is str:
                    c2 = clean_text(c, changes)
                elif type(c) is list:
                    c2 = []
                    for p in c:
                        if type(p) is dict and type(p.get("text")) is str:
                            t = clean_text(p["text"], changes)
                            if not t:
                                continue
                            if t != p["text"]:
                                p = {**p, "text": t}
                        c2.append(p)
                else:
                    c2 = c
                if not c2 and not m.get("tool_calls") and m.get("role") in TEXT_ROLES:
                    changes["empty_turns"] = changes.get("empty_turns", 0) + 1
                    touched = True
                    continue
                if c2 != c:
                    m = {**m, "content": c2}
                    touched = True
                kept.append(m)
            reason = None
            if not kept:
                reason = "empty conversation"
            elif not any(m.get("role") == "assistant" and (m.get("content") or m.get("tool_calls")) for m in kept):
                reason = "no assistant reply"
            else:
                key = "\x1e".join(f"{m['role']}\x1f{' '.join(dedupe_text(m).casefold().split())}"
                                  for m in kept if m["role"] == "user" or m["role"] == "assistant")
                digest = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
                first = seen.get(digest)
                if first is None:
                    if first_source is None:
                        first_source = source
                    seen[digest] = line if source == first_source else f"{source}:{line}"
                else:
                    dropped["exact duplicate"] += 1
                    origin = f"{first_source}:{first}" if type(first) is int else first
                    rej.write(dumps({"source": source, "line": line, "reason": "exact duplicate",
                                     "duplicate_of": origin}) + b"\n")
                    continue
            if reason is not None:
                dropped[reason] += 1
                rej.write(dumps({"source": source, "line": line, "reason": reason}) + b"\n")
                continue
            if touched or changes:
                out.write(dumps({**rec, "messages": kept}) + b"\n")
                if changes:
                    changed += 1
                    changed_kinds.update(changes.keys())
                    chg.write(dumps({"source": source, "line": line, "changes": changes}) + b"\n")
            else:
                out.write(raw)  # nothing changed: the line as it is
            n_out += 1
    report = {"records_in": n_in, "records_out": n_out, "dropped": sum(dropped.values()), "changed": changed,
              "dropped_by_reason": dict(sorted(dropped.items())), "changes": dict(sorted(changed_kinds.items())),
              "dedupe": {"mode": "exact", "on": "conversation", "indexed": len(seen)}}
    (folder / "report.json").write_bytes(orjson.dumps(report) + b"\n")
    return report


# ------------------------------------------------------------------------------------------ pass 3: format

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
ALLOWED = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "weight", "tool_calls", "function_call"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
EXAMPLE_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions", "meta"})
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}\Z")
MODEL, CONTEXT, PRICE = "gpt-4o-mini-2024-07-18", 65_536, 3.00  # format's default model, its context, USD/1M


def check_tools(rec: dict[str, Any], errors: list[str]) -> set[str] | None:
    if "parallel_tool_calls" in rec and type(rec["parallel_tool_calls"]) is not bool:
        errors.append("invalid_tools")
    tools = rec.get("tools")
    if tools is None:
        return None
    names: set[str] = set()
    if type(tools) is not list or not tools:
        errors.append("invalid_tools")
        return names
    for t in tools:
        fn = t.get("function") if type(t) is dict else None
        if type(t) is not dict or t.get("type") != "function" or not t.keys() <= {"type", "function"} \
                or type(fn) is not dict or not fn.keys() <= {"name", "description", "parameters", "strict"}:
            errors.append("invalid_tools")
            continue
        name = fn.get("name")
        if type(name) is not str or not NAME.match(name) or name in names \
                or ("description" in fn and type(fn["description"]) is not str) \
                or ("parameters" in fn and type(fn["parameters"]) is not dict) \
                or ("strict" in fn and type(fn["strict"]) is not bool):
            errors.append("invalid_tools")
        if type(name) is str:
            names.add(name)
    return names


def check_calls(calls: Any, declared: set[str] | None, errors: list[str]) -> list[str]:
    if type(calls) is not list or not calls:
        errors.append("invalid_tool_calls")
        return []
    ids: list[str] = []
    for call in calls:
        fn = call.get("function") if type(call) is dict else None
        if type(call) is not dict or type(fn) is not dict:
            errors.append("invalid_tool_calls")
            continue
        cid, name, args = call.get("id"), fn.get("name"), fn.get("arguments")
        ok = type(cid) is str and cid and cid not in ids and call.get("type") == "function" \
            and call.keys() <= {"id", "type", "function"} and fn.keys() <= {"name", "arguments"} \
            and type(name) is str and NAME.match(name) and (declared is None or name in declared) \
            and type(args) is str
        if ok:
            try:
                ok = type(orjson.loads(args)) is dict
            except orjson.JSONDecodeError:
                ok = False
        if not ok:
            errors.append("invalid_tool_calls")
        if type(cid) is str and cid:
            ids.append(cid)
    return ids


def check_example(rec: Any) -> tuple[list[str], list[str]]:
    """(error categories, warning categories) of a chat example, as ``tunepipe.data.chat`` names them."""
    errors: list[str] = []
    warnings: list[str] = []
    if type(rec) is not dict:
        return ["data_type"], warnings
    if not rec.keys() <= EXAMPLE_KEYS:
        warnings.append("unrecognized_example_key")
    declared = check_tools(rec, errors)
    msgs = rec.get("messages")
    if type(msgs) is not list or not msgs:
        return errors + ["missing_messages_list"], warnings
    prev = None
    system = user = assistant = trained = False
    open_calls: list[str] = []
    answered: set[str] = set()
    in_tools = False
    for i, m in enumerate(msgs):
        if type(m) is not dict:
            errors.append("message_missing_key")
            prev = None
            continue
        role = m.get("role")
        if role not in ALLOWED:
            errors.append("message_missing_key" if "role" not in m else "unrecognized_role")
            prev = None
            continue
        c = m.get("content", ...)
        if len(m) == 2 and type(c) is str and role != "function":  # role and text: no key, name, weight, call
            calls = None
            if not c or c.isspace():
                errors.append("missing_content")
        else:
            if not m.keys() <= ALLOWED[role] and not (m.keys() - ALLOWED[role] == {"weight"}):
                errors.append("message_unrecognized_key")
            calls = m.get("tool_calls") if role == "assistant" else None
            has_calls = calls is not None or (role == "assistant" and m.get("function_call") is not None)
            if c is ...:
                if not has_calls:
                    errors.append("message_missing_key")
            elif c is None:
                if not has_calls:
                    errors.append("missing_content")
            elif type(c) is not str or ((not c or c.isspace()) and not has_calls):
                errors.append("missing_content")
            if "name" in m and (type(m["name"]) is not str or not NAME.match(m["name"])):
                errors.append("invalid_name")
            if "weight" in m and (role != "assistant" or type(m["weight"]) is not int or m["weight"] not in (0, 1)):
                errors.append("invalid_weight")
            if role == "function" and type(m.get("name")) is not str:
                errors.append("message_missing_key")
        if role in ("system", "developer"):
            system = True
            if i:
                errors.append("misplaced_system_message")
        elif role == "user":
            user = True
            if prev == "user":
                errors.append("consecutive_user_messages")
        elif role == "assistant":
            assistant = True
            if m.get("weight", 1) != 0:
                trained = True
        if role == "tool":
            tid = m.get("tool_call_id")
            if not in_tools or type(tid) is not str or not tid or tid not in open_calls or tid in answered:
                errors.append("invalid_tool_message")
            answered.add(tid)
        else:
            if in_tools and any(c not in answered for c in open_calls):
                errors.append("unanswered_tool_call")
            in_tools = False
            if calls is not None:
                open_calls, answered = check_calls(calls, declared, errors), set()
                in_tools = bool(open_calls)
        prev = role
    if in_tools and answered and any(c not in answered for c in open_calls):
        errors.append("unanswered_tool_call")
    if not assistant:
        errors.append("example_missing_assistant_message")
    elif not trained:
        warnings.append("no_trained_assistant_message")
    if not system:
        warnings.append("missing_system_message")
    if not user:
        warnings.append("missing_user_message")
    return errors, warnings


def percentiles(hist: Counter[int]) -> dict[str, Any]:
    """count, min, max, mean, p5/p50/p95 (numpy's linear interpolation) of a histogram."""
    n = sum(hist.values())
    if not n:
        return {"count": 0}
    values = sorted(hist)
    out: dict[str, Any] = {"count": n, "min": values[0], "max": values[-1],
                           "mean": round(sum(v * k for v, k in hist.items()) / n, 2)}
    wanted = {}
    for p in (5, 50, 95):
        h = (n - 1) * p / 100
        wanted[p] = (int(h), min(int(h) + 1, n - 1), h - int(h))
    ranks = sorted({r for lo, hi, _ in wanted.values() for r in (lo, hi)})
    at, seen, j = {}, 0, 0
    for v in values:
        seen += hist[v]
        while j < len(ranks) and ranks[j] < seen:
            at[ranks[j]] = v
            j += 1
    for p, (lo, hi, frac) in wanted.items():
        x = at[lo] + frac * (at[hi] - at[lo])
        out[f"p{p}"] = int(x) if float(x).is_integer() else round(x, 2)
    return out


def default_epochs(n: int) -> int:
    """The OpenAI cookbook's default epochs (3, within 1..25, for 100..25,000 example-epochs)."""
    if n <= 0:
        return 3
    if n * 3 < 100:
        return min(25, 100 // n)
    if n * 3 > 25_000:
        return max(1, 25_000 // n)
    return 3


def fmt(src: Path, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    enc = get_encoding("o200k_base")
    encode = enc.encode_ordinary
    role_tokens = {r: len(encode(r)) for r in ROLES}  # the six role names: constant, counted once
    loads, dumps, clock = orjson.loads, orjson.dumps, time.perf_counter
    hist_msgs: Counter[int] = Counter()
    hist_tokens: Counter[int] = Counter()
    hist_asst: Counter[int] = Counter()
    errors_by: Counter[str] = Counter()
    warnings_by: Counter[str] = Counter()
    records = invalid = over = clipped = 0
    token_time = 0.0
    with open(folder / "examples.jsonl", "wb", buffering=BUF) as out, \
            open(folder / "problems.jsonl", "wb", buffering=BUF) as probs:
        for lineno, raw in lines(src):
            records += 1
            try:
                rec = loads(raw)
            except orjson.JSONDecodeError:
                rec = None
                errors, warnings = ["invalid_json"], []
            else:
                errors, warnings = check_example(rec)
            if errors or warnings:
                meta = rec.get("meta") if type(rec) is dict else None
                where = f"{meta.get('source')}:{meta.get('line')}" if type(meta) is dict else None
                for severity, cats, tally in (("error", errors, errors_by), ("warning", warnings, warnings_by)):
                    for cat in cats:
                        tally[cat] += 1
                        probs.write(dumps({"record": lineno, "source": where, "severity": severity,
                                           "category": cat}) + b"\n")
                if errors:
                    invalid += 1
                    continue
            t0 = clock()
            msgs = rec["messages"]
            tokens = 3
            asst = 0
            for m in msgs:
                content = m.get("content")
                if len(m) == 2 and type(content) is str:  # role and text
                    role = m["role"]
                    t = len(encode(content))
                    tokens += 3 + role_tokens[role] + t
                    if role == "assistant":
                        asst += t
                    continue
                n = 3
                a = 0
                trained = m["role"] == "assistant" and m.get("weight", 1) != 0
                for key, value in m.items():
                    if key == "role":
                        n += role_tokens[value]
                    elif key == "weight" or value is None:
                        continue
                    else:
                        t = len(encode(value if type(value) is str else dumps(value).decode()))
                        n += t + (key == "name")
                        if trained and key in ("content", "tool_calls", "function_call"):
                            a += t
                tokens += n
                asst += a
            if rec.get("tools"):
                tokens += len(encode(dumps(rec["tools"]).decode()))
            token_time += clock() - t0
            hist_msgs[len(msgs)] += 1
            hist_tokens[tokens] += 1
            hist_asst[asst] += 1
            if tokens > CONTEXT:
                over += 1
                warnings_by["over_token_limit"] += 1
                probs.write(dumps({"record": lineno, "severity": "warning", "category": "over_token_limit"}) + b"\n")
            clipped += min(tokens, CONTEXT)
            keys = list(rec)
            if keys == ["messages", "meta"] or keys == ["messages"]:
                out.write(raw)  # the example as it is: messages, then meta
            else:
                out.write(dumps({k: rec[k] for k in ("messages", "tools", "parallel_tool_calls", "functions", "meta")
                                 if k in rec}) + b"\n")
    valid = sum(hist_tokens.values())
    epochs = default_epochs(valid)
    billable = clipped * epochs
    tokens_stats = percentiles(hist_tokens)
    report = {"target": "openai-chat", "model": MODEL, "token_counter": "tiktoken o200k_base",
              "headline": {"examples": valid, "invalid": invalid, "warnings": sum(warnings_by.values()),
                           "tokens_p50": tokens_stats.get("p50"), "billable_tokens": billable, "epochs": epochs,
                           "est_cost_usd": round(billable * PRICE / 1e6, 4), "records": records},
              "errors": dict(errors_by.most_common()), "warnings": dict(warnings_by.most_common()),
              "stats": {"messages_per_example": percentiles(hist_msgs), "tokens_per_example": tokens_stats,
                        "assistant_tokens_per_example": percentiles(hist_asst)},
              "token_limit": {"model": MODEL, "limit": CONTEXT, "over_limit": over}}
    (folder / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if invalid:
        raise SystemExit(f"{invalid:,} of {records:,} examples are invalid ({dict(errors_by)}); "
                         f"see {folder / 'problems.jsonl'}")
    if valid < 10:
        raise SystemExit(f"{valid} valid examples: fewer than 10, OpenAI's minimum for a training file")
    report["token_seconds"] = token_time
    return report


# ------------------------------------------------------------------------------------------- pass 4: split

SALT = hashlib.blake2b(b"tunepipe.split\x00" + b"0", digest_size=16).digest()  # seed 0, as tunepipe salts it
VALIDATION_BAND = int(0.1 * 2**64)


def normalize(text: str) -> str:
    if text.isascii():
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold()).split())


def user_text(content: Any) -> str:
    if type(content) is str:
        return content
    if type(content) is list:  # content parts: their texts, one per line
        return "\n".join(p["text"] for p in content if type(p) is dict and type(p.get("text")) is str)
    return ""


def split(src: Path, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    loads, dumps, blake2b, sort = orjson.loads, orjson.dumps, hashlib.blake2b, orjson.OPT_SORT_KEYS
    from_bytes = int.from_bytes
    prompts = (array("Q"), array("Q"))  # prompt hashes of train and validation examples, for the leakage check
    counts = [0, 0]
    with open(folder / "train.jsonl", "wb", buffering=BUF) as train, \
            open(folder / "validation.jsonl", "wb", buffering=BUF) as val:
        (folder / "test.jsonl").write_bytes(b"")
        outs = (train, val)
        for _, raw in lines(src):
            rec = loads(raw)
            rec.pop("meta", None)
            u = from_bytes(blake2b(dumps(rec, option=sort), digest_size=8, salt=SALT).digest(), "little")
            s = 1 if u < VALIDATION_BAND else 0
            users = [normalize(user_text(m.get("content"))) for m in rec["messages"] if m.get("role") == "user"]
            if any(users):
                prompt = "\x1f".join(users).encode()
                prompts[s].append(from_bytes(blake2b(prompt, digest_size=8, person=b"tunepipe.prompt").digest(),
                                             "little"))
            counts[s] += 1
            outs[s].write(dumps(rec) + b"\n")
    in_val = set(prompts[1])
    leaks = len({p for p in prompts[0] if p in in_val})
    report = {"examples": sum(counts), "splits": {"train": counts[0], "validation": counts[1], "test": 0},
              "leakage": {"mode": "fail", "prompts": leaks}}
    (folder / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if leaks:
        raise SystemExit(f"{leaks:,} normalized user prompts are in both train and validation")
    if not counts[0]:
        raise SystemExit("the train split is empty")
    return report


# ------------------------------------------------------------------------------------------------------ main

def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1] if __doc__ else "careful_script.py IN.jsonl OUTDIR")
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter
    times: dict[str, float] = {}
    t = clock()
    got = ingest(src, str(src), out / "ingest")
    times["ingest"] = clock() - t
    t = clock()
    cleaned = clean(out / "ingest" / "records.jsonl", out / "clean")
    times["clean"] = clock() - t
    t = clock()
    formatted = fmt(out / "clean" / "records.jsonl", out / "format")
    times["format"] = clock() - t
    times["format_tokens"] = formatted["token_seconds"]
    t = clock()
    splits = split(out / "format" / "examples.jsonl", out / "split")
    times["split"] = clock() - t
    times["passes_without_tokens"] = times["ingest"] + times["clean"] + times["format"] + times["split"] \
        - times["format_tokens"]
    times["total"] = times["ingest"] + times["clean"] + times["format"] + times["split"]
    result = {"seconds": {k: round(v, 3) for k, v in times.items()}, "records": got["records"],
              "kept": cleaned["records_out"], "dropped": cleaned["dropped_by_reason"],
              "examples": formatted["headline"]["examples"], "tokens_p50": formatted["headline"]["tokens_p50"],
              "splits": splits["splits"]}
    (out / "timings.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
