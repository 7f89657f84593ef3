"""Artifact stores: one small protocol, several backends.

Layout in every backend: `<prefix>/<component>/<key>.tar.zst` (the archive)
and `<prefix>/<component>/<key>.json` (its signed metadata); pinned input
files (sources, CBE packages) at `<prefix>/sources/sha256/<hash>`. Writers put the
archive first and the metadata last, and delete in the opposite order, so a
reader that sees the metadata always finds the whole entry.

A miss raises NotFound (or returns False from has()); anything else a store
does wrong (refused connection, 5xx, time-out, short body) raises StoreError.
Every remote call has connect/read time-outs and a small retry budget.
pib.store.backends opens the backend a store spec (pib.config.types) names.
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

    def get(self, component: str, key: str, dest_dir: Path) -> tuple[Path, Path]: ...

    def put(self, component: str, key: str, archive_path: Path, meta_bytes: bytes) -> None: ...

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
