"""The cache on object storage (``s3://bucket/prefix``): every machine that opens the URL shares it.

Tiered like a DVC remote, but transparent. Each process works in a *local working cache* (a
:class:`LocalStore`: ``$TUNEPIPE_LOCAL_CACHE``, else ``~/.cache/tunepipe/remote/<hash of the
URL>``) that holds what is private to a machine (staging folders, checkpoints, ``shared/``, pipeline
state, run records, validated specs) and a mirror of the artifacts it used. The remote holds the
truth for what machines share::

    <prefix>/tunepipe-cache.json            the layout marker (``cache verify/gc`` look for it)
    <prefix>/objects/ab/<digest>/<files>    an artifact's files
    <prefix>/objects/ab/<digest>.json       its manifest: folders, files, sizes, sha256, x bits
    <prefix>/keys/ab/<key>.json             a key's record
    <prefix>/locks/<key>.lease              who computes a key now (:mod:`tunepipe.cache.leases`)

Commit order, as in the local cache: an artifact's files are uploaded, then its manifest (the
commit marker: an artifact without one does not exist for readers), then the records that use it,
first on the remote, then in the working cache. A crash at any point leaves only unmarked files,
which the next publish overwrites and ``cache gc`` removes. Artifacts are fetched lazily: a
cached stage costs one GET of its record (and a HEAD per output) on a machine that has not seen
it, nothing on one that has; its files are downloaded only where a stage reads them
(:meth:`RemoteStore.fetch`), and checked against their digest before anyone sees them.

Credentials come only from the environment (the standard ``AWS_*`` variables, ``AWS_PROFILE``;
``AWS_ENDPOINT_URL`` for S3-compatible storage such as MinIO): never from the URL, and they never
appear in :meth:`RemoteStore.location`, records or messages.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunepipe.cache.digests import file_digest, tree_digest
from tunepipe.cache.integrity import downstream, reader_lines
from tunepipe.cache.leases import LeaseLock, read_lease
from tunepipe.cache.remote_layout import (LEASE, LOCAL_ENV, MANIFEST, OBJECT_FILE, RECORD, build_manifest,
                                          default_local_root, lease_rel, manifest_rel, object_rel, parse_manifest,
                                          parse_record, read_record, record_rel)
from tunepipe.cache.s3 import Remote
from tunepipe.cache.store import GcReport, LocalStore, VerifyReport, _force_rmtree
from tunepipe.crash import crashpoint
from tunepipe.errors import CacheError, UserError

class RemoteStore:
    """A cache whose artifacts and records live on object storage (the :class:`Store` protocol)."""

    def __init__(self, url: str, local_root: Path | None = None) -> None:
        self.remote = Remote(url)
        self.url = self.remote.url
        root = (local_root or default_local_root(self.url)).absolute()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {root}, the local working cache of {self.url}: {e.strerror}. "
                            f"Set {LOCAL_ENV} to a writable folder") from None
        self.local = LocalStore(root)
        self.root = self.local.root
        self.digests = self.local.digests
        self.say: Callable[[str], None] = lambda _m: None  # where maintenance notes go (cache verify/gc)
        self._present: set[str] = set()  # digests whose manifest this process has seen on the remote
        self._mutex = threading.Lock()

    def location(self) -> str:
        """The URL only: another machine opens the same cache with ``open_store(location)``."""
        return self.url

    def is_cache(self) -> bool:
        """Whether anything was ever stored here (maintenance never creates a cache)."""
        return self.remote.marked

    def _has(self, *digests: str) -> bool:
        """Whether the remote holds all these artifacts (their manifests exist)."""
        unknown = sorted(set(digests) - self._present)
        found = [d for d, head in zip(unknown, self.remote.heads([manifest_rel(d) for d in unknown])) if head]
        with self._mutex:
            self._present.update(found)
        return len(found) == len(unknown)

    # records ---------------------------------------------------------------------------------
    def record_path(self, key: str) -> Path:
        """The working cache's copy of a record (what ``--explain`` diffs with)."""
        return self.local.record_path(key)

    def record(self, key: str) -> dict[str, Any] | None:
        """The record of a key whose outputs all exist (here, or on the remote), else None.

        A record this machine wrote, or found on the remote with all its artifacts, is kept in the
        working cache and trusted from then on: a cached rerun makes no request at all. Should an
        artifact vanish from the remote after all (``cache verify --repair`` elsewhere), the
        :meth:`fetch` that misses it forgets the records that use it, so the next run recomputes."""
        rec = read_record(self.local.record_path(key))
        if rec is not None:
            return rec
        rec = parse_record(self.remote.get(record_rel(key)))
        if rec is None:
            return None
        if not self._has(*(d for d in rec["outputs"].values() if not self.local.object_path(d).is_dir())):
            return None
        self.local.put_record(key, rec)
        return rec

    def put_record(self, key: str, record: dict[str, Any]) -> None:
        """Remote first (its artifacts are there already), then the working cache: a record here
        means every machine can find it."""
        if not self._has(*record.get("outputs", {}).values()):
            raise CacheError(f"cannot record {key[:12]} in {self.url}: one of its artifacts is not there (was it "
                             "removed meanwhile?); run the pipeline again")
        self.remote.mark()
        self.remote.put(record_rel(key), (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode())
        self.local.put_record(key, record)

    # objects ---------------------------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        """Where the artifact is (or will be, once fetched) on this machine."""
        return self.local.object_path(digest)

    def publish(self, folder: Path) -> str:
        """Publish in the working cache, then upload the files and, last, the manifest."""
        digest = self.local.publish(folder)
        if not self._has(digest):
            self._upload(digest)
        return digest

    def _upload(self, digest: str) -> None:
        obj = self.local.object_path(digest)
        actual, manifest = build_manifest(obj)
        if actual != digest:
            raise CacheError(f"the artifact {obj} was changed after it was published (its digest no longer "
                             "matches): run `pipeline cache verify --repair`, then the pipeline again")
        self.remote.mark()
        base = object_rel(digest)
        pairs = [(obj / f["path"], f"{base}/{f['path']}") for f in manifest["files"]]
        self.remote.upload(pairs[:1])
        crashpoint("remote-upload")  # the crash tests: after the first file, before the manifest
        self.remote.upload(pairs[1:])
        # The manifest goes last, and only over files that are really there (a `cache gc` that
        # ran while this machine was frozen may have removed an unfinished upload).
        sizes = {rel: info.get("size") for rel, info in self.remote.listing(base).items()}
        again = [(p, r) for (p, r), f in zip(pairs, manifest["files"]) if sizes.get(r) != f["size"]]
        self.remote.upload(again)
        self.remote.put(manifest_rel(digest), json.dumps(manifest).encode())
        with self._mutex:
            self._present.add(digest)

    def damage(self, digest: str) -> str | None:
        """Always None: the remote holds the truth, and a fetch checks what it downloads against
        the digest. A damaged copy in the working cache is dropped here, so it is fetched again."""
        self._mirrored(digest)
        return None

    def discard(self, digest: str) -> None:
        """Drop this machine's copy; the remote's is checked against its digest when fetched."""
        self.local.discard(digest)

    def _mirrored(self, digest: str) -> bool:
        """Whether the working cache holds a whole-looking copy (``LocalStore.damage``); a damaged
        one is dropped."""
        if not self.local.object_path(digest).is_dir():
            return False
        if self.local.damage(digest) is None:
            return True
        self.local.discard(digest)
        return False

    def fetch(self, digest: str) -> Path:
        """The local folder of an artifact, downloaded and checked against its digest if needed."""
        path = self.local.object_path(digest)
        if self._mirrored(digest):
            return path
        with self.local.lock(f"fetch-{digest}", f"artifact {digest[:12]}", lambda _m: None):
            if self._mirrored(digest):  # another process of this machine fetched it while we waited
                return path
            raw = self.remote.get(manifest_rel(digest))
            if raw is None:
                self._forget(digest)
                raise CacheError(f"the cache {self.url} has no artifact {digest[:12]} (was it removed from the "
                                 "storage?): run the pipeline again to recompute it; if it still fails, run "
                                 f"`pipeline cache verify --repair --cache-dir {self.url}` on the machine that runs "
                                 "the pipeline (it puts back what that machine has, and forgets what is lost)")
            manifest = parse_manifest(raw, digest)
            if manifest is None:
                raise CacheError(f"the manifest of artifact {digest[:12]} in {self.url} is damaged: run "
                                 f"`pipeline cache verify --repair --cache-dir {self.url}`, then the pipeline again")
            tmp = self.local.staging(f"fetch-{digest}")
            try:
                self._download(digest, manifest, tmp)
                self.local.publish(tmp)
            finally:
                _force_rmtree(tmp)
        return path

    def _forget(self, digest: str) -> None:
        """Drop this machine's copies of the records that use an artifact the remote lost."""
        with self._mutex:
            self._present.discard(digest)
        for _key, path in self.local.iter_records():
            rec = read_record(path)
            if rec is None or digest in rec["outputs"].values():
                path.unlink(missing_ok=True)

    def _download(self, digest: str, manifest: dict[str, Any], tmp: Path) -> None:
        for d in manifest["dirs"]:
            (tmp / d).mkdir(parents=True, exist_ok=True)
        base = object_rel(digest)
        try:
            self.remote.download([(f"{base}/{f['path']}", tmp / f["path"]) for f in manifest["files"]])
        except CacheError as e:
            raise CacheError(f"the artifact {digest[:12]} in {self.url} is incomplete or unreadable ({e}); run "
                             f"`pipeline cache verify --repair --cache-dir {self.url}`, then the pipeline again") from None
        for f in manifest["files"]:
            if f["x"]:
                p = tmp / f["path"]
                p.chmod(p.stat().st_mode | 0o111)
        if tree_digest(tmp) != digest:
            bad = next((f["path"] for f in manifest["files"] if file_digest(tmp / f["path"]) != f["sha256"]), "?")
            raise CacheError(f"the artifact {digest[:12]} downloaded from {self.url} does not match its digest "
                             f"({bad} differs: it was damaged on the storage). Run `pipeline cache verify --repair "
                             f"--cache-dir {self.url}`, then the pipeline again")

    # running stages: node-local --------------------------------------------------------------
    def staging(self, key: str) -> Path:
        return self.local.staging(key)

    def clear_staging(self, key: str) -> None:
        self.local.clear_staging(key)

    def scratch(self, key: str) -> Path:
        return self.local.scratch(key)

    def shared(self, area: str) -> Path:
        return self.local.shared(area)

    def drop_scratch(self, key: str) -> None:
        self.local.drop_scratch(key)

    def sweep_leftovers(self, dry_run: bool = False, say: Callable[[str], None] = lambda _m: None) -> list[str]:
        """Staging folders are private to a machine: its own file locks tell which are abandoned."""
        return self.local.sweep_leftovers(dry_run=dry_run, say=say)

    def lock(self, key: str, what: str, say: Callable[[str], None]) -> LeaseLock:
        """One machine computes a key; the others wait for its lease, then reuse the result."""
        return LeaseLock(self.local.lock(key, what, say), self.remote, lease_rel(key), what, say)

    # maintenance -----------------------------------------------------------------------------
    def verify(self, repair: bool = False) -> VerifyReport:
        """Check every remote artifact (manifest, files, sizes and sha256, streamed) and record, and
        rehash the artifacts mirrored in the working cache. ``repair`` puts back from this
        machine's intact copies what the remote lost or damaged, and removes what nobody has.
        Records built here from a damaged mirrored copy (directly or through other records) are
        reported, and dropped by ``repair``, here and on the remote: their keys would match again.
        A damaged remote copy taints nothing: a fetch checks what it downloads."""
        report = VerifyReport()
        objects = self.remote.listing("objects")
        marked = {m.group(1) for rel in objects if (m := MANIFEST.fullmatch(rel))}
        downloaded, bad = 0, set()
        for digest in sorted(marked):
            report.objects += 1
            ok, size = self._check_object(digest, objects)
            downloaded += size
            if not ok:
                bad.add(digest)
        mirrored = {obj.name for obj in (self.local.root / "objects").glob("*/*")
                    if obj.is_dir() and tree_digest(obj) != obj.name}  # damaged here, maybe fine there
        report.corrupt = sorted(bad | mirrored)
        remote_records: dict[str, list[str] | None] = {}  # key -> its artifacts that are gone (None: unreadable)
        parsed: dict[str, dict[str, Any]] = {}
        for rel in sorted(self.remote.listing("keys")):
            if not (m := RECORD.fullmatch(rel)):
                continue
            key = m.group(1)
            report.records += 1
            rec = parse_record(self.remote.get(rel))
            if rec is None:
                report.unreadable.append(key)
                remote_records[key] = None
                continue
            gone = [d for d in rec["outputs"].values() if d not in marked or d in bad]
            report.missing.extend((key, d) for d in gone if d not in bad)
            remote_records[key] = gone
            parsed[key] = rec
        here = {key: rec for key, path in self.local.iter_records() if (rec := read_record(path))}
        records = {**parsed, **here}
        tainted = downstream(records, mirrored)
        report.dropped = reader_lines(records, mirrored, tainted)
        lacking = {d for key, rec in here.items() if key not in tainted for d in rec["outputs"].values()
                   if (d not in marked or d in bad) and self._intact_here(d, mirrored)}
        self.say(f"{self.url}: checked {report.objects} artifacts (streamed {downloaded / 1e6:.1f} MB) and "
                 f"{report.records} records on the remote, and the artifacts mirrored in {self.root}")
        if lacking and not repair:
            self.say(f"{len(lacking)} artifacts this machine has are missing or damaged on the remote: "
                     "`pipeline cache verify --repair` here uploads them again")
        if repair:
            self._repair(remote_records, bad, mirrored, marked, set(tainted))
        return report

    def _intact_here(self, digest: str, mirrored: set[str]) -> bool:
        return digest not in mirrored and self.local.object_path(digest).is_dir()

    def _check_object(self, digest: str, objects: dict[str, dict[str, Any]]) -> tuple[bool, int]:
        """Whether a marked artifact is whole and matches its digest; and the bytes read."""
        manifest = parse_manifest(self.remote.get(manifest_rel(digest)) or b"", digest)
        if manifest is None:
            return False, 0
        base, read = object_rel(digest), 0
        for f in manifest["files"]:
            rel = f"{base}/{f['path']}"
            if objects.get(rel, {}).get("size") != f["size"]:
                return False, read
            if self.remote.sha256(rel) != f["sha256"]:
                return False, read + f["size"]
            read += f["size"]
        return True, read

    def _repair(self, remote_records: dict[str, list[str] | None], bad: set[str], mirrored: set[str],
                marked: set[str], tainted: set[str]) -> None:
        """Put back what this machine still has intact; remove what nobody has. Records go first,
        then manifests, then files, so a reader never sees a record without its artifacts.
        ``remote_records``: each remote record's artifacts that are gone (None: unreadable);
        ``tainted``: records built from damaged data, dropped everywhere."""
        def intact(digest: str) -> bool:
            return self._intact_here(digest, mirrored)

        for key in sorted(tainted):
            if key in remote_records:
                self.remote.delete(record_rel(key))
            self.local.record_path(key).unlink(missing_ok=True)
        remote_records = {k: gone for k, gone in remote_records.items() if k not in tainted}
        for key, gone in remote_records.items():  # artifacts nobody has any more: recompute them
            if gone is None or not all(intact(d) for d in gone):
                self.remote.delete(record_rel(key))
                self.local.record_path(key).unlink(missing_ok=True)
        healthy = {key for key, gone in remote_records.items() if gone == []}
        for digest in sorted(bad):
            with self._mutex:
                self._present.discard(digest)
            if not intact(digest):
                self.remote.delete(manifest_rel(digest))
                self.remote.remove(sorted(self.remote.listing(object_rel(digest))))
        needed = {d for d in bad if intact(d)}
        needed |= {d for gone in remote_records.values() if gone and all(intact(x) for x in gone) for d in gone}
        records: list[tuple[str, dict[str, Any]]] = []
        for key, path in self.local.iter_records():
            rec = read_record(path)
            outputs = list(rec["outputs"].values()) if rec else []
            if rec is None or not all((d in marked and d not in bad) or intact(d) for d in outputs):
                path.unlink(missing_ok=True)
                continue
            lacking = [d for d in outputs if d not in marked or d in bad]
            needed.update(lacking)
            if key not in healthy or lacking:
                records.append((key, rec))
        for digest in sorted(needed):
            self._upload(digest)
        for key, rec in records:
            self.remote.put(record_rel(key), (json.dumps(rec, indent=1, ensure_ascii=False) + "\n").encode())
        for digest in sorted(mirrored):
            _force_rmtree(self.local.object_path(digest))
        if needed or records:
            self.say(f"{self.url}: put back {len(needed)} artifacts and {len(records)} records from this "
                     "machine's intact copies")

    def gc(self, keep: set[str], dry_run: bool = False) -> GcReport:
        """Clean this machine's working cache, and on the remote only what is certainly garbage:
        unfinished uploads of interrupted runs and expired leases. Records and artifacts on the
        remote are kept: other machines' pipelines may use them, and no machine knows them all."""
        report = self.local.gc(keep, dry_run=dry_run)
        live, expired = [], []
        for rel in sorted(self.remote.listing("locks")):
            if LEASE.fullmatch(rel) and (state := read_lease(self.remote, rel)) is not None:
                (expired if state.expired else live).append((rel, state))
        objects = self.remote.listing("objects")
        marked = {m.group(1) for rel in objects if (m := MANIFEST.fullmatch(rel))}
        unfinished: dict[str, list[str]] = {}
        for rel in objects:
            m = OBJECT_FILE.fullmatch(rel)
            if m and m.group(1) not in marked:
                unfinished.setdefault(m.group(1), []).append(rel)
        records = sum(1 for rel in self.remote.listing("keys") if RECORD.fullmatch(rel))
        verb = "would remove" if dry_run else "removed"
        removed = 0 if live else len(unfinished)
        if unfinished and live:
            rel, state = live[0]
            self.say(f"{self.url}: kept {len(unfinished)} unfinished uploads: {state.owner.get('what', 'a stage')} is "
                     f"running ({state.owner.get('host')}, pid {state.owner.get('pid')}) and may be uploading; "
                     "run `pipeline cache gc` again when no pipeline uses this cache")
        elif unfinished:
            for digest, rels in sorted(unfinished.items()):
                report.leftovers.append(f"{self.url}/{object_rel(digest)}/ (unfinished upload)")
                report.freed_bytes += sum(int(objects[r].get("size") or 0) for r in rels)
                if not dry_run:
                    self.remote.remove(rels)
        for rel, state in expired:
            report.leftovers.append(f"{self.url}/{rel} (expired lease)")
            if not dry_run:
                self.remote.delete(rel, if_match=state.etag)
        self.say(f"{self.url} is shared by every machine that uses it, so gc keeps its {records} records and "
                 f"{len(marked)} artifacts (no machine knows which pipelines still need them; to drop all, delete the "
                 f"prefix). It {verb} {removed} unfinished uploads and {len(expired)} expired leases there, and "
                 f"cleaned this machine's working cache {self.root}")
        return report
