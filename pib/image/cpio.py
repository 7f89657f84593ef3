"""A writer (and a reader, for `pib verify`) of cpio "newc" archives, the format the Linux kernel unpacks as initramfs.

Headers carry whatever mode, uid, gid and mtime the caller gives, so an
ordinary user can write root-owned, setuid or device-free trees. Inode
numbers are assigned by the caller (sequentially, for reproducibility).

Hard links follow the newc convention: every name of the file shares one
inode number and nlink; only the last one written carries the data.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import NamedTuple, Protocol

TRAILER = "TRAILER!!!"
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...


def header(name: bytes, *, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, size: int) -> bytes:
    """Header + NUL-terminated name + padding to a 4-byte boundary."""
    namesize = len(name) + 1
    head = b"070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X" % (
        ino, mode, uid, gid, nlink, mtime, size, 0, 0, 0, 0, namesize, 0,
    )
    # 110-byte header plus the name must end on a multiple of 4.
    return head + name + b"\0" + _PAD[(110 + namesize) % 4]


class Writer:
    """Streams a newc archive into `sink` through a large buffer.

    Every write method takes image-relative names (no leading '/').
    """

    def __init__(self, sink: Sink, buffer_size: int = 4 << 20) -> None:
        self._sink = sink
        self._buf = bytearray()
        self._limit = buffer_size
        self.size = 0  # uncompressed bytes written so far
        self._finished = False

    def _put(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        if len(self._buf) >= self._limit:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            # Hand the buffer itself over and start a new one: no copy.
            buf, self._buf = self._buf, bytearray()
            self.size += len(buf)
            self._sink.write(buf)

    def directory(self, name: str, *, ino: int, perm: int, uid: int, gid: int, mtime: int) -> None:
        self._put(header(name.encode(), ino=ino, mode=stat.S_IFDIR | perm, uid=uid, gid=gid, nlink=2,
                         mtime=mtime, size=0))

    def symlink(self, name: str, target: str, *, ino: int, uid: int, gid: int, mtime: int) -> None:
        data = target.encode()
        self._put(header(name.encode(), ino=ino, mode=stat.S_IFLNK | 0o777, uid=uid, gid=gid, nlink=1,
                         mtime=mtime, size=len(data)))
        self._put(data + _PAD[len(data) % 4])

    def file_header(self, name: str, *, ino: int, perm: int, uid: int, gid: int, mtime: int, size: int,
                    nlink: int = 1) -> None:
        """Start a regular file; the caller then writes exactly `size` bytes with data() and calls end_data()."""
        self._put(header(name.encode(), ino=ino, mode=stat.S_IFREG | perm, uid=uid, gid=gid, nlink=nlink,
                         mtime=mtime, size=size))

    def data(self, chunk: bytes | bytearray | memoryview) -> None:
        if len(chunk) >= self._limit:
            # Large chunks skip the copy into the buffer.
            self.flush()
            self.size += len(chunk)
            self._sink.write(chunk)
        else:
            self._put(chunk)

    def end_data(self, size: int) -> None:
        self._put(_PAD[size % 4])

    def file(self, name: str, content: bytes, *, ino: int, perm: int, uid: int, gid: int, mtime: int,
             nlink: int = 1) -> None:
        # The common case (a small file read whole) in one go: this runs once per file.
        size = len(content)
        buf = self._buf
        buf += header(name.encode(), ino=ino, mode=stat.S_IFREG | perm, uid=uid, gid=gid, nlink=nlink,
                      mtime=mtime, size=size)
        buf += content
        buf += _PAD[size % 4]
        if len(buf) >= self._limit:
            self.flush()

    def finish(self) -> None:
        """Write the trailer and flush; the kernel stops at TRAILER!!!."""
        if not self._finished:
            self._put(header(TRAILER.encode(), ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, size=0))
            self.flush()
            self._finished = True


class Member(NamedTuple):
    name: str
    mode: int
    ino: int
    nlink: int
    data: bytes  # file contents or a symlink's target (a hard link's other names: b"")


class FormatError(ValueError):
    pass


def members(buf: bytes) -> Iterator[Member]:
    """The entries of a newc archive held in memory, up to its trailer."""
    pos = 0
    while True:
        head = buf[pos:pos + 110]
        if len(head) < 110 or head[:6] != b"070701":
            raise FormatError(f"no newc header at offset {pos}")
        try:
            f = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise FormatError(f"bad newc header at offset {pos}") from None
        ino, mode, nlink, size, namesize = f[0], f[1], f[4], f[6], f[11]
        name_end = pos + 110 + namesize
        name = buf[pos + 110:name_end - 1].decode("utf-8", "surrogateescape")
        data_start = name_end + len(_PAD[(110 + namesize) % 4])
        data = buf[data_start:data_start + size]
        if len(data) != size:
            raise FormatError(f"{name}: archive ends inside its data")
        pos = data_start + size + len(_PAD[size % 4])
        if name == TRAILER:
            return
        yield Member(name, mode, ino, nlink, data)
