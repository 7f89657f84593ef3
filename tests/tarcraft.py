"""Build hand-made (often hostile) tar+zstd archives for tests."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard


@dataclass
class Entry:
    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, chr, blk, fifo
    data: bytes = b""
    target: str = ""
    mode: int = 0o644


def tar_bytes(entries: list[Entry], fmt: int = tarfile.GNU_FORMAT, end: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            info.mtime = 1000
            types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                     "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
                     "fifo": tarfile.FIFOTYPE}
            info.type = types[e.kind]
            info.linkname = e.target
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    raw = buf.getvalue()
    if not end:
        raw = raw.rstrip(b"\0")
        raw += b"\0" * (-len(raw) % 512)
    return raw


def write_archive(path: Path, entries: list[Entry], **kw: object) -> Path:
    raw = tar_bytes(entries, **kw)  # type: ignore[arg-type]
    path.write_bytes(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw))
    return path


def write_raw(path: Path, raw_tar: bytes) -> Path:
    path.write_bytes(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw_tar))
    return path


def header(name: bytes, typeflag: bytes = b"0", *, size: int = 0, mode: int = 0o644, link: bytes = b"",
           fields: dict[int, bytes] | None = None) -> bytes:
    """One GNU tar header block as pib's packer writes it; `fields` overwrites bytes at offsets
    (e.g. {124: b"\\0" + ...} for a size with a leading NUL) before the checksum is computed."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"%07o\0" % mode
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % 1000
    h[156:157] = typeflag
    h[157:157 + len(link)] = link
    h[257:265] = b"ustar  \0"
    for offset, value in (fields or {}).items():
        h[offset:offset + len(value)] = value
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def block(data: bytes) -> bytes:
    """Data padded to whole 512-byte blocks."""
    return data + bytes(-len(data) % 512)


END = bytes(1024)
