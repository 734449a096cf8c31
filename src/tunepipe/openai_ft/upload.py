"""Find-or-upload: a file whose bytes OpenAI already has is never uploaded again.

An upload is named ``tunepipe-<first 16 hex of its SHA-256>-<role>.jsonl``. Before uploading, the
backend looks for the same bytes in two places:

1. the stage's scratch (``sha256 -> file id``), checked with ``files.retrieve`` (the file may have
   been deleted since), and
2. the account's files (``files.list(purpose="fine-tune")``): a file named ``tunepipe-<sha16>...``
   with the same size in bytes. This finds uploads of earlier runs and other stages, and survives a
   lost scratch folder.

A file in status ``error`` is never reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tunepipe.openai_ft.prepare import Prepared
from tunepipe.openai_ft.state import State

PURPOSE = "fine-tune"
PROCESSING_WAIT_S = 600.0


def matches(file: Any, prepared: Prepared) -> bool:
    """Is this account file (an SDK FileObject) an upload of exactly these bytes?"""
    name = getattr(file, "filename", "") or ""
    return (name.startswith(prepared.stem) and name.endswith(".jsonl")
            and getattr(file, "bytes", None) == prepared.bytes
            and getattr(file, "purpose", PURPOSE) == PURPOSE
            and getattr(file, "status", "processed") != "error")


def find_existing(client: Any, prepared: Prepared, state: State) -> tuple[Any | None, str]:
    """(the account's file with these bytes, where it was found) or (None, "")."""
    import openai

    known = state.files.get(prepared.sha256)
    if known and known.get("id"):
        try:
            file = client.files.retrieve(known["id"])
        except openai.NotFoundError:
            file = None
        if file is not None and matches(file, prepared):
            return file, "scratch"
    for file in client.files.list(purpose=PURPOSE):
        if matches(file, prepared):
            return file, "account"
    return None, ""


def upload(client: Any, prepared: Prepared) -> Any:
    """Upload the prepared file (purpose fine-tune) and return the SDK's FileObject."""
    from tunepipe.openai_ft.client import UPLOAD_TIMEOUT_S

    with open(prepared.path, "rb") as f:
        return client.files.create(file=(prepared.filename, f, "application/jsonl"), purpose=PURPOSE,
                                   timeout=UPLOAD_TIMEOUT_S)


def wait_processed(client: Any, file: Any, check: Callable[[], None], sleep: Callable[[float], None]) -> Any:
    """Wait while the file is ``uploaded`` (not yet ``processed``); ``check`` raises to stop."""
    deadline = time.monotonic() + PROCESSING_WAIT_S
    delay = 0.5
    while getattr(file, "status", "processed") == "uploaded" and time.monotonic() < deadline:
        check()
        sleep(delay)
        delay = min(delay * 1.5, 10.0)
        file = client.files.retrieve(file.id)
    return file
