"""An in-memory store for unit tests; behaves like the others, including failures on demand."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from pib.errors import StoreError
from pib.fsutil import sha256_file
from pib.store import Entries, NotFound, StoreEntry, archive_name, check_blob, check_names


class MemoryStore:
    def __init__(self, name: str = "memory", *, remote: bool = True) -> None:
        self.name = name
        self.remote = remote
        self.entries: dict[tuple[str, str], tuple[bytes, bytes, float]] = {}  # the newest archive, metadata
        self.archives: dict[tuple[str, str], bytes] = {}  # (component, archive name) -> bytes, as the layout has them
        self.blobs: dict[str, bytes] = {}
        self.fail: StoreError | None = None  # when set, every call raises it
        self.calls: list[str] = []

    def _enter(self, op: str) -> None:
        self.calls.append(op)
        if self.fail is not None:
            raise self.fail

    def has(self, component: str, key: str) -> bool:
        self._enter("has")
        check_names(component, key)
        return (component, key) in self.entries

    def has_many(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        self._enter("has_many")
        return {p for p in pairs if p in self.entries}

    def get_meta(self, component: str, key: str) -> bytes:
        self._enter("get_meta")
        check_names(component, key)
        try:
            return self.entries[(component, key)][1]
        except KeyError:
            raise NotFound(f"{self.name}: no artifact {component}/{key}") from None

    def get_archive(self, component: str, key: str, sha256: str, dest: Path, max_size: int) -> None:
        self._enter("get_archive")
        check_names(component, key)
        data = self.archives.get((component, archive_name(key, sha256)))
        if data is None:
            raise NotFound(f"{self.name}: artifact {component}/{key} has no archive {sha256[:16]}")
        if len(data) > max_size:
            raise StoreError(f"{self.name}: archive of {component}/{key} is larger than {max_size} bytes")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    def put(self, component: str, key: str, archive_path: Path, meta_bytes: bytes, sha256: str | None = None) -> None:
        self._enter("put")
        check_names(component, key)
        data = archive_path.read_bytes()
        self.archives[(component, archive_name(key, sha256 or sha256_file(archive_path)[0]))] = data
        self.entries[(component, key)] = (data, bytes(meta_bytes), time.time())

    def list(self, component: str | None = None) -> Entries:
        self._enter("list")
        return sorted(
            (StoreEntry(c, k, len(a), t) for (c, k), (a, _, t) in self.entries.items()
             if component is None or c == component),
            key=lambda e: (e.component, e.key),
        )

    def delete(self, component: str, key: str) -> None:
        self._enter("delete")
        if self.entries.pop((component, key), None) is None:
            raise NotFound(f"{self.name}: no artifact {component}/{key}")
        for name in [n for c, n in self.archives if c == component and n.startswith(f"{key}.")]:
            del self.archives[(component, name)]

    def has_blobs(self, paths: Iterable[str]) -> set[str]:
        self._enter("has_blobs")
        todo = list(paths)
        for p in todo:
            check_blob(p)
        return {p for p in todo if p in self.blobs}

    def get_blob(self, path: str, dest: Path, max_size: int) -> None:
        self._enter("get_blob")
        check_blob(path)
        if path not in self.blobs:
            raise NotFound(f"{self.name}: no {path}")
        if len(self.blobs[path]) > max_size:
            raise StoreError(f"{self.name}: {path} is larger than the pinned size {max_size}")
        dest.write_bytes(self.blobs[path])

    def put_blob(self, path: str, src: Path) -> None:
        self._enter("put_blob")
        check_blob(path)
        self.blobs[path] = src.read_bytes()

