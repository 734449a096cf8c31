"""A careful single-process streaming script doing the data stages' work by hand (the baseline).

ingest (parse, check messages, provenance) -> clean (NFC, control characters, whitespace, e-mail /
phone / card / secret redaction, exact dedupe on normalised text) -> format (role and key checks,
exact token counts with tiktoken, the cookbook's count) -> split (hash of the example -> train or
validation, written without meta). One fused pass, orjson, one core: what a skilled engineer
would write for a one-off job. Usage: careful.py IN.jsonl OUTDIR
"""

from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from tunepipe.data.tokens import get_encoding  # noqa: E402  (offline tiktoken seeding only)

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SPACES = re.compile(r"[ \t]+")
# One alternation, one scan per text, and only texts that can match are scanned at all.
PII = re.compile(r"(?P<EMAIL>[\w.+-]+@[\w-]+\.[\w.-]+)"
                 r"|(?P<SECRET>\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{36})\b)"
                 r"|(?P<CREDIT_CARD>\b(?:\d[ -]?){13,19}\b)"
                 r"|(?P<PHONE>\+?\d[\d ()-]{8,}\d)")
MAYBE = re.compile(r"@|\d{3}|sk-|AKIA|ghp_")
ROLES = {"system", "user", "assistant", "tool"}


def clean_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = CONTROL.sub("", text)
    text = SPACES.sub(" ", text).strip()
    if MAYBE.search(text):
        text = PII.sub(lambda m: f"[{m.lastgroup}]", text)
    return text


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    enc = get_encoding("o200k_base")
    seen: set[bytes] = set()
    tokens: list[int] = []
    with open(src, "rb") as f, open(out / "train.jsonl", "wb", buffering=1 << 20) as train, \
            open(out / "validation.jsonl", "wb", buffering=1 << 20) as val:
        for lineno, line in enumerate(f, start=1):
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            msgs = rec.get("messages") if isinstance(rec, dict) else None
            if not isinstance(msgs, list):
                continue
            kept = []
            for m in msgs:
                if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                    break
                content = clean_text(m["content"])
                if content:
                    kept.append({"role": m["role"], "content": content})
            else:
                if not any(m["role"] == "assistant" for m in kept):
                    continue
                key = hashlib.blake2b(" ".join(m["content"].casefold() for m in kept).encode(), digest_size=16).digest()
                if key in seen:
                    continue
                seen.add(key)
                n = 3
                for m in kept:
                    n += 3 + len(enc.encode_ordinary(m["content"])) + 1  # role is one token
                tokens.append(n)
                example = orjson.dumps({"messages": kept})
                bucket = hashlib.blake2b(example, digest_size=8).digest()[0]
                (val if bucket < 26 else train).write(example + b"\n")
    tokens.sort()
    print(f"examples={len(tokens)} p50={tokens[len(tokens) // 2]}")


if __name__ == "__main__":
    main()
