"""Fault injection for the crash-safety tests, low enough for any module to import (the executor,
the cache, the backends): ``TUNEPIPE_CRASHPOINT=NAME`` kills the process at the point named NAME."""

from __future__ import annotations

import os
import signal

CRASHPOINT_ENV = "TUNEPIPE_CRASHPOINT"


def crashpoint(name: str) -> None:
    """SIGKILL this process here when ``$TUNEPIPE_CRASHPOINT`` is ``name``: no cleanup runs, as in a
    power cut, so the tests see what a real crash leaves behind."""
    if os.environ.get(CRASHPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
