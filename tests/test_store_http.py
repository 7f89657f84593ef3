from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from pib.config.types import HttpStoreSpec
from pib.errors import Reason, StoreError
from pib.fsutil import sha256_file
from pib.store import NotFound
from pib.store.backends import open_store
from pib.store.http import HttpStore
from tests.reliability import tally
from tests.services.badhttp import MODES, BadHttp
from tests.services.nginx import BASIC_PASSWORD, BASIC_USER, Nginx
from tests.storecheck import K1, exercise, fetch

pytestmark = pytest.mark.integration


def fresh(nginx: Nginx, sub: str = "", **kw: object) -> HttpStore:
    store = open_store(HttpStoreSpec("ci", f"{nginx.url}/{sub}{uuid.uuid4().hex}", **kw))  # type: ignore[arg-type]
    assert isinstance(store, HttpStore)
    return store


def test_protocol_against_nginx(nginx: Nginx, tmp_path: Path) -> None:
    exercise(fresh(nginx), tmp_path)


def test_large_archive_and_layout_on_disk(nginx: Nginx, tmp_path: Path) -> None:
    store = fresh(nginx)
    arc = tmp_path / "big"
    arc.write_bytes(b"x" * (5 << 20) + b"end")
    store.put("illumos", K1, arc, b"{}")
    base = nginx.root / store.spec.url.rsplit("/", 1)[1] / "illumos"
    sha = sha256_file(arc)[0]
    assert sorted(p.name for p in base.iterdir()) == [f"{K1}.{sha}.tar.zst", f"{K1}.json"]
    a = fetch(store, "illumos", K1, arc, tmp_path / "dl")
    assert a.read_bytes() == arc.read_bytes()


def test_bearer_token(nginx: Nginx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arc = tmp_path / "a"
    arc.write_bytes(b"data")
    anonymous = fresh(nginx, "private/")
    with pytest.raises(StoreError) as exc:
        anonymous.has("illumos", K1)
    assert not isinstance(exc.value, NotFound) and exc.value.reason is Reason.STORE
    monkeypatch.setenv("PIB_TEST_TOKEN", nginx.token)
    store = fresh(nginx, "private/", token_env="PIB_TEST_TOKEN")
    store.put("illumos", K1, arc, b"{}")
    assert store.has("illumos", K1)


def test_basic_auth(nginx: Nginx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arc = tmp_path / "a"
    arc.write_bytes(b"data")
    monkeypatch.setenv("PIB_TEST_USER", BASIC_USER)
    monkeypatch.setenv("PIB_TEST_PASSWORD", "wrong")
    wrong = fresh(nginx, "basic/", user_env="PIB_TEST_USER", password_env="PIB_TEST_PASSWORD")
    with pytest.raises(StoreError) as exc:
        wrong.put("illumos", K1, arc, b"{}")
    assert not isinstance(exc.value, NotFound)
    monkeypatch.setenv("PIB_TEST_PASSWORD", BASIC_PASSWORD)
    store = fresh(nginx, "basic/", user_env="PIB_TEST_USER", password_env="PIB_TEST_PASSWORD")
    store.put("illumos", K1, arc, b"{}")
    assert store.get_meta("illumos", K1) == b"{}"


@pytest.mark.parametrize("mode", [*MODES, "refused"])
def test_misbehaving_server_fails_fast(badhttp: BadHttp, tmp_path: Path, mode: str) -> None:
    url = badhttp.refused_url if mode == "refused" else f"{badhttp.url}/{mode}"
    store = open_store(HttpStoreSpec("bad", url, timeout=1.0, retries=1))
    start = time.monotonic()
    if mode in ("500", "503", "stall", "refused", "dripheaders"):
        with pytest.raises(StoreError) as exc:
            store.has("illumos", K1)
        assert not isinstance(exc.value, NotFound) and exc.value.reason is Reason.STORE
    else:
        assert store.has("illumos", K1)  # a HEAD answered 200 has no body to get wrong
    if mode == "shortlength":
        # a server lying about lengths can slip a short body through; signature checks catch it
        assert store.get_meta("illumos", K1) == b'{"a":'
    else:
        with pytest.raises(StoreError) as exc:
            store.get_archive("illumos", K1, "0" * 64, tmp_path / "dl" / "a", 1000)
        assert not isinstance(exc.value, NotFound) and exc.value.reason is Reason.STORE
    assert time.monotonic() - start < 30  # bounded: 2 attempts x 1 s time-out per call, plus backoff
    leftovers = list((tmp_path / "dl").iterdir()) if (tmp_path / "dl").exists() else []
    assert leftovers == []


@pytest.mark.parametrize("mode", ["drip554", "nolength", "chunked", "dripheaders"])
def test_archive_downloads_end_at_the_signed_size_and_a_deadline(badhttp: BadHttp, tmp_path: Path,
                                                                 mode: str) -> None:
    # A small archive whose signed metadata says 554 bytes: the server drips its right length a byte
    # at a time (110 s), drips its headers, or sends an endless body without a length.
    with tally("transfer", f"HTTP archive download: {mode}"):
        store = open_store(HttpStoreSpec("bad", f"{badhttp.url}/{mode}", timeout=1.0, retries=1))
        dest = tmp_path / "dl" / "a.tar.zst"
        start = time.monotonic()
        with pytest.raises(StoreError) as exc:
            store.get_archive("illumos", K1, "0" * 64, dest, 554)
        assert not isinstance(exc.value, NotFound) and exc.value.reason is Reason.STORE
        assert time.monotonic() - start < 8  # 2 attempts x (1 s + 554 bytes at the minimum rate), plus backoff
        assert not dest.exists() and list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("call", ["has", "get_meta"])
def test_dripped_headers_time_out(badhttp: BadHttp, call: str) -> None:
    with tally("transfer", f"HTTP headers dripped: {call}"):
        store = open_store(HttpStoreSpec("bad", f"{badhttp.url}/dripheaders", timeout=1.0, retries=0))
        start = time.monotonic()
        with pytest.raises(StoreError) as exc:
            getattr(store, call)("illumos", K1)
        assert not isinstance(exc.value, NotFound)
        assert time.monotonic() - start < 4
