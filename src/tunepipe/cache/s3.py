"""The object-storage client of the remote cache: keys under ``s3://bucket/prefix`` through s3fs.

One job: requests (GET, HEAD, conditional PUT and DELETE, uploads, downloads, listings) and their
errors, made into messages that say what to set or fix. What the keys mean (objects, manifests,
records, leases) is :mod:`tunepipe.cache.remote`'s and :mod:`tunepipe.cache.leases`' business.
s3fs and botocore are imported at the first request, so a rerun that needs no request imports
neither. Credentials come only from the environment (``AWS_*``) and never appear in messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tunepipe.cache.store import LAYOUT_VERSION
from tunepipe.errors import CacheError, TunepipeError, UserError
from tunepipe.redact import redact

MARKER = "tunepipe-cache.json"
SCHEMES = ("s3", "s3a")
_CHUNK = 8 * 2**20


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, "some/prefix"); a clear error for anything else."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    fix = "Pass --cache-dir (or TUNEPIPE_CACHE) as a folder, or as s3://BUCKET/PREFIX"
    if scheme not in SCHEMES:
        raise UserError(f"the cache location {url!r} is not supported: a cache is a folder (a shared POSIX file "
                        f"system such as NFS works too) or S3-compatible object storage (s3://bucket/prefix), "
                        f"not '{scheme}://'. {fix}")
    if "@" in parts.netloc:
        shown = f"{scheme}://...@{parts.netloc.rsplit('@', 1)[1]}{parts.path}"
        raise UserError(f"the cache location {shown!r} holds credentials: tunepipe reads them only from the "
                        "environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), so they "
                        f"never reach records or logs. Remove them from the URL. {fix}")
    if parts.query or parts.fragment:
        raise UserError(f"the cache location {url!r} has a '?' or '#' part, which tunepipe does not read. {fix}")
    bucket = parts.netloc
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}", bucket):
        raise UserError(f"the cache location {url!r} names no valid bucket (s3://BUCKET/PREFIX, with BUCKET of "
                        f"3 to 63 lowercase letters, digits, '.' and '-'). {fix}")
    segments = [s for s in parts.path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise UserError(f"the cache location {url!r} has '.' or '..' in its prefix. {fix}")
    return bucket, "/".join(segments)


def _endpoint() -> str:
    """The endpoint the AWS SDK will use, for messages (never with a user:password part)."""
    raw = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if not raw:
        return "AWS S3"
    parts = urlsplit(raw)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def _error_code(e: BaseException) -> str:
    for exc in (e, e.__cause__):
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def _precondition_failed(e: BaseException) -> bool:
    return isinstance(e, FileExistsError) or _error_code(e) in ("PreconditionFailed", "412",
                                                                 "ConditionalRequestConflict", "409")


def _gone(e: BaseException) -> bool:
    """The key is not there (as opposed to the whole bucket)."""
    return isinstance(e, FileNotFoundError) and _error_code(e) != "NoSuchBucket"


@dataclass(frozen=True)
class Head:
    etag: str
    size: int
    age: float  # seconds since it was last written, on the server's clock


def _head(response: dict[str, Any]) -> Head:
    age = 0.0
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    modified = response.get("LastModified")
    if modified is not None:
        now = parsedate_to_datetime(date).timestamp() if date else time.time()
        age = max(0.0, now - modified.timestamp())
    return Head(str(response.get("ETag", "")), int(response.get("ContentLength", 0)), age)


class Remote:
    """The remote half: keys under ``bucket/prefix`` through s3fs, its errors made readable.

    Nothing is imported or contacted until the first request, so a rerun that finds everything
    in the working cache starts as fast as with a local cache (and works offline). The first
    request reads the layout marker: it proves the bucket exists and answers, and until one
    request has succeeded an unreachable endpoint is taken for a wrong setting (a user error)."""

    def __init__(self, url: str) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint = _endpoint()
        self._fs: Any = None
        self._layout: dict[str, Any] | None = None  # the marker's content, once connected
        self._reached = False
        self._connecting = threading.Lock()

    @property
    def fs(self) -> Any:
        """The s3fs file system, made (and the cache's layout checked) on first use."""
        if not self._reached:
            with self._connecting:
                if not self._reached:
                    self._connect()
        return self._fs

    def _connect(self) -> None:
        try:
            import s3fs
        except ImportError:
            raise UserError(f"the cache {self.url} is on object storage, which needs s3fs: "
                            "pip install 'tunepipe[s3]'") from None
        # Three attempts with the SDK's standard backoff (its default "legacy" mode retries a
        # refused connection for several seconds); AWS_MAX_ATTEMPTS / AWS_RETRY_MODE still win.
        custom = {"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"} & set(os.environ)
        config = {} if custom else {"retries": {"max_attempts": 3, "mode": "standard"}}
        # No instance cache (credentials and endpoint are read from the environment when it is
        # made) and no listing cache (other machines write here all the time).
        self._fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, config_kwargs=config)
        with self.errors("opening the cache"):
            try:
                raw: bytes | None = self._fs.cat_file(self.path(MARKER))
            except FileNotFoundError as e:
                if _error_code(e) == "NoSuchBucket":
                    raise
                raw = None
        layout = None
        if raw is not None:
            try:
                layout = json.loads(raw)
                version = str(layout.get("layout"))
            except (ValueError, AttributeError):
                version = "?"
            if version != LAYOUT_VERSION:
                raise UserError(f"the cache {self.url} has layout {version}, this tunepipe reads layout "
                                f"{LAYOUT_VERSION}: use another prefix, or the tunepipe version that wrote it")
        self._layout = layout
        self._reached = True

    @property
    def marked(self) -> bool:
        """Whether a tunepipe cache was ever written here (its layout marker exists)."""
        _ = self.fs
        return self._layout is not None

    def mark(self) -> None:
        """Write the layout marker, once: before the first artifact or record."""
        if not self.marked:
            self.put(MARKER, json.dumps({"layout": LAYOUT_VERSION, "tool": "tunepipe"}).encode(), create=True)
            self._layout = {"layout": LAYOUT_VERSION}

    # paths -----------------------------------------------------------------------------------
    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def path(self, rel: str) -> str:
        return f"{self.bucket}/{self.key(rel)}"

    def rel(self, path: str) -> str:
        return path[len(self.path("")):]

    # errors ----------------------------------------------------------------------------------
    def error(self, e: BaseException, doing: str) -> TunepipeError:
        """A one-paragraph error for a failed request."""
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError, NoCredentialsError, PartialCredentialsError

        code = _error_code(e)
        cls: type[TunepipeError] = UserError
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            text = (f"no credentials for the cache {self.url} while {doing}: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment. tunepipe reads them only from there")
        elif code == "NoSuchBucket":
            text = (f"the bucket '{self.bucket}' does not exist at {self.endpoint} (while {doing}): create it, or "
                    f"fix the bucket in {self.url} (--cache-dir or TUNEPIPE_CACHE); for S3-compatible storage set "
                    "AWS_ENDPOINT_URL to its address")
        elif code == "InvalidBucketName":
            text = (f"{self.endpoint} says '{self.bucket}' is not a valid bucket name (in {self.url}): fix "
                    "--cache-dir or TUNEPIPE_CACHE")
        elif isinstance(e, PermissionError):
            text = (f"{self.endpoint} refused access to {self.url} while {doing} ({e}): check the credentials in "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that they may read, write "
                    "and delete objects under that prefix")
        elif isinstance(e, BotoConnectionError | HTTPClientError | TimeoutError | ConnectionError):
            cls = CacheError if self._reached else UserError  # never reached: most likely a wrong setting
            text = (f"cannot reach {self.endpoint} for the cache {self.url} while {doing} ({type(e).__name__}). "
                    "Check the network, and AWS_ENDPOINT_URL when the storage is not AWS S3 (e.g. MinIO)")
        else:
            cls = CacheError
            text = f"the object storage of the cache {self.url} failed while {doing}: {type(e).__name__}: {e}"
        return cls(redact(text))

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn what s3fs and botocore raise into a TunepipeError that says what to do."""
        try:
            yield
        except TunepipeError:
            raise
        except Exception as e:
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(e, OSError | BotoCoreError | ClientError):
                raise self.error(e, doing) from None
            raise

    # requests --------------------------------------------------------------------------------
    def get(self, rel: str) -> bytes | None:
        """The object's bytes, or None when there is no such key."""
        fs = self.fs
        with self.errors(f"reading {rel}"):
            try:
                return fs.cat_file(self.path(rel))
            except FileNotFoundError as e:
                if _error_code(e) == "NoSuchBucket":
                    raise
                return None

    def head(self, rel: str) -> Head | None:
        return self.heads([rel])[0]

    def heads(self, rels: list[str]) -> list[Head | None]:
        """HEAD requests for many keys at once (None where there is no such key)."""
        if not rels:
            return []
        from fsspec.asyn import sync

        fs = self.fs

        async def one(rel: str) -> dict[str, Any] | None:
            try:
                return await fs._call_s3("head_object", Bucket=self.bucket, Key=self.key(rel))
            except FileNotFoundError:
                return None

        async def every() -> list[dict[str, Any] | None]:
            return list(await asyncio.gather(*(one(r) for r in rels)))

        with self.errors(f"looking up {rels[0]}" + (f" and {len(rels) - 1} more" if len(rels) > 1 else "")):
            found = sync(fs.loop, every)
        return [None if r is None else _head(r) for r in found]

    def put(self, rel: str, data: bytes, create: bool = False, if_match: str | None = None) -> str | None:
        """Write an object; returns its ETag, or None when ``create`` (it exists) or ``if_match``
        (it changed or is gone) did not hold."""
        cond: dict[str, str] = {"IfNoneMatch": "*"} if create else {}
        if if_match is not None:
            cond["IfMatch"] = if_match
        with self.errors(f"writing {rel}"):
            try:
                r = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key(rel), Body=data, **cond)
            except OSError as e:
                if cond and (_precondition_failed(e) or (if_match and _gone(e))):
                    return None
                raise
        return str(r.get("ETag", ""))

    def delete(self, rel: str, if_match: str | None = None) -> bool:
        cond = {"IfMatch": if_match} if if_match is not None else {}
        with self.errors(f"removing {rel}"):
            try:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key(rel), **cond)
            except OSError as e:
                if _precondition_failed(e) or _gone(e):
                    return False
                raise
        return True

    def remove(self, rels: list[str]) -> None:
        if rels:
            with self.errors(f"removing {len(rels)} objects"):
                self.fs.rm([self.path(r) for r in rels])

    def upload(self, pairs: list[tuple[Path, str]]) -> None:
        if pairs:
            with self.errors(f"uploading {pairs[0][1]}" + (f" and {len(pairs) - 1} more" if len(pairs) > 1 else "")):
                self.fs.put([str(p) for p, _ in pairs], [self.path(r) for _, r in pairs])

    def download(self, pairs: list[tuple[str, Path]]) -> None:
        for _, p in pairs:
            p.parent.mkdir(parents=True, exist_ok=True)
        if pairs:
            with self.errors(f"downloading {pairs[0][0]}" + (f" and {len(pairs) - 1} more" if len(pairs) > 1 else "")):
                self.fs.get([self.path(r) for r, _ in pairs], [str(p) for _, p in pairs])

    def listing(self, rel: str) -> dict[str, dict[str, Any]]:
        """Every object below ``rel`` by its path relative to the prefix (with size, LastModified)."""
        with self.errors(f"listing {rel}/"):
            found = self.fs.find(self.path(rel), detail=True)
        return {self.rel(p): info for p, info in found.items() if info.get("type") != "directory"}

    def sha256(self, rel: str) -> str:
        """The sha256 of an object, streamed (nothing is written locally)."""
        h = hashlib.sha256()
        with self.errors(f"reading {rel}"), self.fs.open(self.path(rel), "rb", block_size=_CHUNK) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()


# manifests --------------------------------------------------------------------------------------