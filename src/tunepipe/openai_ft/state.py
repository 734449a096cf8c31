"""What the backend keeps in the stage's scratch folder, written so that a crash never loses it.

``openai.json`` holds the job id (written the moment ``jobs.create`` returns, before any polling),
the ids of uploaded files by content hash, the last event id logged, and the jobs of this stage key
that ended failed or cancelled. Every write is a whole new file: temporary file, fsync, ``os.replace``,
then an fsync of the folder so the rename itself survives a power cut. A reader sees the old state or
the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.cache.atomic import write_bytes

STATE_FILE = "openai.json"
VERSION = 1


@dataclass
class State:
    job_id: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # sha256 -> {id, bytes, filename}
    last_event_id: str | None = None
    ended: list[dict[str, Any]] = field(default_factory=list)  # jobs of this key that failed or were cancelled


def load(scratch: Path) -> State:
    """The saved state, or a fresh one (no file, or one from another version or unreadable)."""
    try:
        data = json.loads((scratch / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return State()
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return State()
    return State(job_id=data.get("job_id"), files=dict(data.get("files") or {}),
                 last_event_id=data.get("last_event_id"), ended=list(data.get("ended") or []))


def save(scratch: Path, state: State) -> None:
    """Write the state durably (see the module's docstring)."""
    scratch.mkdir(parents=True, exist_ok=True)
    payload = {"version": VERSION, **asdict(state)}
    write_bytes(scratch / STATE_FILE, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode())
    fd = os.open(scratch, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
