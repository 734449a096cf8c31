"""Run a command and report its wall time and the peak RSS of its whole process tree.

The tree matters: stages use worker processes, so the parent's own RSS would understate memory.
RSS is sampled every 20 ms with psutil (a short spike between samples can be missed).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def measure(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds, peak MB of the summed RSS of the process and its descendants)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peak = max(peak, total)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    elapsed = time.perf_counter() - t0
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return elapsed, peak / 1e6
