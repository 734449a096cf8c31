"""``pipeline init``: a new project from the files in this folder (shipped as package data).

* ``pipeline.yaml``: a commented pipeline with the built-in data stages (ingest → clean → format
  → split) and a commented-out train/evaluate block;
* ``data/examples.jsonl``: 16 small chat examples (format needs at least 10);
* ``.gitignore``: the cache folder;
* ``pipeline.schema.json``: the editor schema (``pipeline schema``), which the pipeline file's
  ``# yaml-language-server: $schema=`` comment points at.

Existing files are never overwritten: if any of them exists, nothing is written.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunepipe.errors import UserError

HERE = Path(__file__).resolve().parent
TEMPLATES = {"pipeline.yaml": "pipeline.yaml", "data/examples.jsonl": "examples.jsonl", ".gitignore": "gitignore.txt"}
SCHEMA = "pipeline.schema.json"


def planned(target: Path) -> list[Path]:
    return [target / rel for rel in (*TEMPLATES, SCHEMA)]


def init_project(target: Path, schema_text: str) -> list[Path]:
    """Write the project files into ``target`` (created if needed); refuse if any exists."""
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file, not a folder: name a new or existing folder for the project")
    existing = [p for p in planned(target) if p.exists() or p.is_symlink()]
    if existing:
        raise UserError("not overwriting existing files: " + ", ".join(str(p) for p in existing)
                        + ". Run `pipeline init` in a new folder (pipeline init DIR), or move these files away")
    written = []
    folder = target.resolve().name
    name = folder if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", folder) else "my-project"
    try:
        for rel, template in TEMPLATES.items():
            data = (HERE / template).read_bytes()
            if rel == "pipeline.yaml":  # named after its folder
                data = data.replace(b"\nname: my-project\n", f"\nname: {name}\n".encode())
            written.append(_write(target / rel, data))
        written.append(_write(target / SCHEMA, schema_text.encode("utf-8")))
    except FileExistsError as e:  # created meanwhile by someone else: leave theirs alone
        raise UserError(f"not overwriting {e.filename}, which appeared while writing the project") from None
    return written


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:
        f.write(data)
    return path
