"""An artifact store over plain HTTP(S): GET/HEAD/PUT/DELETE, e.g. nginx with `dav_methods PUT DELETE`.

Built on the standard library's http.client so every socket operation has a
time-out and nothing is retried behind our back. Each request gets
`timeout` seconds per socket operation, a deadline for the whole answer
(headers and body: `timeout` for small documents, plus the declared size at
MIN_RATE for an archive; a watchdog shuts the socket down when it passes, so
headers or a body dripped a byte at a time cannot hold a build) and a small
retry budget for refused connections, time-outs and 5xx answers. A body
must arrive in full (Content-Length is checked) and an archive is never
longer than its signed metadata says, with or without a Content-Length.

Listing uses nginx's `autoindex_format json` when the server offers it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, TypeVar

from pib.config.types import HttpStoreSpec
from pib.errors import StoreError
from pib.fsutil import atomic_writer, sha256_file
from pib.store import (
    CHUNK,
    MAX_META,
    META_SUFFIX,
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
_Rows = list[tuple[str, str, float, int]]  # name, type, mtime, size of an index listing


class _Retryable(Exception):
    """A failure worth another attempt (connection, time-out, 5xx)."""


class _DeadlineMixin:
    """Remembers the socket: http.client drops `sock` from a connection whose answer closes it."""

    sock: socket.socket | None
    raw_sock: socket.socket | None = None
    expired = False  # set by the watchdog, which may fire while connecting

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.raw_sock = self.sock
        if self.expired and self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)


class _Http(_DeadlineMixin, http.client.HTTPConnection):
    pass


class _Https(_DeadlineMixin, http.client.HTTPSConnection):
    pass


class _Watchdog:
    """Shuts a connection's socket down once `seconds` have passed: no read outlives the deadline,
    however slowly the server sends (per-operation socket time-outs alone restart on every byte)."""

    def __init__(self, conn: _Http | _Https, seconds: float) -> None:
        self.conn = conn
        self.seconds = seconds
        self.fired = threading.Event()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired.set()
        self.conn.expired = True
        sock = self.conn.raw_sock or self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class HttpStore:
    remote = True

    def __init__(self, spec: HttpStoreSpec) -> None:
        self.spec = spec
        self.name = spec.name
        url = urllib.parse.urlsplit(spec.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise StoreError(f"store {spec.name}: {spec.url!r} is not an http(s) URL",
                             hint="use a URL such as https://artifacts.example.com/pib")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port
        self._base = url.path.rstrip("/")
        self._headers = {"User-Agent": "pib"}
        token = os.environ.get(spec.token_env) if spec.token_env else None
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif spec.user_env and spec.password_env:
            user = os.environ.get(spec.user_env, "")
            password = os.environ.get(spec.password_env, "")
            cred = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {cred}"

    # ------------------------------------------------------------ plumbing

    def _path(self, *parts: str) -> str:
        return "/".join([self._base, *(urllib.parse.quote(p) for p in parts)])

    def _connect(self) -> _Http | _Https:
        if self._https:
            return _Https(self._host, self._port, timeout=self.spec.timeout, blocksize=CHUNK)
        return _Http(self._host, self._port, timeout=self.spec.timeout, blocksize=CHUNK)

    def _attempts(self, what: str, fn: Callable[[http.client.HTTPConnection], T], *, size: int = 0) -> T:
        """Run fn(conn) with retries, each attempt within deadline(timeout, size); map exhausted
        failures to StoreError."""
        last = ""
        budget = deadline(self.spec.timeout, size)
        for attempt in range(self.spec.retries + 1):
            if attempt:
                time.sleep(min(0.2 * 2 ** (attempt - 1), 2.0))
            conn = self._connect()
            watch = _Watchdog(conn, budget)
            try:
                with watch:
                    result = fn(conn)
                if not watch.fired.is_set():
                    return result
                # a body without a length that the watchdog ended looks complete: it is not
                last = f"no complete answer within {budget:.0f}s"
            except _Retryable as exc:
                last = f"no complete answer within {budget:.0f}s" if watch.fired.is_set() else str(exc)
            except TimeoutError:
                last = f"timed out after {self.spec.timeout:g}s"
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                last = f"no complete answer within {budget:.0f}s" if watch.fired.is_set() else _describe(exc)
            finally:
                conn.close()
        raise StoreError(f"store {self.name}: {what} failed: {last}",
                         hint=f"check that {self.spec.url} is reachable; pib builds locally meanwhile")

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str,
              body: IO[bytes] | bytes | None = None, size: int | None = None) -> http.client.HTTPResponse:
        headers = dict(self._headers)
        if size is not None:
            headers["Content-Length"] = str(size)
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        if resp.status >= 500:
            raise _Retryable(f"{method} {path}: HTTP {resp.status} {resp.reason}")
        return resp

    def _error(self, what: str, resp: http.client.HTTPResponse) -> StoreError:
        hint = "check the store credentials" if resp.status in (401, 403) else "check the store URL and server"
        return StoreError(f"store {self.name}: {what}: HTTP {resp.status} {resp.reason}", hint=hint)

    # ------------------------------------------------------------ protocol

    def has(self, component: str, key: str) -> bool:
        check_names(component, key)
        return self._head(self._path(component, key + META_SUFFIX))

    def has_many(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        return has_concurrently(self.has, pairs)

    def get_meta(self, component: str, key: str) -> bytes:
        check_names(component, key)
        path = self._path(component, key + META_SUFFIX)

        def get(conn: http.client.HTTPConnection) -> bytes:
            resp = self._send(conn, "GET", path)
            if resp.status == 404:
                resp.read()
                raise NotFound(f"store {self.name}: no artifact {component}/{key}")
            if resp.status != 200:
                raise self._error(f"GET {path}", resp)
            return self._read_small(resp, path)

        return self._attempts(f"GET {path}", get)

    def _read_small(self, resp: http.client.HTTPResponse, path: str) -> bytes:
        expected = _content_length(resp)
        if expected is not None and expected > MAX_META:
            raise StoreError(f"store {self.name}: {path} is {expected} bytes, too large for metadata")
        parts: list[bytes] = []
        got = 0
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
            if got > MAX_META:
                raise StoreError(f"store {self.name}: {path} is too large for metadata")
        if expected is not None and got != expected:
            raise _Retryable(f"GET {path}: received {got} of {expected} bytes")
        return b"".join(parts)

    def get_archive(self, component: str, key: str, sha256: str, dest: Path, max_size: int) -> None:
        check_names(component, key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        for name in (archive_name(key, sha256), old_archive_name(key)):
            path = self._path(component, name)

            def download(conn: http.client.HTTPConnection, path: str = path) -> bool:
                resp = self._send(conn, "GET", path)
                if resp.status == 404:
                    resp.read()
                    return False
                if resp.status != 200:
                    raise self._error(f"GET {path}", resp)
                self._stream_to(resp, path, dest, max_size)
                return True

            if self._attempts(f"GET {path}", download, size=max_size):
                return
        raise NotFound(f"store {self.name}: artifact {component}/{key} has no archive {sha256[:16]}")

    def _stream_to(self, resp: http.client.HTTPResponse, path: str, dest: Path, max_size: int) -> None:
        expected = _content_length(resp)
        if expected is not None and expected > max_size:
            raise StoreError(f"store {self.name}: {path} is {expected} bytes, more than the {max_size} expected")
        got = 0
        buf = bytearray(min(CHUNK, max_size + 1))  # one byte more than allowed shows an overlong body
        view = memoryview(buf)
        with atomic_writer(dest) as out:  # a short, long or slow download never appears at dest
            while True:
                n = resp.readinto(buf)
                if not n:
                    break
                got += n
                if got > max_size:
                    raise StoreError(f"store {self.name}: {path}: more than the {max_size} bytes expected")
                out.write(view[:n])
            if expected is not None and got != expected:
                raise _Retryable(f"GET {path}: received {got} of {expected} bytes")

    def put(self, component: str, key: str, archive_path: Path, meta_bytes: bytes, sha256: str | None = None) -> None:
        check_names(component, key)
        size = archive_path.stat().st_size
        apath = self._path(component, archive_name(key, sha256 or sha256_file(archive_path)[0]))
        mpath = self._path(component, key + META_SUFFIX)

        def put_archive(conn: http.client.HTTPConnection) -> None:
            with open(archive_path, "rb") as fh:
                resp = self._send(conn, "PUT", apath, fh, size)
                resp.read()
            if resp.status not in (200, 201, 204):
                raise self._error(f"PUT {apath}", resp)

        def put_meta(conn: http.client.HTTPConnection) -> None:
            resp = self._send(conn, "PUT", mpath, meta_bytes, len(meta_bytes))
            resp.read()
            if resp.status not in (200, 201, 204):
                raise self._error(f"PUT {mpath}", resp)

        self._attempts(f"PUT {apath}", put_archive, size=size)
        self._attempts(f"PUT {mpath}", put_meta)  # last: readers never see half an entry

    def delete(self, component: str, key: str) -> None:
        check_names(component, key)
        try:  # every archive of the key, both layouts (and any left by an interrupted publish)
            names = [n for n, kind, _, _ in self._index(self._path(component) + "/")
                     if kind == "file" and archive_key(n) == key]
        except StoreError:
            names = [old_archive_name(key)]
        found = False
        for name in (key + META_SUFFIX, *names):  # metadata first, the reverse of put
            path = self._path(component, name)

            def delete(conn: http.client.HTTPConnection, path: str = path) -> bool:
                resp = self._send(conn, "DELETE", path)
                resp.read()
                if resp.status == 404:
                    return False
                if resp.status not in (200, 202, 204):
                    raise self._error(f"DELETE {path}", resp)
                return True

            found = self._attempts(f"DELETE {path}", delete) or found
        if not found:
            raise NotFound(f"store {self.name}: no artifact {component}/{key}")

    # ------------------------------------------------------- pinned files

    def _head(self, path: str) -> bool:
        def head(conn: http.client.HTTPConnection) -> bool:
            resp = self._send(conn, "HEAD", path)
            resp.read()
            if resp.status == 200:
                return True
            if resp.status == 404:
                return False
            raise self._error(f"HEAD {path}", resp)

        return self._attempts(f"HEAD {path}", head)

    def has_blobs(self, paths: Iterable[str]) -> set[str]:
        todo = list(paths)
        for p in todo:
            check_blob(p)
        found = has_concurrently(lambda p, _: self._head(self._path(*p.split("/"))), ((p, "") for p in todo))
        return {p for p, _ in found}

    def get_blob(self, path: str, dest: Path, max_size: int) -> None:
        check_blob(path)
        url = self._path(*path.split("/"))

        def download(conn: http.client.HTTPConnection) -> None:
            resp = self._send(conn, "GET", url)
            if resp.status == 404:
                resp.read()
                raise NotFound(f"store {self.name}: no {path}")
            if resp.status != 200:
                raise self._error(f"GET {url}", resp)
            self._stream_to(resp, url, dest, max_size)

        self._attempts(f"GET {url}", download, size=max_size)

    def put_blob(self, path: str, src: Path) -> None:
        check_blob(path)
        url = self._path(*path.split("/"))
        size = src.stat().st_size

        def put(conn: http.client.HTTPConnection) -> None:
            with open(src, "rb") as fh:
                resp = self._send(conn, "PUT", url, fh, size)
            resp.read()
            if resp.status not in (200, 201, 204):
                raise self._error(f"PUT {url}", resp)

        self._attempts(f"PUT {url}", put, size=size)

    def list(self, component: str | None = None) -> Entries:
        if component is None:
            names = [n for n, kind, _, _ in self._index(self._path() + "/") if kind == "directory"]
            comps = sorted(n for n in names if is_component_name(n))
        else:
            comps = [component]
        out: Entries = []
        for comp in comps:
            rows = self._index(self._path(comp) + "/")
            files = {name: (mtime, size) for name, kind, mtime, size in rows if kind == "file"}
            archives: dict[str, tuple[float, int]] = {}  # key -> newest archive (mtime, size)
            for name, (mtime, size) in files.items():
                akey = archive_key(name)
                if akey is not None and (mtime, size) > archives.get(akey, (-1.0, 0)):
                    archives[akey] = (mtime, size)
            for name, (mtime, _) in sorted(files.items()):
                if not name.endswith(META_SUFFIX):
                    continue
                key = name[: -len(META_SUFFIX)]
                archive = archives.get(key)
                if is_key(key) and archive is not None:
                    out.append(StoreEntry(comp, key, archive[1], mtime))
        return out

    def _index(self, path: str) -> _Rows:
        def get(conn: http.client.HTTPConnection) -> _Rows:
            resp = self._send(conn, "GET", path)
            if resp.status == 404:
                resp.read()
                return []
            if resp.status != 200:
                raise self._error(f"GET {path}", resp)
            body = self._read_small(resp, path)
            try:
                rows = json.loads(body)
                return [(str(r["name"]), str(r["type"]), _http_date(str(r.get("mtime", ""))), int(r.get("size", 0)))
                        for r in rows]
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError) as exc:
                raise StoreError(f"store {self.name}: listing {path} is not a JSON index",
                                 hint="enable `autoindex on; autoindex_format json;` on the server") from exc

        return self._attempts(f"GET {path}", get, size=MAX_META)


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = resp.getheader("Content-Length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise _Retryable(f"bad Content-Length {value!r}") from None


def _http_date(text: str) -> float:
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.IncompleteRead):
        return f"body cut short ({len(exc.partial)} bytes received)"
    return f"{type(exc).__name__}: {exc}"
