from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pib.config.types import LocalStoreSpec
from pib.errors import Reason, StoreError
from pib.store import NotFound, Store
from pib.store.backends import open_store
from pib.store.local import LocalStore
from pib.store.memory import MemoryStore
from tests.storecheck import fetch

K1, K2, K3 = "a" * 64, "b" * 64, "c" * 64


def blob(tmp_path: Path, name: str, size: int) -> Path:
    p = tmp_path / name
    p.write_bytes(os.urandom(size))
    return p


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(LocalStoreSpec(tmp_path / "store"))
    return MemoryStore()


def test_protocol_roundtrip(store: Store, tmp_path: Path) -> None:
    assert isinstance(store, Store)
    assert not store.has("illumos", K1)
    with pytest.raises(NotFound) as miss:
        store.get_meta("illumos", K1)
    assert miss.value.reason is Reason.STORE
    arc = blob(tmp_path, "arc", 1000)
    store.put("illumos", K1, arc, b'{"m":1}')
    store.put("extra", K2, arc, b'{"m":2}')
    assert store.has("illumos", K1)
    assert store.has_many([("illumos", K1), ("illumos", K2), ("extra", K2)]) == {("illumos", K1), ("extra", K2)}
    assert store.get_meta("extra", K2) == b'{"m":2}'
    out = tmp_path / "dl"
    a = fetch(store, "illumos", K1, arc, out)
    assert a.read_bytes() == arc.read_bytes() and store.get_meta("illumos", K1) == b'{"m":1}'
    assert sorted(p.name for p in out.iterdir()) == [f"{K1}.tar.zst"]
    assert [(e.component, e.key, e.size) for e in store.list()] == [("extra", K2, 1000), ("illumos", K1, 1000)]
    assert [e.key for e in store.list("illumos")] == [K1]
    store.delete("illumos", K1)
    assert not store.has("illumos", K1)
    with pytest.raises(NotFound):
        fetch(store, "illumos", K1, arc, out)
    with pytest.raises(NotFound):
        store.delete("illumos", K1)


@pytest.mark.parametrize("component,key", [("../x", K1), ("a/b", K1), ("ok", "../../etc"), ("ok", "ABC"), (".", K1)])
def test_names_that_escape_the_layout_are_refused(store: Store, tmp_path: Path, component: str, key: str) -> None:
    with pytest.raises(StoreError):
        store.put(component, key, blob(tmp_path, "a", 10), b"{}")


def test_quota_evicts_least_recently_used(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s", quota_bytes=2500)
    one = blob(tmp_path, "1", 1000)
    store.put("c", K1, one, b"{}")
    os.utime(store.root / "c" / f"{K1}.json", (100, 100))
    store.put("c", K2, blob(tmp_path, "2", 1000), b"{}")
    os.utime(store.root / "c" / f"{K2}.json", (200, 200))
    fetch(store, "c", K1, one, tmp_path / "dl")  # K1 is now the most recently used
    store.put("c", K3, blob(tmp_path, "3", 1000), b"{}")
    assert {e.key for e in store.list()} == {K1, K3}
    assert store.usage() == 2000
    removed = store.gc(quota_bytes=1000)
    assert [e.key for e in removed] == [K1] or [e.key for e in removed] == [K3]
    assert store.usage() == 1000


def test_gc_removes_stale_temporaries_and_orphans(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put("c", K1, blob(tmp_path, "1", 10), b"{}")
    (store.root / ".tmp").mkdir(exist_ok=True)
    stale = store.root / ".tmp" / "a-dead"
    stale.write_bytes(b"x")
    orphan = store.root / "c" / f"{K2}.tar.zst"
    orphan.write_bytes(b"x")
    for p in (stale, orphan):
        os.utime(p, (1, 1))
    store.gc()
    assert not stale.exists() and not orphan.exists()
    assert store.has("c", K1)


def test_concurrent_puts_and_gets_never_show_half_entries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    arc = blob(tmp_path, "arc", 200_000)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(30):
                store.put("c", K1, arc, b'{"x":1}')
        except BaseException as exc:
            errors.append(exc)

    hits: list[int] = []

    def reader(n: int) -> None:
        try:
            for i in range(30):
                try:
                    a = fetch(store, "c", K1, arc, tmp_path / f"r{n}-{i}")
                except NotFound:
                    continue
                assert a.stat().st_size == 200_000 and store.get_meta("c", K1) == b'{"x":1}'
                hits.append(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list((store.root / ".tmp").iterdir()) == []
    # Once the writer is done, every reader must find the whole entry: a store whose
    # get() never finds anything would pass the loop above.
    for n in range(3):
        a = fetch(store, "c", K1, arc, tmp_path / f"after-{n}")
        assert a.read_bytes() == arc.read_bytes() and store.get_meta("c", K1) == b'{"x":1}'


def test_memory_store_failure_injection(tmp_path: Path) -> None:
    store = MemoryStore()
    store.fail = StoreError("down")
    with pytest.raises(StoreError):
        store.has("c", K1)
