from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pib.config.types import S3StoreSpec
from pib.errors import Reason, StoreError
from pib.fsutil import sha256_file
from pib.store import NotFound, s3
from pib.store.backends import open_store
from pib.store.s3 import S3Store
from tests.reliability import tally
from tests.services.badhttp import BadHttp
from tests.services.ports import free_ports
from tests.services.seaweed import Seaweed
from tests.storecheck import K1, exercise, fetch

pytestmark = pytest.mark.integration


@pytest.fixture
def creds(seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seaweed]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield seaweed


@pytest.fixture(scope="session")
def bucket(seaweed: Seaweed) -> str:
    name = f"pib-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


def store_for(seaweed: Seaweed, bucket: str, prefix: str) -> S3Store:
    store = open_store(S3StoreSpec("s3", bucket, prefix, seaweed.endpoint_url, "us-east-1", None, 5.0, 1))
    assert isinstance(store, S3Store)
    return store


def test_protocol_against_seaweedfs(creds: Seaweed, bucket: str, tmp_path: Path) -> None:
    exercise(store_for(creds, bucket, f"t/{uuid.uuid4().hex}"), tmp_path)


def test_protocol_without_prefix(creds: Seaweed, tmp_path: Path) -> None:
    name = f"pib-{uuid.uuid4().hex[:12]}"
    creds.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
    exercise(store_for(creds, name, ""), tmp_path)


def test_layout_and_multipart_upload(creds: Seaweed, bucket: str, tmp_path: Path) -> None:
    prefix = f"t/{uuid.uuid4().hex}"
    store = store_for(creds, bucket, prefix)
    store._transfer.multipart_threshold = 1 << 20  # exercise the multipart path with a small file
    arc = tmp_path / "a"
    arc.write_bytes(bytes(range(256)) * (12 << 12))
    store.put("illumos", K1, arc, b"{}")
    keys = sorted(o["Key"] for o in creds.client().list_objects_v2(  # type: ignore[attr-defined]
        Bucket=bucket, Prefix=prefix)["Contents"])
    assert keys == [f"{prefix}/illumos/{K1}.{sha256_file(arc)[0]}.tar.zst", f"{prefix}/illumos/{K1}.json"]
    a = fetch(store, "illumos", K1, arc, tmp_path / "dl")
    assert a.read_bytes() == arc.read_bytes()


def test_wrong_credentials_are_an_error_not_a_miss(creds: Seaweed, bucket: str, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    store = store_for(creds, bucket, "x")
    with pytest.raises(StoreError) as exc:
        store.get_meta("illumos", K1)
    assert not isinstance(exc.value, NotFound) and exc.value.reason is Reason.STORE


def test_unreachable_endpoint_fails_fast(creds: Seaweed, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    store = open_store(S3StoreSpec("s3", "bucket", "", f"http://127.0.0.1:{port}", "us-east-1", None, 1.0, 1))
    start = time.monotonic()
    with pytest.raises(StoreError) as exc:
        store.has("illumos", K1)
    assert not isinstance(exc.value, NotFound)
    with pytest.raises(StoreError):
        store.has_many([("illumos", K1), ("extra", K1)])
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("mode", ["drip554", "nolength", "chunked"])
def test_archive_downloads_end_at_the_signed_size_and_a_deadline(badhttp: BadHttp, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    # The misbehaving loopback server as an S3 endpoint (its first path segment, the bucket, picks the
    # behaviour): an archive whose signed metadata says 554 bytes never costs more than that, or long.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with tally("transfer", f"S3 archive download: {mode}"):
        store = open_store(S3StoreSpec("bad", mode, "", badhttp.url, "us-east-1", None, 1.0, 0))
        dest = tmp_path / "dl" / "a.tar.zst"
        start = time.monotonic()
        with pytest.raises(StoreError) as exc:
            store.get_archive("illumos", K1, "0" * 64, dest, 554)
        assert not isinstance(exc.value, NotFound) and exc.value.reason is Reason.STORE
        assert time.monotonic() - start < 8
        assert not dest.exists() and list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("call", ["has", "get_meta", "get_archive"])
def test_dripped_headers_time_out(badhttp: BadHttp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  call: str) -> None:
    # Headers a byte every 0.2 s, without end: botocore's read time-out restarts on every byte, so
    # only an overall deadline ends the existence check or the GET (before it: about 13,000 s).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with tally("transfer", f"S3 headers dripped: {call}"):
        store = open_store(S3StoreSpec("bad", "dripheaders", "", badhttp.url, "us-east-1", None, 1.0, 0))
        dest = tmp_path / "dl" / "a.tar.zst"
        args = ("illumos", K1, "0" * 64, dest, 554) if call == "get_archive" else ("illumos", K1)
        start = time.monotonic()
        with pytest.raises(StoreError) as exc:
            getattr(store, call)(*args)
        assert not isinstance(exc.value, NotFound) and exc.value.reason is Reason.STORE
        assert time.monotonic() - start < 4
        assert not dest.exists()


def test_a_store_that_stops_answering_is_not_asked_without_bound(badhttp: BadHttp, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every abandoned request keeps a thread (botocore gives no socket to close): after a few, the
    # store gets no more requests, and each later call fails at once instead of after its deadline.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with tally("transfer", "S3 store that stops answering: hung requests bounded"):
        store = open_store(S3StoreSpec("bad", "dripheaders", "", badhttp.url, "us-east-1", None, 0.5, 0))
        before = {t for t in threading.enumerate() if t.name == "pib-s3-bad"}
        for _ in range(s3.MAX_HUNG):
            with pytest.raises(StoreError, match="no answer within"):
                store.has("illumos", K1)
        start = time.monotonic()
        for _ in range(20):
            with pytest.raises(StoreError, match="still without an answer") as exc:
                store.has("illumos", K1)
            assert exc.value.reason is Reason.STORE
        assert time.monotonic() - start < 1
        hung = {t for t in threading.enumerate() if t.name == "pib-s3-bad"} - before
        assert len(hung) <= s3.MAX_HUNG
