"""The stage node's files on a Ray Train worker's node: the training data and the base model.

Workers of a multi-node cluster may not see the stage's paths. A worker loads a file where the stage
saw it when its node holds the same bytes there; otherwise it copies it (from :func:`model_origin`
for the model) once per node, through the :class:`~tunepipe.hf.ray_link.Link`, into a per-user
folder of the node's temporary directory that :func:`prune_node_cache` keeps from growing forever.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError

CHUNK = 8 << 20  # bytes per read when a worker copies a file from the coordinator's node
NODE_COPY_DAYS = 7.0  # a node's copy of a model or data file unused this long is removed
UNFINISHED_COPY_HOURS = 24.0  # a copy still being written after this long was left by a killed worker


def model_origin(source: Any) -> str:
    """The folder on this node that holds the base model's files (a hub id: its cached snapshot)."""
    if source.kind != "hub":
        return source.location
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.location, "config.json")
    return str(Path(found).parent) if isinstance(found, str) else source.location


def _node_cache() -> Path:
    return Path(tempfile.gettempdir()) / f"tunepipe-ray-{os.getuid()}"


def prune_node_cache(root: Path, now: float | None = None) -> list[str]:
    """Remove this node's copies unused for ``NODE_COPY_DAYS`` (a use touches a copy) and copies a
    killed worker left half-written, so the folder does not grow with every model and data set a
    long-lived node has trained on. Best effort: a copy another worker removes first is skipped."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        unfinished = entry.name.startswith(".")
        limit = UNFINISHED_COPY_HOURS * 3600 if unfinished else NODE_COPY_DAYS * 86400
        try:
            if now - entry.stat().st_mtime < limit:
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed


def _copy_from_stage(ray: Any, link: Any, origin: str, name: str) -> Path:
    """A copy on this node of the stage node's file or folder ``origin``, kept under ``name`` (which
    names the content) in this node's temporary folder, so each node copies it once."""
    dest = _node_cache() / name
    if dest.is_dir():  # complete: renamed into place only once every file was written
        with contextlib.suppress(OSError):
            os.utime(dest)  # in use: prune_node_cache keeps it
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    prune_node_cache(dest.parent)  # before a new copy adds to the folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for rel, size in ray.get(link.files.remote(origin)):
            source = origin if not rel else f"{origin}/{rel}"
            target = tmp / (rel or Path(origin).name)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                for offset in range(0, size, CHUNK):
                    f.write(ray.get(link.read.remote(source, offset, CHUNK)))
        try:
            os.rename(tmp, dest)
        except OSError:  # another worker of this node finished first
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def data_file(ray: Any, link: Any, ref: tuple[str, str] | None) -> Path | None:
    """The stage's data file on this node: its own path when this node sees it, else a copy."""
    if ref is None:
        return None
    from tunepipe.hf.models import file_sha256

    path, digest = ref
    if Path(path).is_file() and file_sha256(Path(path)) == digest:
        return Path(path)
    return _copy_from_stage(ray, link, path, f"data-{digest[:16]}") / Path(path).name


def _sees_model(source: Any) -> bool:
    """Whether this node holds the very base model the stage resolved, where the stage saw it."""
    from tunepipe.hf import models

    try:
        if source.kind == "hub":
            return models.resolve_base(source.spec, None).identity == source.identity
        folder = Path(source.location)
        if source.kind == "folder":
            return folder.is_dir() and models.resolve_base(str(folder), None).identity == source.identity
        marker = json.loads((folder / models.CONVERTED_MARKER).read_text(encoding="utf-8"))
        return (folder / "config.json").is_file() and f"gguf:{marker.get('sha256')}" == source.identity
    except (UserError, OSError, ValueError):
        return False


def model_source(ray: Any, config: Mapping[str, Any]) -> Any:
    """What this worker loads the base model from: the stage's own location, else a copy of it."""
    from tunepipe.hf.models import BaseSource

    source = config["source"]
    if _sees_model(source):
        return source
    name = "model-" + hashlib.sha256(source.identity.encode()).hexdigest()[:16]
    folder = _copy_from_stage(ray, config["link"], config["origin"], name)
    return BaseSource(source.spec, "folder", str(folder), source.identity)
