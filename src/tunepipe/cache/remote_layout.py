"""Where things live in a remote cache (``s3://bucket/prefix``), and the manifest that commits an
artifact there (see :mod:`tunepipe.cache.remote` for the layout and the commit order)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from tunepipe.cache.digests import file_digest, tree_digest, tree_entries
from tunepipe.cache.store import LAYOUT_VERSION

LOCAL_ENV = "TUNEPIPE_LOCAL_CACHE"
MANIFEST = re.compile(r"objects/[0-9a-f]{2}/([0-9a-f]{64})\.json")
OBJECT_FILE = re.compile(r"objects/[0-9a-f]{2}/([0-9a-f]{64})/.+")
RECORD = re.compile(r"keys/[0-9a-f]{2}/([0-9a-f]{64})\.json")
LEASE = re.compile(r"locks/(.+)\.lease")


def _shard(base: str, name: str, suffix: str = "") -> str:
    return f"{base}/{name[:2]}/{name}{suffix}"


def object_rel(digest: str) -> str:
    return _shard("objects", digest)


def manifest_rel(digest: str) -> str:
    return _shard("objects", digest, ".json")


def record_rel(key: str) -> str:
    return _shard("keys", key, ".json")


def lease_rel(key: str) -> str:
    return f"locks/{key}.lease"


def default_local_root(url: str) -> Path:
    """Where this machine keeps its working cache for ``url``."""
    if os.environ.get(LOCAL_ENV):
        return Path(os.environ[LOCAL_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tunepipe" / "remote" / hashlib.sha256(url.encode()).hexdigest()[:16]


def build_manifest(folder: Path) -> tuple[str, dict[str, Any]]:
    """The tree digest of a published folder and its manifest (one hashing pass)."""
    sums: dict[Path, str] = {}

    def record(p: Path) -> str:
        sums[p] = file_digest(p)
        return sums[p]

    digest = tree_digest(folder, digest_of=record)
    dirs, files = [], []
    for rel, p, st in tree_entries(folder):
        if stat.S_ISDIR(st.st_mode):
            dirs.append(rel)
        else:
            files.append({"path": rel, "size": st.st_size, "sha256": sums[p], "x": bool(st.st_mode & stat.S_IXUSR)})
    return digest, {"layout": LAYOUT_VERSION, "digest": digest, "dirs": dirs, "files": files}


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The tree digest a manifest describes (``tree_digest``'s format, from the listed entries)."""
    lines = [(d, f"d {d}\n") for d in manifest["dirs"]]
    lines += [(f["path"], f"f {'x' if f['x'] else '-'} {f['sha256']} {f['path']}\n") for f in manifest["files"]]
    h = hashlib.sha256(b"tunepipe-tree-v1\n")
    for _, line in sorted(lines, key=lambda e: e[0]):
        h.update(line.encode())
    return h.hexdigest()


def parse_record(raw: bytes | None) -> dict[str, Any] | None:
    """A record with an ``outputs`` mapping, else None (unreadable: recompute it; ``cache verify``
    reports it)."""
    try:
        rec = json.loads(raw) if raw else None
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("outputs"), dict) else None


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return parse_record(path.read_bytes())
    except OSError:
        return None


def parse_manifest(raw: bytes, digest: str) -> dict[str, Any] | None:
    """The manifest if it is well-formed and describes ``digest``, else None."""
    try:
        m = json.loads(raw)
        if manifest_digest(m) == digest and all(isinstance(f["size"], int) for f in m["files"]):
            return m
    except (ValueError, KeyError, TypeError):
        pass
    return None
