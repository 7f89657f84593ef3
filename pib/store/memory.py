"""An in-memory store for unit tests; behaves like the others, including failures on demand."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from pib.errors import StoreError
from pib.fsutil import write_atomic
from pib.store import ARCHIVE_SUFFIX, META_SUFFIX, Entries, NotFound, StoreEntry, check_blob, check_names


class MemoryStore:
    def __init__(self, name: str = "memory", *, remote: bool = True) -> None:
        self.name = name
        self.remote = remote
        self.entries: dict[tuple[str, str], tuple[bytes, bytes, float]] = {}
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

    def get(self, component: str, key: str, dest_dir: Path) -> tuple[Path, Path]:
        self._enter("get")
        check_names(component, key)
        try:
            archive, meta, _ = self.entries[(component, key)]
        except KeyError:
            raise NotFound(f"{self.name}: no artifact {component}/{key}") from None
        return _write(dest_dir / f"{key}{ARCHIVE_SUFFIX}", archive), _write(dest_dir / f"{key}{META_SUFFIX}", meta)

    def put(self, component: str, key: str, archive_path: Path, meta_bytes: bytes) -> None:
        self._enter("put")
        check_names(component, key)
        self.entries[(component, key)] = (archive_path.read_bytes(), bytes(meta_bytes), time.time())

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


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return path
