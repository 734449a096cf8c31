"""Facts about other processes that several layers need (lock owners, a pool's parent)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """``pid`` is running (or a zombie: only a pidfd tells those apart); another user's counts."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
