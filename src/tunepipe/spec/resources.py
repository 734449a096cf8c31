"""A stage's ``resources:`` and the pipeline's ``executor:`` as plain, normalised data.

The schema has already checked their shape; here sizes become bytes and the short form
``executor: ray`` becomes ``{"type": "ray"}``. Neither enters a cache key: where a stage runs
does not change what it makes.
"""

from __future__ import annotations

import re
from typing import Any

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """``8GiB`` -> 8589934592; an int is bytes already."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r} (write e.g. 8GiB, 512MiB or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def normalise_resources(raw: dict[str, Any] | None) -> dict[str, Any]:
    """``{cpus, gpus, memory}`` with memory in bytes; only the keys given. A value the schema
    refuses is left out here (the schema's problem, with its line, is what the user sees)."""
    out: dict[str, Any] = {}
    for k, v in (raw or {}).items() if isinstance(raw, dict) else ():
        try:
            out[k] = parse_size(v) if k == "memory" else v
        except (TypeError, ValueError):
            continue
    return out


def normalise_executor(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(raw, (str, dict)):
        return {}
    if isinstance(raw, str):
        return {"type": raw}
    return dict(raw)
