"""Pinned inputs fetched before any build runs, from the nearest place that has the bytes.

Order for every file: the machine's download cache, then each artifact store
as a content-addressed mirror (`sources/sha256/<hash>`, local store first),
then upstream (a URL, or Debian's archive through a private apt). A file is
used only if its SHA-256 is the pinned one, wherever it came from; wrong bytes
from one place are reported and the next place is tried. Builds themselves
never download: they get the verified files by name in `PIB_SOURCES`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple, Protocol

from pib.config.types import AptOrigin, Pinned, UrlOrigin
from pib.errors import PibError, Reason
from pib.fsutil import sha256_file
from pib.run import Log

URL_TIMEOUT = 30.0  # seconds per socket operation for url sources
URL_MIN_RATE = 16 * 1024  # bytes/s a url download must keep up after its first URL_TIMEOUT seconds
DEFAULT_MAX_SIZE = 16 << 30  # cap for a download whose size is not declared


class FetchError(PibError):
    reason = Reason.SOURCE


class Mirror(Protocol):
    """The part of an artifact store that serves pinned files by hash."""

    name: str
    remote: bool

    def get_blob(self, path: str, dest: Path, max_size: int) -> None: ...

    def has_blobs(self, paths: Iterable[str]) -> set[str]: ...

    def put_blob(self, path: str, src: Path) -> None: ...


class Upstream(Protocol):
    """Debian's archive as apt sees it (pib.fetch.apt.PrivateApt or HostApt)."""

    def download(self, specs: Sequence[str], dest: Path, *, source: bool = False, log: Log | None = None) -> None: ...


def download_cache() -> Path:
    """The user's content-addressed download cache, shared by every workspace and CBE install."""
    env = os.environ.get("PIB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pib" / "downloads"


def blob_path(sha256: str) -> str:
    return f"sources/sha256/{sha256}"


class Fetched(NamedTuple):
    pin: Pinned
    path: Path        # the verified file in the download cache
    came_from: str    # "cache", "store NAME" or "upstream"


class Fetcher:
    """Fetches pinned files into a content-addressed download cache."""

    def __init__(self, cache: Path, *, mirrors: Sequence[Mirror] = (), apt: Upstream | None = None,
                 offline: bool = False, log: Log | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.cache = cache
        self.mirrors = [m for m in mirrors if not (offline and m.remote)]
        self.apt = apt
        self.offline = offline
        self.log = log
        self.warn = warn or (lambda _msg: None)

    def cached(self, sha256: str) -> Path:
        return self.cache / "sha256" / sha256

    def fetch(self, pins: Iterable[Pinned]) -> dict[str, Fetched]:
        """Every pin's verified file, keyed by SHA-256; raises FetchError naming what is missing."""
        want = {p.sha256: p for p in pins}
        done: dict[str, Fetched] = {}
        for sha, p in want.items():
            path = self.cached(sha)
            if path.is_file():
                # The cache is shared and outlives builds: check the bytes again before use.
                if sha256_file(path)[0] == sha:
                    done[sha] = Fetched(p, path, "cache")
                    continue
                self.warn(f"download cache: {p.name} had wrong bytes; fetching it again")
                path.unlink(missing_ok=True)
        todo = [p for sha, p in want.items() if sha not in done]
        for mirror in self.mirrors:
            if not todo:
                break
            todo = self._from_mirror(mirror, todo, done)
        if todo and self.offline:
            raise FetchError(f"offline, and not in the download cache or local store: "
                             f"{', '.join(p.describe() for p in todo)}",
                             where=todo[0].where, hint="run `pib fetch` while online first")
        if todo:
            self._upstream(todo, done)
        return done

    # ------------------------------------------------------------- mirrors

    def _from_mirror(self, mirror: Mirror, todo: list[Pinned], done: dict[str, Fetched]) -> list[Pinned]:
        try:
            present = mirror.has_blobs(blob_path(p.sha256) for p in todo)
        except PibError as exc:
            self.warn(f"store {mirror.name}: cannot look up pinned files ({exc.message})")
            return todo
        left: list[Pinned] = []
        for p in todo:
            if blob_path(p.sha256) not in present:
                left.append(p)
                continue
            try:
                self._into_cache(p, partial(_mirror_get, mirror, p))
            except PibError as exc:
                self.warn(f"store {mirror.name}: {p.name}: {exc.message}; trying the next source")
                left.append(p)
                continue
            done[p.sha256] = Fetched(p, self.cached(p.sha256), f"store {mirror.name}")
        return left

    def _into_cache(self, p: Pinned, produce: Callable[[Path], None]) -> None:
        """produce(tmp) writes a candidate; it enters the cache only with the pinned hash."""
        (self.cache / "sha256").mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{p.sha256[:16]}.", dir=self.cache / "sha256")
        os.close(fd)
        tmp = Path(name)
        try:
            produce(tmp)
            self._adopt(p, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _adopt(self, p: Pinned, candidate: Path) -> None:
        got, _ = sha256_file(candidate)
        if got != p.sha256:
            raise FetchError(f"{p.name}: got sha256 {got}, the pin says {p.sha256}", where=p.where,
                             reason=Reason.VERIFY)
        if p.size is not None and candidate.stat().st_size != p.size:
            raise FetchError(f"{p.name}: size {candidate.stat().st_size}, the pin says {p.size}", where=p.where,
                             reason=Reason.VERIFY)
        os.chmod(candidate, 0o444)
        self.cached(p.sha256).parent.mkdir(parents=True, exist_ok=True)
        os.replace(candidate, self.cached(p.sha256))

    # ------------------------------------------------------------ upstream

    def _upstream(self, todo: list[Pinned], done: dict[str, Fetched]) -> None:
        binary = [p for p in todo if isinstance(p.origin, AptOrigin) and not p.origin.source]
        source = [p for p in todo if isinstance(p.origin, AptOrigin) and p.origin.source]
        urls = [p for p in todo if isinstance(p.origin, UrlOrigin)]
        if (binary or source) and self.apt is None:
            raise FetchError(f"{(binary or source)[0].describe()} comes from Debian, but no apt sources "
                             "are configured", where=(binary or source)[0].where,
                             hint="add an [apt] section (uris, suites) to pib.toml")
        if binary:
            self._apt_batch(binary, done, source=False)
        if source:
            by_pkg: dict[str, list[Pinned]] = {}
            for p in source:
                by_pkg.setdefault(p.origin.spec() if isinstance(p.origin, AptOrigin) else "", []).append(p)
            for group in by_pkg.values():
                self._apt_batch(group, done, source=True)
        for p in urls:
            assert isinstance(p.origin, UrlOrigin)
            url = p.origin.url
            self._into_cache(p, partial(_url_get, url, p))
            done[p.sha256] = Fetched(p, self.cached(p.sha256), "upstream")

    def _apt_batch(self, pins: list[Pinned], done: dict[str, Fetched], *, source: bool) -> None:
        assert self.apt is not None
        specs = list(dict.fromkeys(p.origin.spec() for p in pins if isinstance(p.origin, AptOrigin)))
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".apt-", dir=self.cache))
        try:
            self.apt.download(specs, tmp, source=source, log=self.log)
            for p in pins:
                got = _find_delivered(tmp, p)
                if got is None:
                    raise FetchError(f"apt did not deliver {p.describe()}", where=p.where,
                                     hint="check the package name, version and file name")
                self._adopt(p, got)
                done[p.sha256] = Fetched(p, self.cached(p.sha256), "upstream")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _mirror_get(mirror: Mirror, p: Pinned, tmp: Path) -> None:
    mirror.get_blob(blob_path(p.sha256), tmp, p.size or DEFAULT_MAX_SIZE)


def _url_get(url: str, p: Pinned, tmp: Path) -> None:
    download_url(url, tmp, p.size or DEFAULT_MAX_SIZE)


def _find_delivered(tmp: Path, p: Pinned) -> Path | None:
    exact = tmp / p.name
    if exact.is_file():
        return exact
    if isinstance(p.origin, AptOrigin) and not p.origin.source:
        # apt names a .deb NAME_VERSION_ARCH.deb (epoch escaped); the pin may name it otherwise.
        for cand in tmp.glob(f"{p.origin.package}_*.deb"):
            return cand
    return None


def download_url(url: str, dest: Path, max_size: int) -> None:
    """GET url into dest: time-outs on every read, a minimum rate, and at most max_size bytes."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT) as resp, open(dest, "wb") as out:
            length = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
            if length is not None and length.isdigit() and int(length) > max_size:
                raise FetchError(f"{url}: {length} bytes, more than the pinned size {max_size}")
            start = time.monotonic()
            got = 0
            while chunk := resp.read(1 << 20):
                got += len(chunk)
                if got > max_size:
                    raise FetchError(f"{url}: more than the pinned size of {max_size} bytes")
                out.write(chunk)
                elapsed = time.monotonic() - start
                if elapsed > URL_TIMEOUT and got < URL_MIN_RATE * (elapsed - URL_TIMEOUT):
                    raise FetchError(f"{url}: too slow ({got} bytes in {elapsed:.0f}s)")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"cannot download {url}: {reason}",
                         hint="check the URL and the network, or add a store that mirrors the file") from None


def stage(fetched: Iterable[Fetched], dest: Path) -> Path:
    """A directory with each pinned file under its name, for one build (hard links where possible)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in fetched:
        target = dest / f.pin.name
        target.unlink(missing_ok=True)
        try:
            os.link(f.path, target)
        except OSError:
            shutil.copyfile(f.path, target)
            os.chmod(target, 0o444)
    return dest
