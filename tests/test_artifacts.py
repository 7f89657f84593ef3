from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path

import pytest

from pib.artifacts import archive, signing, transfer
from pib.artifacts.metadata import ArtifactInfo, CbeInfo, make_metadata
from pib.artifacts.signing import PublicKey, Signer
from pib.config.types import HttpStoreSpec, S3StoreSpec
from pib.errors import PibError, Reason, StoreError
from pib.fsutil import sha256_file
from pib.store.backends import open_store
from pib.store.local import LocalStore
from pib.store.memory import MemoryStore
from tests.reliability import tally
from tests.services.badhttp import BadHttp
from tests.services.nginx import Nginx
from tests.services.seaweed import Seaweed
from tests.tarcraft import Entry, write_archive

KEY = "ab" * 32
OTHER = "cd" * 32
CBE = CbeInfo("smartos-cbe", "2026.1", "f" * 64)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Signer, PublicKey]:
    pub = signing.generate_keypair(tmp_path / "keys/k", tmp_path / "keys/k.pub")
    return signing.load_signer(tmp_path / "keys/k"), pub


def make_proto(root: Path) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/ls").write_bytes(b"\x7fELF" + bytes(1000))
    (root / "usr/bin/ls").chmod(0o755)
    (root / "usr/bin/dir").symlink_to("ls")
    return root


def put_signed(store: MemoryStore, archive_path: Path, signer: Signer, *, component: str = "extra",
               key: str = KEY, meta_component: str | None = None, meta_key: str | None = None,
               sha: str | None = None) -> None:
    real_sha, size = sha256_file(archive_path)
    meta = make_metadata(ArtifactInfo(meta_component or component, meta_key or key, {"k": 1}, False, "test", CBE), sha or real_sha, size, signer)
    store.put(component, key, archive_path, meta, sha or real_sha)  # a wrong sha: a damaged archive under its name


def test_publish_then_restore_roundtrip(tmp_path: Path, keys: tuple[Signer, PublicKey]) -> None:
    signer, pub = keys
    src = make_proto(tmp_path / "proto.extra")
    remote = MemoryStore("ci")
    local = LocalStore(tmp_path / "cache")
    out = transfer.publish(ArtifactInfo("extra", KEY, {"tree": "abc"}, False, "linux-x86_64", CBE), src, [local, remote], signer, remote=True, epoch=100)
    assert out.published == ("local", "ci") and out.problems == ()
    doc = json.loads(out.metadata)
    assert doc["signer"] == pub.id and doc["key_doc"] == {"tree": "abc"} and doc["cbe"]["version"] == "2026.1"
    assert doc["archive_size"] == out.archive_size and doc["dirty"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "keys", "proto.extra"]

    fresh_local = LocalStore(tmp_path / "cache2")
    dest = tmp_path / "ws/proto.extra"
    result = transfer.restore("extra", KEY, [remote], [pub], dest, None, local_store=fresh_local)
    assert result.hit and result.store == "ci" and result.bytes == out.archive_size
    assert result.metadata is not None and result.metadata.cbe == CBE
    assert (dest / "usr/bin/ls").read_bytes() == (src / "usr/bin/ls").read_bytes()
    assert fresh_local.has("extra", KEY)  # a remote hit is cached locally
    # second restore comes from the local store without touching the remote
    remote.calls.clear()
    again = transfer.restore("extra", KEY, [remote], [pub], dest, None, local_store=fresh_local)
    assert again.hit and again.store == "local" and remote.calls == []
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["proto.extra"]


def test_miss_and_store_errors_are_reported_not_raised(tmp_path: Path, keys: tuple[Signer, PublicKey]) -> None:
    _, pub = keys
    down = MemoryStore("down")
    down.fail = StoreError("connection refused")
    empty = MemoryStore("empty")
    miss = transfer.restore("extra", KEY, [empty], [pub], tmp_path / "p", None, local_store=None)
    assert miss.status == "miss" and miss.problems == ()
    err = transfer.restore("extra", KEY, [down, empty], [pub], tmp_path / "p", None, local_store=None)
    assert err.status == "error"
    assert [(p.store, p.reason) for p in err.problems] == [("down", Reason.STORE)]
    assert not (tmp_path / "p").exists()


def test_publish_refusals(tmp_path: Path, keys: tuple[Signer, PublicKey]) -> None:
    signer, _ = keys
    src = make_proto(tmp_path / "proto")
    remote, local = MemoryStore("ci"), MemoryStore("local", remote=False)
    with pytest.raises(PibError) as exc:
        transfer.publish(ArtifactInfo("extra", KEY, {}, False, "x", None), src, [local, remote], None, remote=True)
    assert exc.value.reason is Reason.PUBLISH
    with pytest.raises(PibError) as exc:
        transfer.publish(ArtifactInfo("extra", KEY, {}, True, "x", None), src, [local, remote], signer, remote=True)
    assert exc.value.reason is Reason.PUBLISH
    assert remote.entries == {} and local.entries == {}
    ok = transfer.publish(ArtifactInfo("extra", KEY, {}, True, "x", None), src, [local, remote], signer, remote=False)
    assert ok.published == ("local",) and remote.entries == {}
    assert json.loads(ok.metadata)["dirty"] is True


def test_failing_store_during_publish_is_a_problem(tmp_path: Path, keys: tuple[Signer, PublicKey]) -> None:
    signer, _ = keys
    src = make_proto(tmp_path / "proto")
    down = MemoryStore("down")
    down.fail = StoreError("503")
    ok = MemoryStore("ok")
    out = transfer.publish(ArtifactInfo("extra", KEY, {}, False, "x", None), src, [down, ok], signer, remote=True)
    assert out.published == ("ok",) and [p.reason for p in out.problems] == [Reason.STORE]


HOSTILE = {
    "traversal": [Entry("../escape", data=b"x")],
    "absolute": [Entry("/tmp/pib-absolute-escape", data=b"x")],
    "symlink-write-through": [Entry("l", "symlink", target="../../.."), Entry("l/escape", data=b"x")],
    "hardlink-out": [Entry("h", "hardlink", target="../outside/victim")],
    "device": [Entry("dev/kmem", "chr")],
    "setuid": [Entry("bin/su", data=b"x", mode=0o4755)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_signed_archives_are_rejected(tmp_path: Path, keys: tuple[Signer, PublicKey], case: str) -> None:
    signer, pub = keys
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("v")
    arc = write_archive(tmp_path / "h.tar.zst", HOSTILE[case])
    store = MemoryStore("ci")
    put_signed(store, arc, signer)
    ws = tmp_path / "ws"
    ws.mkdir()
    out = transfer.restore("extra", KEY, [store], [pub], ws / "proto.extra", None, local_store=None)
    assert out.status == "error" and [p.reason for p in out.problems] == [Reason.VERIFY]
    assert list(ws.iterdir()) == []
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert not Path("/tmp/pib-absolute-escape").exists()


def test_bomb_is_rejected(tmp_path: Path, keys: tuple[Signer, PublicKey]) -> None:
    signer, pub = keys
    arc = write_archive(tmp_path / "b.tar.zst", [Entry(f"z{i}", data=bytes(4 << 20)) for i in range(4)])
    store = MemoryStore("ci")
    put_signed(store, arc, signer)
    ws = tmp_path / "ws"
    ws.mkdir()
    out = transfer.restore("extra", KEY, [store], [pub], ws / "p", None, local_store=None,
                            limits=archive.Limits(max_bytes=1 << 20))
    assert [p.reason for p in out.problems] == [Reason.VERIFY]
    assert list(ws.iterdir()) == []


def _good_archive(tmp_path: Path) -> Path:
    return archive.pack(make_proto(tmp_path / "src"), tmp_path / "good.tar.zst", epoch=1).path


def test_truncated_and_flipped_archives_fail_the_checksum(tmp_path: Path, keys: tuple[Signer, PublicKey]) -> None:
    signer, pub = keys
    good = _good_archive(tmp_path)
    data = good.read_bytes()
    for name, bad in [("trunc", data[:-20]), ("flip", data[:50] + bytes([data[50] ^ 1]) + data[51:])]:
        path = tmp_path / name
        path.write_bytes(bad)
        store = MemoryStore("ci")
        # metadata describes the good archive; the store serves the damaged one
        sha, size = sha256_file(good)
        store.put("extra", KEY, path, make_metadata(ArtifactInfo("extra", KEY, {}, False, "x", None), sha, size, signer),
                  sha)
        ws = tmp_path / f"ws-{name}"
        ws.mkdir()
        out = transfer.restore("extra", KEY, [store], [pub], ws / "p", None, local_store=None)
        assert [p.reason for p in out.problems] == [Reason.VERIFY]
        assert list(ws.iterdir()) == []


def test_a_valid_archive_of_the_right_size_that_is_not_the_signed_one_is_never_put_in_place(
        tmp_path: Path, keys: tuple[Signer, PublicKey]) -> None:
    # The hash is taken in the pass that unpacks: a store serving another well-formed archive, padded
    # to the signed size with a zstd skippable frame, is extracted only into the private directory,
    # and refused by its SHA-256 before anything is put into place.
    signer, pub = keys
    good = _good_archive(tmp_path)
    other_src = make_proto(tmp_path / "other")
    (other_src / "planted").write_text("not what was signed\n")
    other = archive.pack(other_src, tmp_path / "other.tar.zst", epoch=1).path
    pad = good.stat().st_size - other.stat().st_size - 8
    if pad < 0:
        good, other, pad = other, good, -pad - 16  # sign the larger one; serve the smaller, padded
    served = tmp_path / "served.tar.zst"
    served.write_bytes(other.read_bytes() + (0x184D2A50).to_bytes(4, "little") + pad.to_bytes(4, "little") + bytes(pad))
    sha, size = sha256_file(good)
    assert served.stat().st_size == size
    archive.validate(served)  # well-formed: only the hash can tell
    store = MemoryStore("ci")
    store.put("extra", KEY, served, make_metadata(ArtifactInfo("extra", KEY, {}, False, "x", None), sha, size, signer),
              sha)
    ws = tmp_path / "ws"
    ws.mkdir()
    out = transfer.restore("extra", KEY, [store], [pub], ws / "p", None, local_store=None)
    assert [p.reason for p in out.problems] == [Reason.VERIFY]
    assert "SHA-256" in out.problems[0].message
    assert list(ws.iterdir()) == []


def test_untrusted_unsigned_and_replayed_metadata(tmp_path: Path, keys: tuple[Signer, PublicKey]) -> None:
    signer, pub = keys
    good = _good_archive(tmp_path)
    signing.generate_keypair(tmp_path / "s", tmp_path / "s.pub")
    stranger = signing.load_signer(tmp_path / "s")
    cases: dict[str, MemoryStore] = {}
    cases["untrusted"] = MemoryStore("a")
    put_signed(cases["untrusted"], good, stranger)
    cases["other-key"] = MemoryStore("b")
    put_signed(cases["other-key"], good, signer, meta_key=OTHER)
    cases["other-component"] = MemoryStore("c")
    put_signed(cases["other-component"], good, signer, meta_component="illumos")
    cases["unsigned"] = MemoryStore("d")
    sha, size = sha256_file(good)
    doc = json.loads(make_metadata(ArtifactInfo("extra", KEY, {}, False, "x", None), sha, size, signer))
    del doc["signature"]
    cases["unsigned"].put("extra", KEY, good, json.dumps(doc).encode())
    cases["tampered"] = MemoryStore("e")
    doc["signature"] = signer.sign(b"something else")
    doc["builder_platform"] = "evil"
    cases["tampered"].put("extra", KEY, good, json.dumps(doc).encode())
    for name, store in cases.items():
        ws = tmp_path / f"ws-{name}"
        ws.mkdir()
        out = transfer.restore("extra", KEY, [store], [pub], ws / "p", None, local_store=None)
        assert out.status == "error", name
        assert [p.reason for p in out.problems] == [Reason.VERIFY], name
        assert store.calls.count("get_archive") == 0, name  # refused before the archive was fetched
        assert list(ws.iterdir()) == [], name


def test_bad_store_then_good_store(tmp_path: Path, keys: tuple[Signer, PublicKey]) -> None:
    signer, pub = keys
    good = _good_archive(tmp_path)
    bad = MemoryStore("bad")
    put_signed(bad, good, signer, sha="0" * 64)
    fine = MemoryStore("fine")
    put_signed(fine, good, signer)
    out = transfer.restore("extra", KEY, [bad, fine], [pub], tmp_path / "p", None, local_store=None)
    assert out.hit and out.store == "fine"
    assert [(p.store, p.reason) for p in out.problems] == [("bad", Reason.VERIFY)]


def test_explain_nearest_picks_newest(tmp_path: Path, keys: tuple[Signer, PublicKey]) -> None:
    signer, _ = keys
    good = _good_archive(tmp_path)
    store = MemoryStore("ci")
    for key, day, doc in [(KEY, 1, {"v": "old"}), (OTHER, 2, {"v": "new"})]:
        sha, size = sha256_file(good)
        meta = make_metadata(ArtifactInfo("extra", key, doc, False, "x", None), sha, size, signer, created=dt.datetime(2026, 1, day, tzinfo=dt.UTC))
        store.put("extra", key, good, meta)
    down = MemoryStore("down")
    down.fail = StoreError("x")
    nearest = transfer.explain_nearest("extra", [down, store])
    assert nearest is not None and nearest.key == OTHER and nearest.key_doc == {"v": "new"}
    assert transfer.explain_nearest("nothing", [store]) is None


# ------------------------------------------------------------- real services


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["refused", "500", "503", "stall", "truncated", "shortlength", "drip"])
def test_misbehaving_http_store_gives_error_outcome(badhttp: BadHttp, tmp_path: Path,
                                                   keys: tuple[Signer, PublicKey], mode: str) -> None:
    _, pub = keys
    url = badhttp.refused_url if mode == "refused" else f"{badhttp.url}/{mode}"
    store = open_store(HttpStoreSpec("bad", url, timeout=1.0, retries=1))
    ws = tmp_path / "ws"
    ws.mkdir()
    start = time.monotonic()
    out = transfer.restore("extra", KEY, [store], [pub], ws / "proto.extra", None, local_store=None)
    assert time.monotonic() - start < 30
    assert out.status == "error" and len(out.problems) == 1
    # a lying Content-Length yields garbage metadata, which fails verification
    expected = Reason.VERIFY if mode == "shortlength" else Reason.STORE
    assert out.problems[0].reason is expected and out.problems[0].store == "bad"
    assert list(ws.iterdir()) == []


@pytest.mark.integration
def test_publish_and_restore_through_nginx_and_s3(nginx: Nginx, seaweed: Seaweed, tmp_path: Path,
                                                  keys: tuple[Signer, PublicKey],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    signer, pub = keys
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    bucket = f"pib-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    http = open_store(HttpStoreSpec("http", f"{nginx.url}/{uuid.uuid4().hex}", timeout=5.0))
    s3 = open_store(S3StoreSpec("s3", bucket, "pib", seaweed.endpoint_url, "us-east-1", None, 5.0, 1))
    src = make_proto(tmp_path / "proto.extra")
    out = transfer.publish(ArtifactInfo("extra", KEY, {"a": 1}, False, "x", CBE), src, [http, s3], signer, remote=True)
    assert out.published == ("http", "s3") and out.problems == ()
    for store in (http, s3):
        local = LocalStore(tmp_path / f"local-{store.name}")
        dest = tmp_path / f"ws-{store.name}" / "proto.extra"
        got = transfer.restore("extra", KEY, [store], [pub], dest, None, local_store=local)
        assert got.hit and got.store == store.name and got.bytes == out.archive_size
        assert (dest / "usr/bin/ls").read_bytes() == (src / "usr/bin/ls").read_bytes()
        assert local.has("extra", KEY)
    nearest = transfer.explain_nearest("extra", [http, s3])
    assert nearest is not None and nearest.key == KEY and nearest.key_doc == {"a": 1}


def _signed_raw(signer: Signer, archive_path: Path, **changes: object) -> bytes:
    """Metadata signed by a trusted key (as a compromised key would sign it), with fields changed."""
    sha, size = sha256_file(archive_path)
    doc = json.loads(make_metadata(ArtifactInfo("extra", KEY, {"k": 1}, False, "test", CBE), sha, size, signer))
    del doc["signature"]
    doc.update(changes)
    from pib.fsutil import canonical_json

    return canonical_json({**doc, "signature": signer.sign(canonical_json(doc))})


MALFORMED_META = ["deep nesting", "5000-digit integer", "archive_size 1e999 (signed)", "NaN", "duplicate field",
                  "larger than MAX_META", "archive_size a string (signed)", "archive_size a bool (signed)",
                  "key_doc a list (signed)", "dirty a string (signed)", "cbe a number (signed)",
                  "archive_sha256 not hex (signed)", "not UTF-8", "a JSON list"]


def _malformed(case: str, signer: Signer, arc: Path) -> bytes:
    from pib.store import MAX_META

    good = _signed_raw(signer, arc)
    return {
        "deep nesting": b"[" * 200_000,
        "5000-digit integer": b'{"archive_size": ' + b"9" * 5000 + b"}",
        "archive_size 1e999 (signed)": _signed_raw(signer, arc, archive_size=float("inf")).replace(b"Infinity", b"1e999"),
        "NaN": good.replace(b'"dirty":false', b'"dirty":NaN'),
        "duplicate field": good.replace(b'"dirty":false', b'"dirty":false,"dirty":true'),
        "larger than MAX_META": good + b" " * MAX_META,
        "archive_size a string (signed)": _signed_raw(signer, arc, archive_size="12"),
        "archive_size a bool (signed)": _signed_raw(signer, arc, archive_size=True),
        "key_doc a list (signed)": _signed_raw(signer, arc, key_doc=[1]),
        "dirty a string (signed)": _signed_raw(signer, arc, dirty="no"),
        "cbe a number (signed)": _signed_raw(signer, arc, cbe=5),
        "archive_sha256 not hex (signed)": _signed_raw(signer, arc, archive_sha256="../" * 20),
        "not UTF-8": b'{"a": "\xff"}',
        "a JSON list": b"[1, 2]",
    }[case]


@pytest.mark.parametrize("case", MALFORMED_META)
def test_malformed_metadata_is_a_verify_problem_never_a_crash(tmp_path: Path, keys: tuple[Signer, PublicKey],
                                                             case: str) -> None:
    with tally("metadata", f"malformed metadata: {case}"):
        signer, pub = keys
        arc = archive.pack(make_proto(tmp_path / "src"), tmp_path / "a.tar.zst", epoch=1).path
        store = MemoryStore("ci")
        store.put("extra", KEY, arc, _malformed(case, signer, arc))
        out = transfer.restore("extra", KEY, [store], [pub], tmp_path / "proto.extra", None, local_store=None)
        assert out.status == "error"
        assert [p.reason for p in out.problems] == [Reason.VERIFY]
        assert not (tmp_path / "proto.extra").exists()
        # `pib explain` looks at the same bytes, unverified: it skips what does not parse, never crashes.
        nearest = transfer.explain_nearest("extra", [store])
        assert nearest is None or (case.endswith("(signed)") and isinstance(nearest.key_doc, dict))


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["nginx", "seaweedfs"])
def test_two_publishes_of_one_key_that_interleave_leave_a_consistent_entry(
        nginx: Nginx, seaweed: Seaweed, tmp_path: Path, keys: tuple[Signer, PublicKey],
        monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    with tally("metadata", f"two publishes of one key interleaved ({backend})"):
        _interleaved_publishes(nginx, seaweed, tmp_path, keys, monkeypatch, backend)


def _interleaved_publishes(nginx: Nginx, seaweed: Seaweed, tmp_path: Path, keys: tuple[Signer, PublicKey],
                           monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    # Two publishers of one key with different trees (e.g. two CI runners), interleaved at their
    # worst: archive A, archive B, metadata B, metadata A. The entry must still verify, as A.
    import threading

    from pib.store.http import HttpStore
    from pib.store.s3 import S3Store

    signer, pub = keys
    if backend == "nginx":
        store = open_store(HttpStoreSpec("team", f"{nginx.url}/{uuid.uuid4().hex}", timeout=5.0))
        cls: type = HttpStore
        method = "_attempts"
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
        bucket = f"pib-{uuid.uuid4().hex[:12]}"
        seaweed.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        store = open_store(S3StoreSpec("team", bucket, "pib", seaweed.endpoint_url, "us-east-1", None, 5.0, 1))
        cls = S3Store
        method = "_call"
    real = getattr(cls, method)
    steps = {name: threading.Event() for name in ("archive A", "archive B", "meta B")}

    def gated(self: object, what: str, fn: object, **kw: object) -> object:
        me = threading.current_thread().name
        if what.startswith("PUT") and what.endswith(".tar.zst"):
            if me == "B":
                assert steps["archive A"].wait(60)
            out = real(self, what, fn, **kw)
            steps[f"archive {me}"].set()
            return out
        if what.startswith("PUT") and what.endswith(".json"):
            assert steps["archive B"].wait(60)
            if me == "A":
                assert steps["meta B"].wait(60)
            out = real(self, what, fn, **kw)
            if me == "B":
                steps["meta B"].set()
            return out
        return real(self, what, fn, **kw)

    monkeypatch.setattr(cls, method, gated)
    trees = {}
    for name in ("A", "B"):
        trees[name] = make_proto(tmp_path / f"proto-{name}")
        (trees[name] / "usr/bin/ls").write_bytes(f"built by {name}".encode() * 1000)
    errors: list[BaseException] = []

    def publisher(name: str) -> None:
        try:
            out = transfer.publish(ArtifactInfo("extra", KEY, {"a": 1}, False, name, CBE), trees[name], [store],
                                   signer, remote=True)
            assert out.problems == ()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(n,), name=n) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    monkeypatch.setattr(cls, method, real)
    dest = tmp_path / "ws" / "proto.extra"
    got = transfer.restore("extra", KEY, [store], [pub], dest, None, local_store=None)
    assert got.hit, got.problems
    assert got.metadata is not None and got.metadata.builder_platform == "A"
    assert (dest / "usr/bin/ls").read_bytes() == b"built by A" * 1000
