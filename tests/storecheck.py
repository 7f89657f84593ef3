"""One behavioural check every store backend must pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pib.errors import Reason, StoreError
from pib.fsutil import sha256_file
from pib.store import NotFound, Store

K1, K2, K3 = "1" * 64, "2" * 64, "3" * 64


def fetch(store: Store, component: str, key: str, original: Path, dest_dir: Path) -> Path:
    """The archive of (component, key), which holds `original`'s bytes, downloaded into dest_dir."""
    sha, size = sha256_file(original)
    dest = dest_dir / f"{key}.tar.zst"
    store.get_archive(component, key, sha, dest, size)
    return dest


def exercise(store: Store, tmp_path: Path, size: int = 300_000) -> None:
    assert isinstance(store, Store)
    arc = tmp_path / "arc"
    arc.write_bytes(os.urandom(size))
    assert not store.has("illumos", K1)
    assert store.has_many([("illumos", K1)]) == set()
    with pytest.raises(NotFound) as miss:
        store.get_meta("illumos", K1)
    assert miss.value.reason is Reason.STORE
    with pytest.raises(NotFound):
        fetch(store, "illumos", K1, arc, tmp_path / "dl0")
    store.put("illumos", K1, arc, b'{"n":1}')
    store.put("illumos", K2, arc, b'{"n":2}')
    store.put("extra", K3, arc, b'{"n":3}')
    assert store.has("illumos", K1)
    assert store.has_many([("illumos", K1), ("illumos", K3), ("extra", K3), ("extra", K1)]) == {
        ("illumos", K1), ("extra", K3)}
    assert store.get_meta("illumos", K2) == b'{"n":2}'
    dl = tmp_path / "dl"
    a = fetch(store, "illumos", K1, arc, dl)
    assert a.read_bytes() == arc.read_bytes()
    assert sorted(p.name for p in dl.iterdir()) == [f"{K1}.tar.zst"]
    # never more than the caller allows (the size its signed metadata states)
    with pytest.raises(StoreError) as big:
        store.get_archive("illumos", K1, sha256_file(arc)[0], tmp_path / "dl-short" / "a", size - 1)
    assert not isinstance(big.value, NotFound)
    assert not (tmp_path / "dl-short" / "a").exists()
    listed = [(e.component, e.key, e.size) for e in store.list()]
    assert listed == [("extra", K3, size), ("illumos", K1, size), ("illumos", K2, size)]
    assert [e.key for e in store.list("illumos")] == [K1, K2]
    assert all(e.modified > 0 for e in store.list())
    assert store.list("nothing-here") == []
    store.delete("illumos", K1)
    assert not store.has("illumos", K1)
    with pytest.raises(NotFound):
        store.delete("illumos", K1)
    with pytest.raises(StoreError):
        store.put("../evil", K1, arc, b"{}")
