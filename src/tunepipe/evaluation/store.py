"""Replies kept per side, so that work is never done twice.

* While a side runs, each reply is appended to a file in the stage's scratch (it survives a crash
  or Ctrl-C of this very stage run): a rerun resumes with the examples still missing.
* A finished side is written to the cache's shared area ``evaluate`` under a name derived from
  everything that decides the replies (the model's identity, the prompts, the decoding, the
  generation settings). Another run that would produce the same replies (say only a gate or a
  metric changed, which changes the stage key) reads them instead of generating again: no
  minutes of local generation, no second API bill.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.cache.atomic import canonical_json, write_bytes
from tunepipe.replies import Reply

FORMAT = "tunepipe-replies/1"


def identity_key(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json({"format": FORMAT, **identity}).encode()).hexdigest()[:32]


def digest_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


class ReplyStore:
    """The replies of one side (``base``, ``tuned``, ``judge-tuned``...) for one identity."""

    def __init__(self, shared: Path, scratch: Path, side: str, identity: Mapping[str, Any],
                 log: logging.Logger | None = None) -> None:
        self.side = side
        self.key = identity_key(identity)
        self.final = shared / f"{side}-{self.key}.jsonl"
        self.partial = scratch / f"replies-{side}-{self.key[:16]}.jsonl"
        self.log = log or logging.getLogger(__name__)
        self.reused = 0  # replies found (finished or partial) instead of generated

    def load(self) -> dict[int, Reply]:
        """Replies already made: all of them from the shared area, else those of an interrupted run."""
        for path, complete in ((self.final, True), (self.partial, False)):
            if not path.is_file():
                continue
            found: dict[int, Reply] = {}
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        found[int(rec.pop("index"))] = Reply.from_dict(rec)
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by a crash
            if found:
                self.reused = len(found)
                what = "reused" if complete else "resumed with"
                self.log.info("%s: %s %d replies from %s", self.side, what, len(found), path)
                return found
        return {}

    def add(self, index: int, reply: Reply) -> None:
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        with open(self.partial, "a", encoding="utf-8") as f:
            f.write(json.dumps({"index": index, **reply.as_dict()}, ensure_ascii=False) + "\n")

    def finish(self, replies: Mapping[int, Reply]) -> None:
        """Keep the whole side in the shared area (atomically) and drop the partial file."""
        lines = [json.dumps({"index": i, **replies[i].as_dict()}, ensure_ascii=False) for i in sorted(replies)]
        self.final.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(self.final, ("\n".join(lines) + "\n").encode())
        self.partial.unlink(missing_ok=True)
