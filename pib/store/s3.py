"""An artifact store in any S3-compatible service (AWS, MinIO, Ceph, SeaweedFS), through boto3.

Credentials come the usual boto3 way (AWS_* environment variables, or the
named profile). Path-style addressing, so endpoints without wildcard DNS
work. botocore gets explicit connect/read time-outs and a small retry
budget; every body (metadata and archives) is read within the same deadline
as the HTTP store's (a watchdog shuts the socket down when it passes, so a
body dripped a byte at a time cannot hold a build), and an archive is never
longer than its signed metadata says.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import boto3
import boto3.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pib.config.types import S3StoreSpec
from pib.errors import StoreError
from pib.fsutil import atomic_writer, sha256_file
from pib.store import (
    CHUNK,
    MAX_META,
    META_SUFFIX,
    PARALLEL,
    Entries,
    NotFound,
    StoreEntry,
    archive_key,
    archive_name,
    check_blob,
    check_names,
    deadline,
    has_concurrently,
    is_component_name,
    is_key,
    old_archive_name,
)

T = TypeVar("T")
# Requests abandoned at their deadline that may still be running, per store: past this, no more are sent.
MAX_HUNG = 4

_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Store:
    remote = True

    def __init__(self, spec: S3StoreSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self._prefix = spec.prefix.strip("/")
        self._hung: list[threading.Thread] = []  # requests abandoned at their deadline, still running
        self._hung_lock = threading.Lock()
        config = Config(
            connect_timeout=spec.timeout,
            read_timeout=spec.timeout,
            retries={"max_attempts": spec.retries + 1, "mode": "standard"},
            s3={"addressing_style": "path"},
            max_pool_connections=PARALLEL,
        )
        try:
            session = boto3.session.Session(profile_name=spec.profile) if spec.profile else boto3.session.Session()
            self._s3: Any = session.client("s3", endpoint_url=spec.endpoint_url, region_name=spec.region,
                                           config=config)
        except BotoCoreError as exc:
            raise StoreError(f"store {spec.name}: cannot set up the S3 client: {exc}",
                             hint="check the store's profile, region and endpoint_url") from exc
        self._transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=16 << 20,
                                        max_concurrency=4)

    def _key(self, component: str, name: str = "") -> str:
        parts = [p for p in (self._prefix, component, name) if p]
        return "/".join(parts)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _MISSING or status == 404:
                raise NotFound(f"store {self.name}: {what}: not found") from None
            hint = ("check the S3 credentials and bucket policy" if status in (401, 403)
                    else "check the bucket and endpoint")
            raise StoreError(f"store {self.name}: {what} failed: {code or status}", hint=hint) from exc
        except (BotoCoreError, OSError) as exc:
            raise StoreError(f"store {self.name}: {what} failed: {exc}",
                             hint=f"check that {self.spec.endpoint_url or 'S3'} is reachable; "
                                  "pib builds locally meanwhile") from exc

    def _answer(self, what: str, fn: Callable[[], T]) -> T:
        """fn() (a request up to its headers) within an overall deadline.

        botocore's time-outs apply to each socket read, so a server dripping its headers a byte at a
        time would hold the caller for hours, and botocore gives no socket a watchdog could shut down.
        So the request runs in a daemon thread of its own; past the deadline (every attempt botocore
        may make) it is abandoned, to end with its connection, and the caller gets a store error.
        """
        seconds = deadline(self.spec.timeout) * (self.spec.retries + 1)
        box: list[tuple[bool, Any]] = []
        with self._hung_lock:
            self._hung = [t for t in self._hung if t.is_alive()]
            if len(self._hung) >= MAX_HUNG:
                # Each abandoned request keeps a thread and a pooled connection: bound them, and stop
                # asking a store that has stopped answering rather than wait out every deadline again.
                raise StoreError(f"store {self.name}: {what}: not sent, {len(self._hung)} earlier requests "
                                 "are still without an answer",
                                 hint=f"check that {self.spec.endpoint_url or 'S3'} is healthy; pib builds "
                                      "locally meanwhile")

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the caller's thread as it is
                box.append((False, exc))

        worker = threading.Thread(target=run, name=f"pib-s3-{self.name}", daemon=True)
        worker.start()
        worker.join(seconds)
        if not box:
            with self._hung_lock:
                self._hung.append(worker)
            raise StoreError(f"store {self.name}: {what}: no answer within {seconds:.0f}s",
                             hint=f"check that {self.spec.endpoint_url or 'S3'} is healthy; pib builds locally meanwhile")
        ok, value = box[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    # ------------------------------------------------------------ protocol

    def has(self, component: str, key: str) -> bool:
        check_names(component, key)
        return self._exists(self._key(component, key + META_SUFFIX))

    def has_many(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        return has_concurrently(self.has, pairs)

    def get_meta(self, component: str, key: str) -> bytes:
        check_names(component, key)
        obj = self._key(component, key + META_SUFFIX)

        def fetch() -> bytes:
            resp = self._answer(f"GET {obj}", lambda: self._s3.get_object(Bucket=self.spec.bucket, Key=obj))
            size = int(resp.get("ContentLength", 0))
            if size > MAX_META:
                raise StoreError(f"store {self.name}: {obj} is {size} bytes, too large for metadata")
            parts: list[bytes] = []
            got = self._read_body(resp, obj, MAX_META, parts.append)
            if got != size:
                raise StoreError(f"store {self.name}: {obj}: received {got} of {size} bytes")
            return b"".join(parts)

        return self._call(f"GET {obj}", fetch)

    def _read_body(self, resp: dict[str, Any], obj: str, max_size: int, sink: Callable[[bytes], object]) -> int:
        """Read a response body into sink within deadline(timeout, max_size), at most max_size bytes."""
        body = resp["Body"]
        budget = deadline(self.spec.timeout, max_size)
        fired = threading.Event()

        def fire() -> None:
            fired.set()
            with contextlib.suppress(AttributeError, OSError):  # botocore's own way to reach the socket
                body._raw_stream._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(budget, fire)
        timer.daemon = True
        timer.start()
        got = 0
        try:
            for chunk in body.iter_chunks(min(CHUNK, max_size + 1)):
                got += len(chunk)
                if got > max_size:
                    raise StoreError(f"store {self.name}: {obj}: more than the {max_size} bytes expected")
                sink(chunk)
        except (BotoCoreError, OSError) as exc:
            if fired.is_set():
                raise StoreError(f"store {self.name}: GET {obj}: no complete answer within {budget:.0f}s") from exc
            raise
        finally:
            timer.cancel()
            if fired.is_set() or got > max_size:
                with contextlib.suppress(Exception):
                    body.close()
        if fired.is_set():
            raise StoreError(f"store {self.name}: GET {obj}: no complete answer within {budget:.0f}s")
        return got

    def _download(self, obj: str, dest: Path, max_size: int) -> None:
        """Stream an object into dest (atomically), within the deadline and at most max_size bytes."""
        resp = self._answer(f"GET {obj}", lambda: self._s3.get_object(Bucket=self.spec.bucket, Key=obj))
        expected = int(resp.get("ContentLength", -1))
        if expected > max_size:
            raise StoreError(f"store {self.name}: {obj} is {expected} bytes, more than the {max_size} expected")
        with atomic_writer(dest) as out:  # a short, long or slow download never appears there
            got = self._read_body(resp, obj, max_size, out.write)
            if expected >= 0 and got != expected:
                raise StoreError(f"store {self.name}: GET {obj}: received {got} of {expected} bytes")

    def get_archive(self, component: str, key: str, sha256: str, dest: Path, max_size: int) -> None:
        check_names(component, key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        for name in (archive_name(key, sha256), old_archive_name(key)):
            obj = self._key(component, name)
            try:
                self._call(f"GET {obj}", _bind(self._download, obj=obj, dest=dest, max_size=max_size))
                return
            except NotFound:
                continue
        raise NotFound(f"store {self.name}: artifact {component}/{key} has no archive {sha256[:16]}")

    def put(self, component: str, key: str, archive_path: Path, meta_bytes: bytes, sha256: str | None = None) -> None:
        check_names(component, key)
        aobj = self._key(component, archive_name(key, sha256 or sha256_file(archive_path)[0]))
        mobj = self._key(component, key + META_SUFFIX)
        self._call(f"PUT {aobj}", lambda: self._s3.upload_file(
            str(archive_path), self.spec.bucket, aobj, Config=self._transfer))
        # Metadata last: readers never see an entry whose archive is missing.
        self._call(f"PUT {mobj}", lambda: self._s3.put_object(
            Bucket=self.spec.bucket, Key=mobj, Body=meta_bytes, ContentType="application/json"))

    # ------------------------------------------------------- pinned files

    def _exists(self, obj: str) -> bool:
        try:
            self._call(f"HEAD {obj}", lambda: self._answer(
                f"HEAD {obj}", lambda: self._s3.head_object(Bucket=self.spec.bucket, Key=obj)))
        except NotFound:
            return False
        return True

    def has_blobs(self, paths: Iterable[str]) -> set[str]:
        todo = list(paths)
        for p in todo:
            check_blob(p)
        found = has_concurrently(lambda p, _: self._exists(self._key(p)), ((p, "") for p in todo))
        return {p for p, _ in found}

    def get_blob(self, path: str, dest: Path, max_size: int) -> None:
        check_blob(path)
        obj = self._key(path)
        self._call(f"GET {obj}", lambda: self._download(obj, dest, max_size))

    def put_blob(self, path: str, src: Path) -> None:
        check_blob(path)
        obj = self._key(path)
        self._call(f"PUT {obj}", lambda: self._s3.upload_file(str(src), self.spec.bucket, obj,
                                                              Config=self._transfer))

    def list(self, component: str | None = None) -> Entries:
        if component is not None and not is_component_name(component):
            return []
        prefix = self._key(component or "") + "/" if (self._prefix or component) else ""

        def scan() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.spec.bucket, Prefix=prefix):
                rows.extend(page.get("Contents", []))
            return rows

        rows = self._call(f"LIST {prefix or '/'}", scan)
        base = len(self._prefix) + 1 if self._prefix else 0
        objects = {str(r["Key"])[base:]: r for r in rows}
        archives: dict[tuple[str, str], dict[str, Any]] = {}  # the newest archive of each entry
        for name, row in objects.items():
            comp, _, file = name.partition("/")
            akey = archive_key(file)
            if akey is not None:
                seen = archives.get((comp, akey))
                if seen is None or row["LastModified"] > seen["LastModified"]:
                    archives[(comp, akey)] = row
        out: Entries = []
        for name, row in sorted(objects.items()):
            parts = name.split("/")
            if len(parts) != 2 or not parts[1].endswith(META_SUFFIX):
                continue
            comp, key = parts[0], parts[1][: -len(META_SUFFIX)]
            archive = archives.get((comp, key))
            if archive is None or not is_key(key) or not is_component_name(comp):
                continue
            out.append(StoreEntry(comp, key, int(archive.get("Size", 0)), row["LastModified"].timestamp()))
        return out

    def delete(self, component: str, key: str) -> None:
        check_names(component, key)
        if not self.has(component, key):
            raise NotFound(f"store {self.name}: no artifact {component}/{key}")
        prefix = self._key(component, key + ".")

        def scan() -> list[str]:
            names: list[str] = []
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.spec.bucket, Prefix=prefix):
                names.extend(str(r["Key"]) for r in page.get("Contents", []))
            return names

        # every archive of the key, both layouts (and any left by an interrupted publish)
        archives = [o for o in self._call(f"LIST {prefix}", scan) if archive_key(o.rsplit("/", 1)[-1]) == key]
        for obj in (self._key(component, key + META_SUFFIX), *archives):  # metadata first, the reverse of put
            self._call(f"DELETE {obj}", _bind(self._s3.delete_object, Bucket=self.spec.bucket, Key=obj))


def _bind(fn: Callable[..., Any], **kwargs: Any) -> Callable[[], Any]:
    return lambda: fn(**kwargs)
