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
