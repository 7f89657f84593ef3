"""The newc writer, checked against the real cpio and zstd programs."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
import zstandard

from pib.image import cpio
from pib.run import run

MTIME = 1_700_000_000


def _sample(buf: io.BytesIO) -> int:
    w = cpio.Writer(buf, buffer_size=64)  # tiny buffer: exercise flushing
    w.directory("etc", ino=1, perm=0o755, uid=0, gid=3, mtime=MTIME)
    w.directory("srv", ino=2, perm=0o1777, uid=0, gid=0, mtime=MTIME)
    w.file("etc/motd", b"hello\n", ino=3, perm=0o644, uid=0, gid=3, mtime=MTIME)
    w.file("etc/shadow", b"root:x\n", ino=4, perm=0o400, uid=0, gid=0, mtime=MTIME)
    w.file("srv/suid", b"#!/bin/sh\n", ino=5, perm=0o4755, uid=1234, gid=5678, mtime=MTIME)
    w.symlink("etc/issue", "motd", ino=6, uid=0, gid=0, mtime=MTIME)
    w.symlink("srv/abs", "/etc/motd", ino=7, uid=0, gid=0, mtime=MTIME)
    # A hard-link group in the newc way: shared inode, nlink 3, data on the last name only.
    w.file_header("srv/a", ino=8, perm=0o755, uid=7, gid=8, mtime=MTIME, size=0, nlink=3)
    w.file_header("srv/b", ino=8, perm=0o755, uid=7, gid=8, mtime=MTIME, size=0, nlink=3)
    big = bytes(range(256)) * 4097 + b"xyz"  # not a multiple of 4
    w.file("srv/c", big, ino=8, perm=0o755, uid=7, gid=8, mtime=MTIME, nlink=3)
    w.file("empty", b"", ino=9, perm=0o600, uid=0, gid=0, mtime=MTIME)
    w.finish()
    return w.size


def _parse(data: bytes) -> list[tuple[str, dict[str, int], bytes]]:
    """A strict newc reader: magic, alignment, trailer."""
    out = []
    pos = 0
    names = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
             "rdevmajor", "rdevminor", "namesize", "check")
    while True:
        assert pos % 4 == 0
        assert data[pos:pos + 6] == b"070701"
        fields = {n: int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i, n in enumerate(names)}
        name_end = pos + 110 + fields["namesize"]
        name = data[pos + 110: name_end - 1].decode()
        assert data[name_end - 1] == 0
        pos = (name_end + 3) & ~3
        body = data[pos: pos + fields["filesize"]]
        pos = (pos + fields["filesize"] + 3) & ~3
        if name == cpio.TRAILER:
            assert pos == len(data)
            return out
        out.append((name, fields, body))


def test_stream_structure() -> None:
    buf = io.BytesIO()
    size = _sample(buf)
    data = buf.getvalue()
    assert size == len(data)
    assert len(data) % 4 == 0
    entries = {name: (f, body) for name, f, body in _parse(data)}
    assert stat.S_ISDIR(entries["etc"][0]["mode"])
    assert stat.S_IMODE(entries["srv"][0]["mode"]) == 0o1777
    assert entries["etc/issue"][1] == b"motd"
    assert stat.S_ISLNK(entries["etc/issue"][0]["mode"])
    assert [entries[n][0]["filesize"] for n in ("srv/a", "srv/b")] == [0, 0]
    assert {entries[n][0]["ino"] for n in ("srv/a", "srv/b", "srv/c")} == {8}
    assert entries["srv/c"][0]["nlink"] == 3


def _extract(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    """Compress with the library, decompress with the real zstd, list and unpack with the real cpio."""
    comp = tmp_path / "a.cpio.zst"
    comp.write_bytes(zstandard.ZstdCompressor(level=3, threads=-1).compress(data))
    raw = tmp_path / "a.cpio"
    run(["zstd", "-q", "-d", "-f", "-o", raw, comp])
    assert raw.read_bytes() == data
    listing = run(["cpio", "-t", "-v", "--numeric-uid-gid", "-F", raw], capture=True).stdout
    dest = tmp_path / "root"
    dest.mkdir()
    run(["cpio", "-i", "-d", "--no-absolute-filenames", "--preserve-modification-time", "-F", raw], cwd=dest)
    return dest, listing


@pytest.mark.integration
def test_real_cpio_lists_modes_owners_and_links(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _sample(buf)
    _, listing = _extract(tmp_path, buf.getvalue())
    rows = {line.split()[-1] if "->" not in line else line.split()[-3]: line.split() for line in listing.splitlines()}
    assert rows["etc"][0] == "drwxr-xr-x" and rows["etc"][2:4] == ["0", "3"]
    assert rows["srv"][0] == "drwxrwxrwt"
    assert rows["srv/suid"][0] == "-rwsr-xr-x" and rows["srv/suid"][2:4] == ["1234", "5678"]
    assert rows["etc/shadow"][0] == "-r--------"
    assert rows["etc/issue"][0].startswith("l") and rows["etc/issue"][-1] == "motd"
    assert rows["srv/c"][1] == "3"  # link count


@pytest.mark.integration
def test_real_cpio_extracts_content_and_hard_links(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _sample(buf)
    root, _ = _extract(tmp_path, buf.getvalue())
    assert (root / "etc/motd").read_bytes() == b"hello\n"
    assert os.readlink(root / "etc/issue") == "motd"
    assert os.readlink(root / "srv/abs") == "/etc/motd"
    a, b, c = (os.lstat(root / f"srv/{n}") for n in "abc")
    assert a.st_ino == b.st_ino == c.st_ino
    assert a.st_nlink == 3
    assert (root / "srv/a").read_bytes() == bytes(range(256)) * 4097 + b"xyz"
    assert (root / "empty").read_bytes() == b""
    st = os.lstat(root / "srv/suid")
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert int(os.lstat(root / "etc/motd").st_mtime) == MTIME
    if os.geteuid() == 0:  # only root can restore owners when unpacking
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert os.lstat(root / "etc").st_gid == 3


def test_header_padding_for_every_name_length() -> None:
    for n in range(1, 12):
        h = cpio.header(b"x" * n, ino=1, mode=0o100644, uid=0, gid=0, nlink=1, mtime=0, size=0)
        assert len(h) % 4 == 0
        assert h[110:110 + n] == b"x" * n and h[110 + n] == 0


def test_finish_is_idempotent_and_ends_with_trailer() -> None:
    buf = io.BytesIO()
    w = cpio.Writer(buf)
    w.finish()
    w.finish()
    data = buf.getvalue()
    assert _parse(data) == []
    assert b"TRAILER!!!" in data
