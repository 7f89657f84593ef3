"""Artifact stores: one small protocol, several backends.

Layout in every backend: `<prefix>/<component>/<key>.<archive-sha256>.tar.zst`
(the archive, named by its own SHA-256) and `<prefix>/<component>/<key>.json`
(its signed metadata, which states that SHA-256); pinned input files
(sources, CBE packages) at `<prefix>/sources/sha256/<hash>`. Writers put the
archive first and the metadata last, and delete in the opposite order. An
archive's name never changes its content, so two publishes of one key that
interleave leave the metadata of one pointing at that one's own archive: an
entry is always self-consistent. Readers fetch the metadata, verify it, and
then ask for the archive it names (get_archive), at most the size it states.
Entries of the earlier layout (`<key>.tar.zst`) are still read.

A miss raises NotFound (or returns False from has()); anything else a store
does wrong (refused connection, 5xx, time-out, short or long body) raises
StoreError. Every remote call has connect/read time-outs, a deadline for the
whole answer and a small retry budget. pib.store.backends opens the backend
a store spec (pib.config.types) names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from pib.errors import StoreError

ARCHIVE_SUFFIX = ".tar.zst"
META_SUFFIX = ".json"

_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")
_KEY_RE = re.compile(r"^[0-9a-f]{16,128}$")
_BLOB_RE = re.compile(r"^sources/sha256/[0-9a-f]{64}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class NotFound(StoreError):
    """The entry is not in the store: a miss, not a failure."""


@dataclass(frozen=True)
class StoreEntry:
    component: str
    key: str
    size: int  # archive bytes (0 when the store did not say)
    modified: float  # seconds since the epoch, as the store reports it


# Named so that classes with a list() method can still spell the type.
Entries = list[StoreEntry]


@runtime_checkable
class Store(Protocol):
    name: str
    remote: bool

    def has(self, component: str, key: str) -> bool: ...

    def has_many(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]: ...

    def get_meta(self, component: str, key: str) -> bytes: ...

    def get_archive(self, component: str, key: str, sha256: str, dest: Path, max_size: int) -> None:
        """Download the archive `sha256` of (component, key) to dest: at most max_size bytes, or StoreError."""
        ...

    def put(self, component: str, key: str, archive_path: Path, meta_bytes: bytes, sha256: str | None = None) -> None:
        """Store an entry: the archive (sha256: its SHA-256, computed when not given), then the metadata."""
        ...

    def list(self, component: str | None = None) -> Entries: ...

    def delete(self, component: str, key: str) -> None: ...

    # Pinned input files by content (`sources/sha256/<hash>`): the stores double as mirrors.
    def has_blobs(self, paths: Iterable[str]) -> set[str]: ...

    def get_blob(self, path: str, dest: Path, max_size: int) -> None: ...

    def put_blob(self, path: str, src: Path) -> None: ...


PARALLEL = 16  # requests a remote store gets at once (existence rounds)
CHUNK = 1 << 20  # transfer block size of the remote backends
MIN_RATE = 64 * 1024  # bytes/s an archive download must keep up after its first `timeout` seconds
MAX_META = 1 << 20  # metadata larger than this is refused unread


def deadline(timeout: float, size: int = 0) -> float:
    """Seconds a whole answer may take: `timeout` for the headers and small bodies, plus the time
    `size` bytes take at MIN_RATE. A server dripping bytes is cut off at this bound."""
    return timeout + size / MIN_RATE


def archive_name(key: str, sha256: str) -> str:
    check_sha(sha256)
    return f"{key}.{sha256}{ARCHIVE_SUFFIX}"


def old_archive_name(key: str) -> str:
    """The archive's name in the earlier layout, still read."""
    return f"{key}{ARCHIVE_SUFFIX}"


def archive_key(component_file: str) -> str | None:
    """The key an archive file name (either layout) belongs to, or None."""
    if not component_file.endswith(ARCHIVE_SUFFIX):
        return None
    stem = component_file[: -len(ARCHIVE_SUFFIX)]
    key, dot, sha = stem.partition(".")
    if not is_key(key) or (dot and not _SHA_RE.match(sha)):
        return None
    return key


def check_sha(sha256: str) -> None:
    if not _SHA_RE.match(sha256):
        raise StoreError(f"invalid archive SHA-256 {sha256!r}")


def has_concurrently(has: Callable[[str, str], bool], pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """has() for many entries in one concurrent round, not N sequential round trips."""
    from concurrent.futures import ThreadPoolExecutor

    todo = list(dict.fromkeys(pairs))
    if not todo:
        return set()
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(todo))) as pool:
        answers = list(pool.map(lambda p: has(*p), todo))
    return {p for p, yes in zip(todo, answers, strict=True) if yes}


def check_names(component: str, key: str) -> None:
    """Refuse names that could escape the layout (they become paths and URLs)."""
    if not _COMPONENT_RE.match(component) or component in (".", ".."):
        raise StoreError(f"invalid component name {component!r} for an artifact store",
                         hint="component names are letters, digits and ._+-")
    if not _KEY_RE.match(key):
        raise StoreError(f"invalid artifact key {key!r}", hint="keys are lower-case hex digests")


def check_blob(path: str) -> None:
    """Pinned files live at `sources/sha256/<hash>` and nowhere else."""
    if not _BLOB_RE.match(path):
        raise StoreError(f"invalid pinned-file path {path!r} for an artifact store")


def is_component_name(name: str) -> bool:
    return bool(_COMPONENT_RE.match(name))


def is_key(name: str) -> bool:
    return bool(_KEY_RE.match(name))
