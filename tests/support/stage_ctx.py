"""A StageContext for calling a plugin (or a backend) directly in tests, as the runner would."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any


class Notes:
    """The progress notes a run showed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, note: str) -> None:
        self.lines.append(note)


def make_ctx(root: Path, name: str, output: str, shared: Path | None = None, threads: int = 1) -> Any:
    """Output, scratch and shared folders under ``root`` (the output emptied), a logger, and the
    progress notes as ``ctx.notes``."""
    from tunepipe.plugins import StageContext

    scratch = root / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    out = root / "out"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shared_root = shared if shared is not None else root / "shared"

    def area(a: str) -> Path:
        p = shared_root / a
        p.mkdir(parents=True, exist_ok=True)
        return p

    log = logging.getLogger(f"tunepipe.test.{name}.{root.name}")
    log.setLevel(logging.INFO)
    notes = Notes()
    ctx = StageContext(stage=name, key="k" * 16, outputs={output: out}, scratch=scratch, log=log,
                       threads=threads, _progress=notes, _shared=area)
    ctx.notes = notes  # type: ignore[attr-defined]  # read back in tests
    return ctx
