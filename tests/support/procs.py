"""Picklable functions about the process they run in, importable by any worker process (forked,
spawned or from a forkserver), unlike a test module's own functions."""

from __future__ import annotations

import os


def parent_pid(_: object) -> int:
    return os.getppid()
