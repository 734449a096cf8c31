"""Keep secrets (API keys, tokens) out of logs, run records and cache keys.

A secret is the value of an environment variable whose name says it is one (``*_KEY``,
``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``), eight characters or longer.
"""

from __future__ import annotations

import os
import re

_SECRET_NAME = re.compile(r"(_KEY$|^KEY$|TOKEN|SECRET|PASSWORD|PASSWD)", re.IGNORECASE)
MIN_LENGTH = 8


def secret_values() -> dict[str, str]:
    """Secret environment values by variable name (read each time: tests and users change them)."""
    return {k: v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= MIN_LENGTH}


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
