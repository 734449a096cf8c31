"""The exact bytes uploaded to OpenAI: each example with only the keys OpenAI accepts, ``meta`` dropped.

A supervised example keeps ``messages``, ``tools``, ``parallel_tool_calls`` and ``functions``; a DPO
example ``input``, ``preferred_output`` and ``non_preferred_output``; always in that order, one
compact JSON object per line (orjson, UTF-8), blank lines skipped. The bytes depend on nothing but
the input records, so the same data always hashes the same and an earlier upload can be reused.
"""

from __future__ import annotations

import contextlib

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunepipe.data import jsonl
from tunepipe.errors import UserError

KEYS = {
    "supervised": ("messages", "tools", "parallel_tool_calls", "functions"),
    "dpo": ("input", "preferred_output", "non_preferred_output"),
}
REQUIRED = {"supervised": "messages", "dpo": "input"}
MAX_FILE_BYTES = 512 * 1024 * 1024  # the Files API's limit per file
NAME_PREFIX = "tunepipe-"
HASH_CHARS = 16


@dataclass(frozen=True)
class Prepared:
    """A file ready to upload: where it is, the SHA-256 of its bytes, its size and examples."""

    path: Path
    sha256: str
    bytes: int
    examples: int
    role: str  # train | validation

    @property
    def stem(self) -> str:
        """What every upload of these bytes is named with: ``tunepipe-<first 16 hex of sha256>``."""
        return f"{NAME_PREFIX}{self.sha256[:HASH_CHARS]}"

    @property
    def filename(self) -> str:
        return f"{self.stem}-{self.role}.jsonl"


def example(record: object, method: str, where: str) -> dict[str, object]:
    """The record as uploaded (OpenAI's keys only), or a UserError saying what is wrong at ``where``."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: not a JSON object; the train stage needs the examples file written by "
                        "format (or split)")
    need = REQUIRED[method]
    if need not in record:
        other = "dpo" if method == "supervised" else "supervised"
        hint = (f"; it looks like a {other} example: set openai.method: {other}"
                if REQUIRED[other] in record else "; run the data through the format stage first")
        raise UserError(f"{where}: no '{need}' key, which a {method} example needs{hint}")
    return {k: record[k] for k in KEYS[method] if k in record}


def prepare(source: Path, folder: Path, role: str, method: str) -> Prepared | None:
    """Write ``source``'s examples as they will be uploaded into ``folder``; None if it has none."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = count = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{role}.", suffix=".jsonl.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            for lineno, raw in jsonl.iter_lines(source):
                try:
                    record = jsonl.loads(raw)
                except jsonl.JSONDecodeError as e:
                    raise UserError(f"{source}:{lineno}: not valid JSON ({e})") from None
                line = jsonl.dumps(example(record, method, f"{source}:{lineno}")) + b"\n"
                out.write(line)
                digest.update(line)
                size += len(line)
                count += 1
                if size > MAX_FILE_BYTES:
                    raise UserError(f"{source}: the {role} file is over OpenAI's 512 MB limit per file; "
                                    "train on fewer examples (e.g. sample them in split)")
        if count == 0:
            os.unlink(tmp)
            return None
        sha = digest.hexdigest()
        prepared = Prepared(folder / f"{NAME_PREFIX}{sha[:HASH_CHARS]}-{role}.jsonl", sha, size, count, role)
        os.replace(tmp, prepared.path)
        return prepared
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
