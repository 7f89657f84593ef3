"""state.load_all: the records of a plan, parsed only when their bytes are not in .pib/records-cache; an edit
is seen whatever the stat data says, and a corrupt record is still reported as corrupt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pib.build import state
from pib.build.state import Record


def _rec(name: str, key: str) -> Record:
    return Record(component=name, key=key, doc={"k": key}, action="built", finished=1.0, seconds=0.5, proto=None,
                  files={"bin": [0, 0, 0o40755], "bin/x": [3, 7, 0o100755]}, output="o1:" + "0" * 64, head=None)


@pytest.fixture()
def sd(tmp_path: Path) -> Path:
    for i in range(3):
        state.save(tmp_path, _rec(f"c{i}", f"{i}" * 64))
    return tmp_path


NAMES = ["c0", "c1", "c2", "absent"]


def _rewrite(sd: Path, name: str, key: str) -> Path:
    """The record of `name` with another key of the same length, its old mtime kept (same size, same second)."""
    path = sd / "state" / f"{name}.json"
    st = path.stat()
    text = path.read_text()
    old = state.load(sd, name)
    assert old is not None
    path.write_text(text.replace(old.key, key))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    return path


def test_unchanged_records_are_not_parsed_again(sd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = state.load_all(sd, NAMES)
    assert first == {n: state.load(sd, n) for n in NAMES}
    assert first["absent"] is None and first["c1"] == _rec("c1", "1" * 64)

    def refuse(_raw: bytes) -> None:
        raise AssertionError("parsed a record the cache holds")

    monkeypatch.setattr(state, "json_record", refuse)
    assert state.load_all(sd, NAMES) == first


def test_an_edit_in_the_same_second_to_the_same_size_is_seen(sd: Path) -> None:
    state.load_all(sd, NAMES)
    _rewrite(sd, "c1", "e" * 64)
    assert state.load_all(sd, NAMES)["c1"].key == "e" * 64  # type: ignore[union-attr]


def test_a_record_replaced_by_a_rename_or_dated_back_is_seen(sd: Path) -> None:
    state.load_all(sd, NAMES)
    state.save(sd, _rec("c2", "a" * 64))  # written beside and renamed over
    os.utime(sd / "state" / "c2.json", (1_000_000, 1_000_000))  # a clock set back
    assert state.load_all(sd, NAMES)["c2"].key == "a" * 64  # type: ignore[union-attr]


def test_a_record_corrupted_after_it_was_cached_is_corrupt(sd: Path) -> None:
    state.load_all(sd, NAMES)
    path = sd / "state" / "c0.json"
    path.write_bytes(path.read_bytes()[:-30])
    assert state.load_all(sd, NAMES)["c0"] is None
    said = state.set_aside_corrupt(sd)
    assert len(said) == 1 and "c0.json" in said[0]
    assert not path.exists()


def test_a_deleted_record_is_not_built(sd: Path) -> None:
    state.load_all(sd, NAMES)
    state.forget(sd, "c1")
    assert state.load_all(sd, NAMES)["c1"] is None


def test_a_torn_or_foreign_cache_is_a_miss(sd: Path) -> None:
    want = state.load_all(sd, NAMES)
    cache = sd / "records-cache"
    for junk in (b"", b"garbage", cache.read_bytes()[:-10], cache.read_bytes()[:40] + b"\x80\x05N."):
        cache.write_bytes(junk)
        assert state.load_all(sd, NAMES) == want
