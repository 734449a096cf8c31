"""The cache on disk: immutable content-addressed artifacts and one record per stage-run key.

Layout under the cache root::

    objects/ab/<digest>/   published artifacts (folders; files read-only)
    manifests/ab/<digest>.json  each artifact's file sizes, written at publish (a cheap check)
    keys/ab/<key>.json     what a key produced: output digests, key parts, summary
    locks/                 per-key locks and their owner files
    tmp/<key>.<pid>.<n>/   a running stage's private output folders (never read by others)
    scratch/<key>/         a stage's checkpoints; survives a crash of that key, removed on success
    shared/<area>/         derived files reused by any stage (e.g. a packaged model converted once)
    state/<pipeline>.json  the last key of each stage of a pipeline (for status and --explain)
    runs/<pipeline>-<hash>/ run records and stage logs (hash: of the pipeline file's path)
    compiled/              validated specs (see tunepipe.spec)

Commit order: outputs are hashed and renamed into ``objects/`` (atomic), then the key record is
written (atomic). A crash before the record leaves at most an unreferenced object, which the
next run reuses by content or ``cache gc`` removes; there is never a half-written artifact.
An artifact's manifest is written before its folder is renamed into place, so whoever sees the
artifact can check it cheaply (:meth:`LocalStore.damage`: it exists, and its files and their sizes
are those published) before trusting it; artifacts published before manifests existed get the
existence check only, until ``cache verify --repair`` writes theirs.
``Store`` is the interface the runner needs; :class:`LocalStore` is the local-folder one (a
shared-storage store for a cluster fits the same shape).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunepipe.cache.atomic import write_json
from tunepipe.cache.digests import DigestMemo, output_digest, tree_digest, tree_entries
from tunepipe.cache.diskerrors import remember_root
from tunepipe.cache.integrity import downstream, file_sizes, maker_lines, object_damage, reader_lines
from tunepipe.cache.locks import KeyLock
from tunepipe.errors import CacheError, OutputError, UserError

LAYOUT_VERSION = "1"
_counter = itertools.count()


class Store(Protocol):
    """What the runner needs from a cache."""

    root: Path
    digests: DigestMemo

    def record(self, key: str) -> dict[str, Any] | None: ...
    def put_record(self, key: str, record: dict[str, Any]) -> None: ...
    def object_path(self, digest: str) -> Path: ...
    def fetch(self, digest: str) -> Path: ...
    def location(self) -> str: ...
    def staging(self, key: str) -> Path: ...
    def clear_staging(self, key: str) -> None: ...
    def scratch(self, key: str) -> Path: ...
    def shared(self, area: str) -> Path: ...
    def drop_scratch(self, key: str) -> None: ...
    def publish(self, folder: Path) -> str: ...
    def damage(self, digest: str) -> str | None: ...
    def discard(self, digest: str) -> None: ...
    def lock(self, key: str, what: str, say: Callable[[str], None]) -> Any: ...  # a KeyLock or a lease
    def sweep_leftovers(self, dry_run: bool = False, say: Callable[[str], None] = ...) -> list[str]: ...


def _shard(base: Path, name: str, suffix: str = "") -> Path:
    return base / name[:2] / f"{name}{suffix}"


def _force_rmtree(path: Path) -> None:
    """Remove a tree even where a failed stage left read-only folders behind."""

    def onerror(func: Callable[..., Any], p: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(p), 0o755)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o755)
        func(p)

    if path.exists():
        shutil.rmtree(path, onerror=onerror)


def fetch_intact(store: Store, digest: str, name: str) -> Path:
    """The folder of a stored input, checked cheaply: a damaged copy must fail the stage with the
    cache's fault and its fix, not with the plugin's puzzlement about what it finds there. (A
    missing one fails in ``fetch``, whose advice, run again, recomputes it.)"""
    path = store.fetch(digest)
    problem = store.damage(digest)
    if problem is not None:
        raise CacheError(f"the cache's copy of the input {name} (artifact {digest[:12]}) is damaged ({problem}): "
                         "run `pipeline cache verify --repair`, then run the pipeline again")
    return path


@dataclass
class VerifyReport:
    objects: int = 0
    records: int = 0
    corrupt: list[str] = field(default_factory=list)  # digests whose content no longer matches
    missing: list[tuple[str, str]] = field(default_factory=list)  # (key, digest) of records without objects
    unreadable: list[str] = field(default_factory=list)  # record files that do not parse
    dropped: list[tuple[str, str, str]] = field(default_factory=list)  # (key, stage, why) made from corrupt data

    @property
    def clean(self) -> bool:
        return not (self.corrupt or self.missing or self.unreadable or self.dropped)


@dataclass
class GcReport:
    records: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    stages: dict[str, str] = field(default_factory=dict)  # record key -> its stage's name (for listing)
    sizes: dict[str, int] = field(default_factory=dict)  # object digest -> bytes

    def lines(self, verb: str) -> list[str]:
        """One line per thing removed (or that would be), for ``cache gc -n``."""
        out = [f"{verb} record {k[:16]} (stage '{self.stages.get(k, '?')}')" for k in self.records]
        out += [f"{verb} artifact {d[:16]} ({self.sizes.get(d, 0) / 1e6:.1f} MB)" for d in self.objects]
        return out + [f"{verb} leftover {p}" for p in self.leftovers]


def _stage_of(record_path: Path) -> str:
    try:
        return str(json.loads(record_path.read_text(encoding="utf-8")).get("stage", "?"))
    except (OSError, ValueError, AttributeError):
        return "?"


class LocalStore:
    """A cache in a local (or shared, POSIX) folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        try:
            for sub in ("objects", "manifests", "keys", "locks", "tmp", "scratch", "state", "runs", "compiled"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            marker = self.root / "CACHEDIR.TAG"
            if not marker.exists():
                marker.write_text("Signature: 8a477f597d28d172789f06886806bc55\n"
                                  f"# tunepipe cache, layout {LAYOUT_VERSION}. Safe to delete.\n")
        except OSError as e:  # under a file, read-only, no permission, full: the user's to fix (exit 2)
            raise UserError(f"cannot use the cache folder {self.root}: {e.strerror}"
                            f"{f' ({e.filename})' if e.filename else ''}. Pass a writable folder with "
                            "--cache-dir or TUNEPIPE_CACHE") from None
        self.digests = DigestMemo(self.root / "digests.json")
        remember_root(self.root)

    # records -------------------------------------------------------------------------------
    def record_path(self, key: str) -> Path:
        return _shard(self.root / "keys", key, ".json")

    def record(self, key: str) -> dict[str, Any] | None:
        """The record of a key whose every output is present and looks whole (``damage``), else None."""
        try:
            rec = json.loads(self.record_path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if any(self.damage(d) is not None for d in rec.get("outputs", {}).values()):
            return None
        return rec

    def put_record(self, key: str, record: dict[str, Any]) -> None:
        path = self.record_path(key)
        path.parent.mkdir(exist_ok=True)
        write_json(path, record)

    def iter_records(self) -> Iterator[tuple[str, Path]]:
        for p in sorted((self.root / "keys").glob("*/*.json")):
            yield p.stem, p

    # objects -------------------------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        return _shard(self.root / "objects", digest)

    def fetch(self, digest: str) -> Path:
        """The local folder of a published object (a remote store downloads it first)."""
        path = self.object_path(digest)
        if not path.is_dir():
            raise CacheError(f"the cache has no object {digest[:12]} (was it removed by 'cache gc'?); "
                             "run the pipeline again to recompute it")
        return path

    def location(self) -> str:
        """How another process (a cluster worker) opens this same cache: ``open_store(location)``."""
        return str(self.root)

    def manifest_path(self, digest: str) -> Path:
        return _shard(self.root / "manifests", digest, ".json")

    def manifest(self, digest: str) -> dict[str, int] | None:
        """The file sizes recorded when ``digest`` was published; None if there are none (an older
        cache) or they do not parse."""
        try:
            m = json.loads(self.manifest_path(digest).read_text(encoding="utf-8"))
            sizes = m["sizes"]
            if m["digest"] == digest and all(isinstance(v, int) for v in sizes.values()):
                return sizes
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

    def _put_manifest(self, digest: str, sizes: Mapping[str, int]) -> None:
        path = self.manifest_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"digest": digest, "files": len(sizes), "bytes": sum(sizes.values()), "sizes": dict(sizes)})

    def damage(self, digest: str) -> str | None:
        """Why the stored copy of an artifact cannot be trusted, cheaply (it exists; its files and
        their sizes are those published), else None. ``cache verify`` rehashes everything."""
        return object_damage(self.object_path(digest), self.manifest(digest))

    def discard(self, digest: str) -> None:
        """Take a damaged artifact out of ``objects/`` with one rename, then delete it, so the same
        bytes can be published again and no reader sees it half-deleted. Should the copy moved
        aside be whole after all (republished meanwhile by another process), it goes back."""
        path = self.object_path(digest)
        aside = self.root / "tmp" / f"{digest}.damaged.{os.getpid()}.{next(_counter)}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        sizes = self.manifest(digest)
        if sizes is not None and object_damage(aside, sizes) is None:
            try:
                os.rename(aside, path)
                return
            except OSError:
                pass  # yet another copy is in place: keep that one
        _force_rmtree(aside)

    def publish(self, folder: Path) -> str:
        """Move a finished output folder into the store under its digest; returns the digest.
        A damaged stored copy of the same bytes is replaced."""
        entries = tree_entries(folder)
        for rel, p, st in entries:
            if stat.S_ISLNK(st.st_mode):
                raise OutputError(f"the output {folder.name} contains a symbolic link ({rel}); write real files")
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o222)
        digest = tree_digest(folder, digest_of=output_digest)
        dest = self.object_path(digest)
        dest.parent.mkdir(exist_ok=True)
        self._put_manifest(digest, file_sizes(entries))  # first: whoever sees the object can check it
        if dest.is_dir() and self.damage(digest) is not None:
            self.discard(digest)
        if dest.is_dir():
            _force_rmtree(folder)  # the same bytes are already stored
            return digest
        try:
            os.rename(folder, dest)
        except OSError:
            if not dest.is_dir():
                raise
            _force_rmtree(folder)  # another process published the same content meanwhile
        return digest

    # running stages --------------------------------------------------------------------------
    def staging(self, key: str) -> Path:
        path = self.root / "tmp" / f"{key}.{os.getpid()}.{next(_counter)}"
        path.mkdir(parents=True)
        return path

    def clear_staging(self, key: str) -> None:
        """Remove what crashed runs of ``key`` left behind. Call only while holding the key's lock."""
        for p in (self.root / "tmp").glob(f"{key}.*"):
            _force_rmtree(p)

    def scratch(self, key: str) -> Path:
        path = self.root / "scratch" / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def shared(self, area: str) -> Path:
        """A folder for derived files any stage may reuse (content-named by its writer, who writes
        under a temporary name and renames, so a reader never sees half a file)."""
        path = self.root / "shared" / area
        path.mkdir(parents=True, exist_ok=True)
        return path

    def drop_scratch(self, key: str) -> None:
        _force_rmtree(self.root / "scratch" / key)

    def lock(self, key: str, what: str, say: Callable[[str], None]) -> KeyLock:
        return KeyLock(self.root / "locks", key, what, say)

    def sweep_leftovers(self, dry_run: bool = False, say: Callable[[str], None] = lambda _m: None) -> list[str]:
        """Remove staging folders of runs that died (their key's lock is free); returns their names."""
        removed = []
        for leftover in sorted((self.root / "tmp").iterdir()):
            lock = self.lock(leftover.name.split(".")[0], "a stage", say)
            if lock.try_acquire():  # nobody runs this key: whatever is here is left from a crash
                try:
                    removed.append(leftover.name)
                    if not dry_run:
                        _force_rmtree(leftover)
                finally:
                    lock.release()
        return removed

    # maintenance -----------------------------------------------------------------------------
    def verify(self, repair: bool = False) -> VerifyReport:
        """Recompute every object's digest and check every record's outputs exist. Records built
        from a corrupt object, directly or through other records, are reported too: whatever read
        it may have read the damage. ``repair`` drops all of them and the corrupt objects, and
        writes the manifests that intact objects lack (or that no longer fit them)."""
        report = VerifyReport()
        for obj in sorted((self.root / "objects").glob("*/*")):
            if not obj.is_dir():
                continue
            report.objects += 1
            if tree_digest(obj) != obj.name:
                report.corrupt.append(obj.name)
            elif repair:
                self._fit_manifest(obj)
        bad = set(report.corrupt)
        records: dict[str, dict[str, Any]] = {}
        for key, path in self.iter_records():
            report.records += 1
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
                outputs = rec["outputs"]
                records[key] = rec
                digests = list(outputs.values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                report.unreadable.append(key)
                if repair:
                    path.unlink(missing_ok=True)
                continue
            for digest in digests:
                if digest not in bad and not self.object_path(digest).is_dir():
                    report.missing.append((key, digest))
            if repair and any(d in bad or not self.object_path(d).is_dir() for d in digests):
                path.unlink(missing_ok=True)
        tainted = downstream(records, bad)
        makers = maker_lines(records, bad)
        made = {key for key, _stage, _why in makers}
        report.dropped = makers + reader_lines(records, bad, {k: d for k, d in tainted.items() if k not in made})
        if repair:
            for key in tainted:
                self.record_path(key).unlink(missing_ok=True)
            for digest in report.corrupt:
                _force_rmtree(self.object_path(digest))
            self._drop_orphan_manifests()
        return report

    def _fit_manifest(self, obj: Path) -> None:
        """Give an object that hashed intact the manifest it lacks (published before manifests
        existed) or one that fits it again."""
        sizes = file_sizes(tree_entries(obj))
        if self.manifest(obj.name) != sizes:
            self._put_manifest(obj.name, sizes)

    def _drop_orphan_manifests(self) -> None:
        """Remove the manifests of objects that are gone (a publish that crashed before its rename,
        or a removed object)."""
        for path in (self.root / "manifests").glob("*/*.json"):
            if not self.object_path(path.stem).is_dir():
                path.unlink(missing_ok=True)

    def gc(self, keep: set[str], dry_run: bool = False) -> GcReport:
        """Remove records not in ``keep``, objects no kept record uses, and dead runs' leftovers."""
        report = GcReport()
        used: set[str] = set()
        for key, path in self.iter_records():
            if key in keep:
                try:
                    used.update(json.loads(path.read_text(encoding="utf-8"))["outputs"].values())
                except (OSError, ValueError, KeyError):
                    pass
            else:
                report.records.append(key)
                report.stages[key] = _stage_of(path)
                if not dry_run:
                    path.unlink(missing_ok=True)
        for obj in sorted((self.root / "objects").glob("*/*")):
            if obj.name not in used:
                report.objects.append(obj.name)
                report.sizes[obj.name] = sum(e[2].st_size for e in tree_entries(obj)) if obj.is_dir() else 0
                report.freed_bytes += report.sizes[obj.name]
                if not dry_run:
                    _force_rmtree(obj)
        report.leftovers = self.sweep_leftovers(dry_run=dry_run)
        if not dry_run:
            self._drop_orphan_manifests()
            for spec in (self.root / "compiled").glob("*.json"):
                spec.unlink(missing_ok=True)
        return report
