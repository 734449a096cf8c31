"""Keep secrets (API keys, tokens) out of logs, run records and cache keys.

A secret is the value, eight characters or longer, of an environment variable whose name says it
is one (``*_KEY`` such as ``OPENAI_API_KEY``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``), or whose
name a stage declared as holding one (``openai.api_key_env: MYCREDS``, through its plugin's
``secret_env`` hook: see :func:`add_secret_names`). Declared names are kept in the environment
(``TUNEPIPE_SECRET_ENV``, comma-separated) so that the processes a run starts (worker pools, a
local Ray, child ``pipeline`` runs) treat them as secrets too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

_SECRET_NAME = re.compile(r"(_KEY$|^KEY$|TOKEN|SECRET|PASSWORD|PASSWD)", re.IGNORECASE)
MIN_LENGTH = 8
SECRET_ENV = "TUNEPIPE_SECRET_ENV"


def declared_names() -> list[str]:
    """The variables declared secret for this run (see :func:`add_secret_names`)."""
    return [n for n in (p.strip() for p in os.environ.get(SECRET_ENV, "").split(",")) if n]


def add_secret_names(names: Iterable[str]) -> None:
    """Treat these environment variables as secrets from now on, in this process and the ones it
    starts. Names the pattern already covers are not stored."""
    known = declared_names()
    new = [n for n in dict.fromkeys(names) if n and n not in known and not _SECRET_NAME.search(n)]
    if new:
        os.environ[SECRET_ENV] = ",".join([*known, *new])


def secret_values() -> dict[str, str]:
    """Secret environment values by variable name (read each time: tests and users change them).
    Surrounding whitespace is not part of a value (a key pasted from a file ends with a newline)."""
    declared = set(declared_names())
    found = {}
    for name, value in os.environ.items():
        if name == SECRET_ENV:  # names, not a secret (its own name matches the pattern)
            continue
        if name in declared or _SECRET_NAME.search(name):
            value = value.strip()
            if len(value) >= MIN_LENGTH:
                found[name] = value
    return found


def redact(text: str) -> str:
    for name, value in secret_values().items():
        if value in text:
            text = text.replace(value, f"<{name}>")
    return text


def find_secret(text: str) -> str | None:
    """The name of the environment variable whose secret value occurs in ``text``, if any."""
    for name, value in secret_values().items():
        if value in text:
            return name
    return None
