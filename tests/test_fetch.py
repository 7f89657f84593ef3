"""Pinned inputs: download cache, stores as mirrors, upstream through a private apt or a URL."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pib.config.types import AptOrigin, Pinned, UrlOrigin
from pib.errors import Reason
from pib.fetch import Fetcher, FetchError, blob_path, stage
from pib.fetch.apt import AptSources, NotInArchive, PrivateApt
from pib.store.local import LocalStore
from pib.store.memory import MemoryStore
from tests.debrepo import build_deb, make_archive, sha256


def _pin_url(tmp_path: Path, name: str, data: bytes) -> Pinned:
    src = tmp_path / "upstream" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    return Pinned(name, hashlib.sha256(data).hexdigest(), UrlOrigin(src.as_uri()), len(data))


def test_url_then_cache(tmp_path: Path) -> None:
    pin = _pin_url(tmp_path, "a.tar", b"hello\n")
    f = Fetcher(tmp_path / "cache")
    got = f.fetch([pin])[pin.sha256]
    assert got.came_from == "upstream" and got.path.read_bytes() == b"hello\n"
    (tmp_path / "upstream" / "a.tar").unlink()  # upstream gone: the cache still serves it
    again = Fetcher(tmp_path / "cache").fetch([pin])[pin.sha256]
    assert again.came_from == "cache"


def test_upstream_wrong_bytes_are_refused_and_not_cached(tmp_path: Path) -> None:
    pin = _pin_url(tmp_path, "a.tar", b"hello\n")
    (tmp_path / "upstream" / "a.tar").write_bytes(b"HELLO\n")
    with pytest.raises(FetchError) as exc:
        Fetcher(tmp_path / "cache").fetch([pin])
    assert exc.value.reason is Reason.VERIFY and pin.sha256 in exc.value.message
    assert not list((tmp_path / "cache" / "sha256").iterdir())


def test_corrupt_cache_entry_is_fetched_again(tmp_path: Path) -> None:
    pin = _pin_url(tmp_path, "a.tar", b"hello\n")
    f = Fetcher(tmp_path / "cache")
    path = f.fetch([pin])[pin.sha256].path
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    warnings: list[str] = []
    got = Fetcher(tmp_path / "cache", warn=warnings.append).fetch([pin])[pin.sha256]
    assert got.came_from == "upstream" and got.path.read_bytes() == b"hello\n"
    assert any("wrong bytes" in w for w in warnings)


def test_store_mirror_before_upstream_and_wrong_bytes_fall_through(tmp_path: Path) -> None:
    pin = _pin_url(tmp_path, "a.tar", b"hello\n")
    liar, honest = MemoryStore("liar"), MemoryStore("ci")
    liar.blobs[blob_path(pin.sha256)] = b"not hello\n"
    honest.blobs[blob_path(pin.sha256)] = b"hello\n"
    (tmp_path / "upstream" / "a.tar").unlink()  # only the stores have it
    warnings: list[str] = []
    got = Fetcher(tmp_path / "cache", mirrors=[liar, honest], warn=warnings.append).fetch([pin])[pin.sha256]
    assert got.came_from == "store ci" and got.path.read_bytes() == b"hello\n"
    assert any(w.startswith("store liar:") for w in warnings)


def test_offline_uses_only_cache_and_local_store(tmp_path: Path) -> None:
    pin = _pin_url(tmp_path, "a.tar", b"hello\n")
    remote = MemoryStore("ci")
    remote.blobs[blob_path(pin.sha256)] = b"hello\n"
    local = LocalStore(tmp_path / "store")
    with pytest.raises(FetchError, match="offline"):
        Fetcher(tmp_path / "cache", mirrors=[local, remote], offline=True).fetch([pin])
    assert remote.calls == []  # never asked
    src = tmp_path / "x"
    src.write_bytes(b"hello\n")
    local.put_blob(blob_path(pin.sha256), src)
    got = Fetcher(tmp_path / "cache", mirrors=[local, remote], offline=True).fetch([pin])[pin.sha256]
    assert got.came_from == "store local"


def test_declared_size_caps_the_download(tmp_path: Path) -> None:
    data = b"x" * 4096
    pin = _pin_url(tmp_path, "big", data)._replace(size=100)
    with pytest.raises(FetchError, match="pinned size"):
        Fetcher(tmp_path / "cache").fetch([pin])


def test_stage_links_files_by_name(tmp_path: Path) -> None:
    a = _pin_url(tmp_path, "a.tar", b"a")
    b = _pin_url(tmp_path, "b.tar", b"b")
    got = Fetcher(tmp_path / "cache").fetch([a, b])
    d = stage(got.values(), tmp_path / "sources")
    assert sorted(p.name for p in d.iterdir()) == ["a.tar", "b.tar"]
    assert (d / "b.tar").read_bytes() == b"b"


# ---------------------------------------------------------------- private apt

@pytest.fixture
def archive(tmp_path: Path) -> tuple[AptSources, Path, Path]:
    work = tmp_path / "debs"
    work.mkdir()
    old = build_deb(work, "tool", "1.0-1", {"usr/share/tool/v": "1.0\n"})
    new = build_deb(work, "tool", "1:2.0-1", {"usr/share/tool/v": "2.0\n"})
    uri = make_archive(tmp_path / "repo", "stable", [new],
                       sources={("tool", "1:2.0-1"): {"tool_2.0.orig.tar.gz": b"orig", "tool_2.0-1.dsc": b"dsc"}})
    return AptSources((uri,), ("stable",), trusted=True, signed_by=""), old, new


@pytest.mark.integration
def test_private_apt_downloads_binary_and_source(tmp_path: Path, archive: tuple[AptSources, Path, Path]) -> None:
    sources, _, new = archive
    apt = PrivateApt(sources, tmp_path / "apt", with_source=True)
    deb = Pinned("tool.deb", sha256(new), AptOrigin("tool", "1:2.0-1"))
    orig = Pinned("tool_2.0.orig.tar.gz", hashlib.sha256(b"orig").hexdigest(), AptOrigin("tool", "1:2.0-1", source=True))
    got = Fetcher(tmp_path / "cache", apt=apt).fetch([deb, orig])
    assert got[deb.sha256].came_from == "upstream" and got[deb.sha256].path.read_bytes() == new.read_bytes()
    assert got[orig.sha256].path.read_bytes() == b"orig"
    # Pinning reads the same private lists: the host's sources play no part.
    assert [s["Version"] for s in apt.versions("tool")["tool"]] == ["1:2.0-1"]
    assert apt.source_files("tool", "1:2.0-1")["tool_2.0.orig.tar.gz"] == hashlib.sha256(b"orig").hexdigest()


@pytest.mark.integration
def test_version_dropped_upstream_comes_from_a_store(tmp_path: Path,
                                                     archive: tuple[AptSources, Path, Path]) -> None:
    sources, old, _ = archive  # the archive lacks 1.0-1, as Debian drops superseded versions
    pin = Pinned("tool_1.0-1_amd64.deb", sha256(old), AptOrigin("tool", "1.0-1"))
    apt = PrivateApt(sources, tmp_path / "apt")
    with pytest.raises(NotInArchive) as exc:
        Fetcher(tmp_path / "cache", apt=apt).fetch([pin])
    assert "tool:amd64=1.0-1" in exc.value.message and "stable" in exc.value.message
    store = LocalStore(tmp_path / "store")
    store.put_blob(blob_path(pin.sha256), old)
    got = Fetcher(tmp_path / "cache", mirrors=[store], apt=apt).fetch([pin])[pin.sha256]
    assert got.came_from == "store local" and got.path.read_bytes() == old.read_bytes()


@pytest.mark.integration
def test_cbe_pin_rewrites_pins_from_the_locks_suite(tmp_path: Path) -> None:
    """`pib cbe pin`: versions and hashes from the lock's [apt] suite, comments kept, one parser."""
    from tests.gitutil import pib as run_pib

    work = tmp_path / "debs"
    work.mkdir()
    old = build_deb(work, "tool", "1.0-1", {"v": "1\n"})
    new = build_deb(work, "tool", "1.0-2", {"v": "2\n"})
    other = build_deb(work, "lib", "3.0-1", {"l": "3\n"})
    uri = make_archive(tmp_path / "repo", "stable", [new, other])
    lock = tmp_path / "t.lock.toml"
    text = (
        '# a test toolchain\nformat = 1\nname = "t"\nversion = "1"\nprovider = "debian"\n\n'
        f'[apt]\nuris = ["{uri}"]\nsuites = ["stable"]\ntrusted = true\n\n'
        f'[[packages]]\nname = "tool"  # the tool\nversion = "1.0-1"\narch = "amd64"\nsha256 = "{sha256(old)}"\n\n'
        f'[[packages]]\nname = "lib"\nversion = "3.0-1"\narch = "amd64"\nsha256 = "{sha256(other)}"\n'
    )
    lock.write_text(text)
    r = run_pib(tmp_path, "cbe", "pin", str(lock), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    assert out["changed"] == [{"package": "tool", "old": "1.0-1", "new": "1.0-2", "sha256": sha256(new)}]
    assert out["written"] is False and lock.read_text() == text
    r = run_pib(tmp_path, "cbe", "pin", str(lock))
    assert r.returncode == 0, r.stderr
    assert "tool: 1.0-1 -> 1.0-2" in r.stdout
    after = lock.read_text()
    assert after == text.replace('"1.0-1"', '"1.0-2"').replace(sha256(old), sha256(new))


def test_lock_apt_section_is_checked_and_left_out_of_the_digest(tmp_path: Path) -> None:
    from pib.cbe.pins import parse
    from pib.errors import CbeError

    base = ('format = 1\nname = "t"\nversion = "1"\nprovider = "debian"\n\n'
            f'[[packages]]\nname = "make"\nversion = "1"\narch = "amd64"\nsha256 = "{"a" * 64}"\n')
    plain = parse(base, tmp_path / "l.toml")
    with_apt = parse(base + '\n[apt]\nsuites = ["bookworm"]\n', tmp_path / "l.toml")
    assert plain.apt is None and with_apt.apt is not None
    assert with_apt.apt.suites == ("bookworm",) and with_apt.apt.uris == ("http://deb.debian.org/debian",)
    assert with_apt.digest == plain.digest  # where pins come from is not what they are
    with pytest.raises(CbeError) as exc:
        parse(base + '\n[apt]\nsuites = []\n', tmp_path / "l.toml")
    assert exc.value.where is not None and exc.value.where.line == 12  # the [apt] header
    with pytest.raises(CbeError, match="unknown key 'suite'"):
        parse(base + '\n[apt]\nsuite = ["bookworm"]\n', tmp_path / "l.toml")


@pytest.mark.parametrize("lower,higher", [
    ("1.0~rc1-1", "1.0-1"), ("2.0-1", "1:0.1-1"), ("2.40-1", "2.40-2"), ("6.1.176-1", "6.1.192-2"),
    ("12.2.0-14", "12.2.0-14+deb12u1"), ("1.2", "1.10"), ("1.0-1", "1.0a-1"),
])
def test_debian_version_order(lower: str, higher: str) -> None:
    from pib.cbe.providers.debian import _VersionKey

    assert _VersionKey(lower) < _VersionKey(higher) and not _VersionKey(higher) < _VersionKey(lower)
