from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from pib.artifacts import archive
from pib.artifacts.archive import Limits
from pib.errors import Reason, VerifyError
from pib.fsutil import sha256_file
from tests.reliability import tally
from tests.tarcraft import END, Entry, block, header, tar_bytes, write_archive, write_raw


@pytest.fixture(autouse=True, params=["thread", "process"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every case with both writers: the thread (small archives) and the forked process (large ones)."""
    monkeypatch.setattr(archive, "PROCESS_FROM", 0 if request.param == "process" else 1 << 62)
    return str(request.param)


def make_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/lib").mkdir()
    (root / "usr/lib/libx.so.1").write_bytes(os.urandom(5000))
    (root / "usr/lib/libx.so").symlink_to("libx.so.1")
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    (root / "var/empty").mkdir(parents=True)
    (root / "var/empty").chmod(0o700)
    (root / "etc").mkdir()
    (root / "etc/ro").write_text("read only\n")
    (root / "etc/ro").chmod(0o444)
    long_dir = root / ("d" * 120) / ("e" * 120)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 110)).write_text("long name\n")


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), "")
            else:
                out[rel] = ("f", stat.S_IMODE(st.st_mode), p.read_bytes().hex())
    return out


def test_roundtrip_keeps_modes_links_and_empty_dirs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    packed = archive.pack(src, tmp_path / "a.tar.zst", epoch=1_000_000)
    assert packed.size == packed.path.stat().st_size
    assert packed.sha256 == sha256_file(packed.path)[0]
    dest = tmp_path / "proto"
    result = archive.unpack(packed.path, dest)
    assert result.members >= 10
    assert snapshot(dest) == snapshot(src)
    assert os.stat(dest / "usr/bin/tool").st_ino == os.stat(dest / "usr/bin/tool-alias").st_ino
    assert os.stat(dest / "usr/bin/tool").st_mtime == 1_000_000  # clamped
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_pack_is_deterministic_across_mtimes_and_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a)
    make_tree(b)
    for p in b.rglob("*"):
        os.utime(p, (2_000_000_000, 2_000_000_000), follow_symlinks=False)
    one = archive.pack(a, tmp_path / "1.tar.zst", epoch=1_000_000)
    two = archive.pack(b, tmp_path / "2.tar.zst", epoch=1_000_000)
    # the random library content differs between trees: compare with itself re-packed
    three = archive.pack(a, tmp_path / "3.tar.zst", epoch=1_000_000)
    assert one.sha256 == three.sha256
    assert one.sha256 != two.sha256
    (b / "usr/lib/libx.so.1").write_bytes((a / "usr/lib/libx.so.1").read_bytes())
    four = archive.pack(b, tmp_path / "4.tar.zst", epoch=1_000_000)
    assert four.sha256 == one.sha256


def test_member_headers_are_anonymous(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    packed = archive.pack(src, tmp_path / "a.tar.zst", epoch=5)
    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(packed.path.open("rb")).read()
    import io

    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    assert members[0].name == "."
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    assert max(m.mtime for m in members) == 5


def test_unpack_replaces_existing_destination(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    packed = archive.pack(src, tmp_path / "a.tar.zst", epoch=1)
    dest = tmp_path / "proto"
    (dest / "stale/sub").mkdir(parents=True)
    (dest / "stale/sub").chmod(0o555)
    archive.unpack(packed.path, dest)
    assert not (dest / "stale").exists()
    assert snapshot(dest) == snapshot(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.zst", "proto", "src"]


def test_setuid_needs_flag(tmp_path: Path) -> None:
    arc = write_archive(tmp_path / "s.tar.zst", [Entry("bin/su", data=b"x", mode=0o4755)])
    with pytest.raises(VerifyError) as exc:
        archive.unpack(arc, tmp_path / "out")
    assert exc.value.reason is Reason.VERIFY
    archive.unpack(arc, tmp_path / "out", limits=Limits(allow_setid=True))
    assert (tmp_path / "out/bin/su").stat().st_mode & 0o7777 == 0o4755


HOSTILE: dict[str, list[Entry]] = {
    "dotdot": [Entry("../outside/evil", data=b"x")],
    "dotdot-inner": [Entry("a/../../outside/evil", data=b"x")],
    "absolute": [Entry("/OUTSIDE/evil", data=b"x")],
    "symlink-absolute-then-write": [Entry("link", "symlink", target="/OUTSIDE"), Entry("link/evil", data=b"x")],
    "symlink-relative-escape-then-write": [Entry("a", "dir", mode=0o755),
                                           Entry("a/link", "symlink", target="../../outside"),
                                           Entry("a/link/evil", data=b"x")],
    "symlink-escape-only": [Entry("link", "symlink", target="../outside")],
    "symlink-chain-escape": [Entry("d", "dir", mode=0o755), Entry("d/e", "symlink", target=".."),
                             Entry("x", "symlink", target="d/e/../outside")],
    "symlink-loop": [Entry("a", "symlink", target="b"), Entry("b", "symlink", target="a/..")],
    "hardlink-outside": [Entry("h", "hardlink", target="../outside/victim")],
    "hardlink-absolute": [Entry("h", "hardlink", target="/etc/passwd")],
    "hardlink-non-member": [Entry("h", "hardlink", target="etc/passwd")],
    "hardlink-to-symlink": [Entry("s", "symlink", target="x"), Entry("h", "hardlink", target="s")],
    "chardev": [Entry("dev/null", "chr")],
    "blockdev": [Entry("dev/sda", "blk")],
    "fifo": [Entry("p", "fifo")],
    "setgid": [Entry("bin/x", data=b"x", mode=0o2755)],
    "duplicate": [Entry("a", data=b"1"), Entry("a", data=b"2")],
    "file-then-below": [Entry("a", data=b"1"), Entry("a/b", data=b"2")],
    "file-with-trailing-slash": [Entry("a/", data=b"1"), Entry("a/b", data=b"2")],
    "symlink-over-populated-dir": [Entry("a/b/c", data=b"1"), Entry("a/b", "symlink", target="..")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_leave_nothing(tmp_path: Path, case: str) -> None:
    entries = HOSTILE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("v")
    entries = [Entry(e.name.replace("/OUTSIDE", str(outside)), e.kind, e.data,
                     e.target.replace("/OUTSIDE", str(outside)), e.mode) for e in entries]
    arc = write_archive(tmp_path / "h.tar.zst", entries)
    stage = tmp_path / "stage"
    stage.mkdir()
    with pytest.raises(VerifyError) as exc:
        archive.unpack(arc, stage / "proto")
    assert exc.value.reason is Reason.VERIFY
    assert list(stage.iterdir()) == []
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    with pytest.raises(VerifyError):
        archive.validate(arc)


def test_bomb_is_refused_by_bound(tmp_path: Path) -> None:
    arc = write_archive(tmp_path / "b.tar.zst", [Entry(f"f{i}", data=bytes(4 << 20)) for i in range(8)])
    assert arc.stat().st_size < 100_000
    stage = tmp_path / "stage"
    stage.mkdir()
    with pytest.raises(VerifyError) as exc:
        archive.unpack(arc, stage / "proto", limits=Limits(max_bytes=10 << 20))
    assert exc.value.reason is Reason.VERIFY
    assert list(stage.iterdir()) == []


def test_member_count_bound(tmp_path: Path) -> None:
    arc = write_archive(tmp_path / "m.tar.zst", [Entry(f"f{i}") for i in range(50)])
    with pytest.raises(VerifyError):
        archive.unpack(arc, tmp_path / "out", limits=Limits(max_members=10))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cut", [1, 7, 100, 600])
def test_truncated_archive_is_refused(tmp_path: Path, cut: int) -> None:
    src = tmp_path / "src"
    make_tree(src)
    packed = archive.pack(src, tmp_path / "a.tar.zst", epoch=1)
    data = packed.path.read_bytes()
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(data[:-cut])
    stage = tmp_path / "stage"
    stage.mkdir()
    with pytest.raises(VerifyError) as exc:
        archive.unpack(bad, stage / "proto")
    assert exc.value.reason is Reason.VERIFY
    assert list(stage.iterdir()) == []


def test_tar_without_end_marker_is_refused(tmp_path: Path) -> None:
    arc = write_raw(tmp_path / "t.tar.zst", tar_bytes([Entry("a", data=b"hello")], end=False))
    with pytest.raises(VerifyError):
        archive.unpack(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_flipped_bit_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    packed = archive.pack(src, tmp_path / "a.tar.zst", epoch=1)
    data = bytearray(packed.path.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(bytes(data))
    with pytest.raises(VerifyError):
        archive.unpack(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pax_and_garbage_are_refused(tmp_path: Path) -> None:
    pax = write_raw(tmp_path / "p.tar.zst", tar_bytes([Entry("a" * 200, data=b"x")], fmt=tarfile.PAX_FORMAT))
    with pytest.raises(VerifyError):
        archive.validate(pax)
    junk = tmp_path / "j.tar.zst"
    junk.write_bytes(b"this is not zstd at all")
    with pytest.raises(VerifyError):
        archive.unpack(junk, tmp_path / "out")
    trailing = write_raw(tmp_path / "t.tar.zst", tar_bytes([Entry("a", data=b"x")]) + b"\1" * 512)
    with pytest.raises(VerifyError):
        archive.validate(trailing)


def test_benign_symlinks_inside_tree_are_fine(tmp_path: Path) -> None:
    arc = write_archive(tmp_path / "ok.tar.zst", [
        Entry("d", "dir", mode=0o755), Entry("d/e", "symlink", target=".."),
        Entry("up", "symlink", target="d/../d/e"), Entry("dangling", "symlink", target="nowhere/x"),
        Entry("d/f", data=b"x"), Entry("hl", "hardlink", target="d/f"),
    ])
    archive.unpack(arc, tmp_path / "out")
    assert os.readlink(tmp_path / "out/d/e") == ".."
    assert (tmp_path / "out/hl").read_bytes() == b"x"


def test_pack_of_missing_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(Exception) as exc:
        archive.pack(tmp_path / "nope", tmp_path / "a.tar.zst", epoch=1)
    assert getattr(exc.value, "reason", None) is Reason.BUILD
    assert not (tmp_path / "a.tar.zst").exists()


def test_long_zero_padding_after_end_marker_is_fine(tmp_path: Path) -> None:
    # tar may stop reading at the end marker; the padding must not break the pipe
    arc = write_raw(tmp_path / "z.tar.zst", tar_bytes([Entry("a", data=b"x" * 700)]) + bytes(3 << 20))
    archive.unpack(arc, tmp_path / "out")
    assert (tmp_path / "out/a").read_bytes() == b"x" * 700


def test_long_names_split_across_reads(tmp_path: Path) -> None:
    # many long-name members and sizes that make headers straddle the 1 MiB read boundaries
    entries = [Entry(f"{'d' * 150}/{i:04d}-{'n' * 120}", data=os.urandom(4093 + i)) for i in range(400)]
    arc = write_archive(tmp_path / "l.tar.zst", entries)
    archive.unpack(arc, tmp_path / "out")
    got = sorted(p.name for p in (tmp_path / "out" / ("d" * 150)).iterdir())
    assert got == sorted(e.name.split("/")[1] for e in entries)
    assert (tmp_path / "out" / entries[7].name).read_bytes() == entries[7].data


# Headers that GNU tar reads differently from a checker that stops at the first NUL: each put a
# setuid file, a device node, a fifo or a symlink out of the tree into a proto area when GNU tar
# extracted what pib's checker had passed. pib's own reader refuses every one of them.
def _smuggled(typeflag: bytes) -> bytes:
    # "a": size with a leading NUL (0 to a NUL-stopping reader, 512 to GNU tar), so the next block is
    # a header to one reader and data to the other; the member after it is the one GNU tar would see.
    return (header(b"./", b"5", mode=0o755) + header(b"./a", fields={124: b"\x000000001000\0"})
            + header(b"./b", size=512) + header(b"./node", typeflag) + END)


DISAGREEING: dict[str, bytes] = {
    "size with a leading NUL hides a fifo": _smuggled(b"6"),
    "size with a leading NUL hides a block device": _smuggled(b"4"),
    "size with a leading NUL hides a character device": _smuggled(b"3"),
    "mode with a leading NUL hides setuid": header(b"./", b"5", mode=0o755)
    + header(b"./su", size=3, fields={100: b"\x00004755\0"}) + block(b"hi\n") + END,
    "mode with leading spaces": header(b"./", b"5", mode=0o755)
    + header(b"./su", size=3, fields={100: b"  04755\0"}) + block(b"hi\n") + END,
    "mode in base-256": header(b"./", b"5", mode=0o755)
    + header(b"./su", size=3, fields={100: b"\x80\0\0\0\0\0\x09\xed"}) + block(b"hi\n") + END,
    "size in base-256 that fits in octal": header(b"./", b"5", mode=0o755)
    + header(b"./f", fields={124: b"\x80\0\0\0" + (3).to_bytes(8, "big")}) + block(b"hi\n") + END,
    "long link with the real target hidden in its padding": header(b"./", b"5", mode=0o755)
    + header(b"././@LongLink", b"K", size=4)
    + block(b"abcd/../../../../../../../../../../root/.config/pib/machine.key\0")
    + header(b"./key", b"2", link=b"abcd") + END,
    "long name with an embedded NUL": header(b"./", b"5", mode=0o755)
    + header(b"././@LongLink", b"L", size=24) + block(b"./ok\0/../../../../pwned\0")
    + header(b"./ok", size=0) + END,
    "name with bytes after its NUL": header(b"./", b"5", mode=0o755)
    + header(b"./ok", fields={4: b"\0/../../pwned"}) + END,
    "pax global header": header(b"./", b"5", mode=0o755) + header(b"pax_global_header", b"g", size=20)
    + block(b"20 path=../../pwned\n") + END,
    "sparse file": header(b"./", b"5", mode=0o755) + header(b"./s", b"S") + END,
    "multi-volume continuation": header(b"./", b"5", mode=0o755) + header(b"./m", b"M") + END,
    "old-style NUL type flag": header(b"./", b"5", mode=0o755) + header(b"./f", b"\0") + END,
    "sticky directory": header(b"./", b"5", mode=0o755) + header(b"./tmp/", b"5", mode=0o1777) + END,
    "signed checksum only": b"",  # filled in below
    "hard link to a path not yet extracted": header(b"./", b"5", mode=0o755)
    + header(b"./h", b"1", link=b"./later") + header(b"./later") + END,
}


def _signed_checksum_only() -> bytes:
    h = bytearray(header(b"./\xe9", b"5", mode=0o755))
    h[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in h)
    h[148:156] = b"%06o\0 " % signed
    return bytes(h) + END


DISAGREEING["signed checksum only"] = _signed_checksum_only()


@pytest.mark.parametrize("case", sorted(DISAGREEING))
def test_headers_gnu_tar_reads_differently_are_refused(tmp_path: Path, case: str, writer: str) -> None:
    with tally("tar parser", f"{case} ({writer} writer)"):
        arc = write_raw(tmp_path / "d.tar.zst", DISAGREEING[case])
        stage = tmp_path / "stage"
        stage.mkdir()
        with pytest.raises(VerifyError) as exc:
            archive.unpack(arc, stage / "proto")
        assert exc.value.reason is Reason.VERIFY
        assert list(stage.iterdir()) == []
        with pytest.raises(VerifyError):
            archive.validate(arc)


def test_the_headers_pib_writes_are_accepted_exactly(tmp_path: Path) -> None:
    # The same shapes as above, written the way pib's packer writes them, extract fine.
    raw = (header(b"./", b"5", mode=0o755) + header(b"./a", size=3) + block(b"abc")
           + header(b"././@LongLink", b"L", size=5) + block(b"./bb\0") + header(b"./bb", size=0)
           + header(b"./c", b"1", link=b"./a") + header(b"./d", b"2", link=b"a") + END)
    arc = write_raw(tmp_path / "ok.tar.zst", raw)
    archive.unpack(arc, tmp_path / "out")
    assert (tmp_path / "out/a").read_bytes() == b"abc" and (tmp_path / "out/bb").exists()
    assert os.readlink(tmp_path / "out/d") == "a"
    assert os.stat(tmp_path / "out/c").st_ino == os.stat(tmp_path / "out/a").st_ino


def test_extraction_never_follows_a_symlink_planted_in_the_tree(tmp_path: Path) -> None:
    # A symlink member, then a file member below it: refused by the member table before any write;
    # the final lstat walk is the fence behind that (special files and special bits).
    arc = write_archive(tmp_path / "s.tar.zst", [Entry("d", "symlink", target="."), Entry("d/x", data=b"1")])
    with pytest.raises(VerifyError):
        archive.unpack(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_absolute_symlinks_only_for_cbe_prefixes_and_never_followed(tmp_path: Path) -> None:
    """A CBE prefix from Debian packages holds lib64/ld-linux-x86-64.so.2 -> /lib/...: kept as a link."""
    from pib.cbe.providers.tarball import CBE_LIMITS

    outside = tmp_path / "outside"
    outside.mkdir()
    arc = write_archive(tmp_path / "a.tar.zst", [
        Entry("./", "dir", mode=0o755), Entry("./lib64/", "dir", mode=0o755),
        Entry("./lib64/ld.so", "symlink", target="/lib/x86_64-linux-gnu/ld.so"),
        Entry("./escape", "symlink", target=str(outside)),
        Entry("./bin/", "dir", mode=0o755), Entry("./bin/cc", data=b"cc", mode=0o755),
    ])
    with pytest.raises(VerifyError):
        archive.unpack(arc, tmp_path / "proto")  # a proto area: refused
    assert not (tmp_path / "proto").exists()
    archive.unpack(arc, tmp_path / "prefix", limits=CBE_LIMITS)
    assert os.readlink(tmp_path / "prefix" / "lib64" / "ld.so") == "/lib/x86_64-linux-gnu/ld.so"
    # Writing through such a link is still impossible: a member below it is refused.
    bad = write_archive(tmp_path / "b.tar.zst", [
        Entry("./", "dir", mode=0o755), Entry("./escape", "symlink", target=str(outside)),
        Entry("./escape/owned", data=b"x"),
    ])
    with pytest.raises(VerifyError):
        archive.unpack(bad, tmp_path / "prefix2", limits=CBE_LIMITS)
    assert list(outside.iterdir()) == []
