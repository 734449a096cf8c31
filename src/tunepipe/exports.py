"""The export contract: the formats a trained model may be exported in, and what an export wrote.

It sits beside :mod:`tunepipe.modelref` and :mod:`tunepipe.replies`, below the backends and their
engines, so an engine (``hf``) writes exports without importing the backend layer above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXPORT_FORMATS = ("hf-adapter", "merged", "gguf")  # what `export` may be asked for


@dataclass(frozen=True)
class Exported:
    """What a backend's ``export`` wrote: the format, the folder, its files (relative names) and a
    note for the user (e.g. why no weights were written)."""

    format: str
    folder: Path
    files: tuple[str, ...] = ()
    note: str = ""
