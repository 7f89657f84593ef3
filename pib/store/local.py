"""The local artifact store: a directory shared by every workspace on the machine.

Writes go to `.tmp/` and are renamed into place (archive first, under its
content-addressed name, metadata last; then older archives of the key are
removed) under an exclusive fcntl lock; reads take a shared lock only while
they link their copy out. The metadata file's mtime is this store's own
record of the last use (set on put and on every get), so LRU eviction does
not depend on the file system's atime setting.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pib.errors import StoreError
from pib.flock import open_lock_file, take
from pib.fsutil import read_small, sha256_file
from pib.store import (
    ARCHIVE_SUFFIX,
    MAX_META,
    META_SUFFIX,
    Entries,
    NotFound,
    StoreEntry,
    archive_key,
    archive_name,
    check_blob,
    check_names,
    is_component_name,
    is_key,
    old_archive_name,
)

LOCK_WAIT = 120.0  # seconds; writers hold the lock only for renames and eviction
STALE_TMP = 3600.0


class LocalStore:
    remote = False

    def __init__(self, root: Path, *, quota_bytes: int | None = None, name: str = "local") -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self.name = name

    # ------------------------------------------------------------ helpers

    def _archives(self, component: str, key: str) -> list[Path]:
        """Every archive file of the entry (either layout), newest first."""
        base = self.root / component
        try:
            names = [n for n in os.listdir(base) if n.startswith(key) and archive_key(n) == key]
        except OSError:
            return []
        paths = [base / n for n in names]
        with contextlib.suppress(OSError):
            paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return paths

    def _archive_size(self, component: str, key: str) -> int | None:
        for path in self._archives(component, key):
            with contextlib.suppress(OSError):
                return path.stat().st_size
        return None

    def _meta(self, component: str, key: str) -> Path:
        return self.root / component / f"{key}{META_SUFFIX}"

    @contextlib.contextmanager
    def _lock(self, exclusive: bool) -> Iterator[None]:
        try:
            fd = open_lock_file(self.root / ".lock")
        except OSError as exc:
            raise StoreError(f"local store {self.root}: cannot open its lock: {exc.strerror}",
                             hint="check the store path and its permissions") from exc
        try:
            if not take(fd, shared=not exclusive, wait=LOCK_WAIT):
                raise StoreError(f"local store {self.root}: lock held by another process for {LOCK_WAIT:.0f}s",
                                 hint="another pib is writing to the store; try again")
            yield
        finally:
            os.close(fd)

    def _tmpdir(self) -> Path:
        tmp = self.root / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    # ----------------------------------------------------------- protocol

    def has(self, component: str, key: str) -> bool:
        check_names(component, key)
        return self._meta(component, key).is_file() and bool(self._archives(component, key))

    def has_many(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        return {(c, k) for c, k in pairs if self.has(c, k)}

    def get_meta(self, component: str, key: str) -> bytes:
        check_names(component, key)
        try:
            # Bounded and never blocking: a fifo or a link to /dev/zero in its place must not hold a build
            # (or status, or explain) forever.
            return read_small(self._meta(component, key), MAX_META)
        except FileNotFoundError:
            raise NotFound(f"{self.name}: no artifact {component}/{key}") from None
        except OSError as exc:
            raise StoreError(f"{self.name}: cannot read the metadata of {component}/{key}: {exc.strerror}",
                             hint=f"delete the entry (pib cache rm {component} {key})") from exc

    def get_archive(self, component: str, key: str, sha256: str, dest: Path, max_size: int) -> None:
        check_names(component, key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        meta = self._meta(component, key)
        with self._lock(exclusive=False):
            for name in (archive_name(key, sha256), old_archive_name(key)):
                src = self.root / component / name
                try:
                    if src.stat().st_size > max_size:
                        raise StoreError(f"{self.name}: archive of {component}/{key} is larger than its "
                                         f"metadata says ({max_size} bytes)", hint="delete the entry")
                    _link_or_copy(src, dest)
                    os.utime(meta)  # record the use for LRU eviction
                    return
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StoreError(f"{self.name}: cannot read {component}/{key}: {exc.strerror}") from exc
        raise NotFound(f"{self.name}: artifact {component}/{key} has no archive {sha256[:16]}")

    def put(self, component: str, key: str, archive_path: Path, meta_bytes: bytes, sha256: str | None = None) -> None:
        check_names(component, key)
        name = archive_name(key, sha256 or sha256_file(archive_path)[0])
        try:
            tmp = self._tmpdir()
            staged_archive = _link_or_copy(archive_path, tmp / f"a-{os.getpid()}-{time.monotonic_ns()}")
            fd, staged_meta = tempfile.mkstemp(prefix="m-", dir=tmp)
            with os.fdopen(fd, "wb") as fh:
                fh.write(meta_bytes)
            os.chmod(staged_meta, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.name}: cannot stage {component}/{key}: {exc.strerror}",
                             hint="check free space and permissions of the local store") from exc
        try:
            with self._lock(exclusive=True):
                (self.root / component).mkdir(exist_ok=True)
                target = self.root / component / name
                os.replace(staged_archive, target)
                os.replace(staged_meta, self._meta(component, key))
                for old in self._archives(component, key):  # the entry's earlier archives
                    if old != target:
                        _unlink(old)
                if self.quota_bytes is not None:
                    self._evict(self.quota_bytes, keep={(component, key)})
        except OSError as exc:
            raise StoreError(f"{self.name}: cannot store {component}/{key}: {exc.strerror}") from exc
        finally:
            staged_archive.unlink(missing_ok=True)
            Path(staged_meta).unlink(missing_ok=True)

    def list(self, component: str | None = None) -> Entries:
        out: Entries = []
        if not self.root.is_dir():
            return out
        dirs = [component] if component is not None else sorted(
            d.name for d in self.root.iterdir() if d.is_dir() and is_component_name(d.name))
        for comp in dirs:
            base = self.root / comp
            if not base.is_dir():
                continue
            for meta in sorted(base.glob(f"*{META_SUFFIX}")):
                key = meta.name[: -len(META_SUFFIX)]
                if not is_key(key):
                    continue
                try:
                    mtime = meta.stat().st_mtime
                except FileNotFoundError:
                    continue
                size = self._archive_size(comp, key)
                if size is not None:
                    out.append(StoreEntry(comp, key, size, mtime))
        return out

    def delete(self, component: str, key: str) -> None:
        check_names(component, key)
        with self._lock(exclusive=True):
            found = _unlink(self._meta(component, key))
            for archive in self._archives(component, key):
                found = _unlink(archive) or found
        if not found:
            raise NotFound(f"{self.name}: no artifact {component}/{key}")

    # ------------------------------------------------------- pinned files

    def has_blobs(self, paths: Iterable[str]) -> set[str]:
        out = set()
        for path in paths:
            check_blob(path)
            if (self.root / path).is_file():
                out.add(path)
        return out

    def get_blob(self, path: str, dest: Path, max_size: int) -> None:
        check_blob(path)
        src = self.root / path
        try:
            if src.stat().st_size > max_size:
                raise StoreError(f"{self.name}: {path} is larger than the pinned size {max_size}")
            shutil.copyfile(src, dest)
        except FileNotFoundError:
            raise NotFound(f"{self.name}: no {path}") from None
        except OSError as exc:
            raise StoreError(f"{self.name}: cannot read {path}: {exc.strerror}") from exc

    def put_blob(self, path: str, src: Path) -> None:
        check_blob(path)
        dest = self.root / path
        try:
            staged = _link_or_copy(src, self._tmpdir() / f"b-{os.getpid()}-{time.monotonic_ns()}")
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, dest)
            finally:
                staged.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.name}: cannot store {path}: {exc.strerror}",
                             hint="check free space and permissions of the local store") from exc

    # -------------------------------------------------------- maintenance

    def usage(self) -> int:
        return sum(e.size for e in self.list())

    def gc(self, quota_bytes: int | None = None) -> Entries:
        """Drop stale temporary files and orphans, then evict least recently used entries down to the quota."""
        quota = self.quota_bytes if quota_bytes is None else quota_bytes
        with self._lock(exclusive=True):
            now = time.time()
            tmp = self.root / ".tmp"
            if tmp.is_dir():
                for p in tmp.iterdir():
                    with contextlib.suppress(OSError):
                        if now - p.lstat().st_mtime > STALE_TMP:
                            p.unlink()
            for archive in self.root.glob(f"*/*{ARCHIVE_SUFFIX}"):
                key = archive_key(archive.name)
                if key is None:
                    continue
                meta = archive.with_name(key + META_SUFFIX)
                with contextlib.suppress(OSError):
                    if not meta.exists() and now - archive.stat().st_mtime > STALE_TMP:
                        archive.unlink()
            return self._evict(quota, keep=set()) if quota is not None else []

    def _evict(self, quota: int, keep: set[tuple[str, str]]) -> Entries:
        entries = sorted(self.list(), key=lambda e: e.modified)
        total = sum(e.size for e in entries)
        removed: Entries = []
        for entry in entries:
            if total <= quota:
                break
            if (entry.component, entry.key) in keep:
                continue
            _unlink(self._meta(entry.component, entry.key))
            for archive in self._archives(entry.component, entry.key):
                _unlink(archive)
            total -= entry.size
            removed.append(entry)
        return removed


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def _link_or_copy(src: Path, dest: Path) -> Path:
    """Hard-link src to dest (same file system) or copy it, atomically via a temp name."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{time.monotonic_ns()}")
    try:
        try:
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
