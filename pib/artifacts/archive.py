"""Pack a proto area into tar+zstd and unpack one safely.

Packing drives GNU tar (through pib.run.run) with zstd as its compressor:
`--sort=name`, mtimes clamped to an epoch, uid/gid 0 and no user names, GNU
format. Equal trees therefore give equal archives, and the speed is exactly
that of `tar -I 'zstd -T0 -3'` (1.05x measured, SHA-256 included: it is
computed while zstd is still writing), which a pure-Python tarfile writer
cannot match on 20,000 small files.

Unpacking is where safety matters, so one parser decides and writes
(pib.artifacts.tarread): no GNU tar, no second reading of a header.

1. The zstd framing is walked first (block headers only, cheap): a
   truncated or malformed frame is refused before anything is extracted.
2. The archive is read once, in 1 MiB pieces, decompressed (python-zstandard
   releases the interpreter lock while it works) and, for a restore, hashed
   against the SHA-256 the signed metadata states, all on the parsing thread,
   in bounded pieces counted against the byte bound, so a bomb cannot
   exhaust memory or disk.
3. pib's tar reader parses every header (only what pib's packer writes) and
   checks it against the policy; a writer creates the members in archive
   order, relative to directory descriptors, with O_NOFOLLOW|O_EXCL, into a
   fresh directory inside a private 0700 temporary directory beside the
   destination. File data is written straight from the decompressed
   buffers. The writer runs beside the reader, as tar runs beside zstd: a
   thread for small archives; for large ones a forked process, which has an
   interpreter lock of its own and reads the data from shared memory
   (tarread.WriterProcess). It decides nothing: it carries out what the
   reader passed.
4. Every symlink is resolved against the complete member table; the hash
   must match; then an lstat walk of the extracted tree refuses anything
   outside the policy (special files, special mode bits, entries the archive
   did not list). Only then is the new tree put into place
   (pib.fsutil.replace_dir: an atomic exchange when the destination exists).

Any refusal raises VerifyError and removes the temporary directory.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from pib.artifacts.tarread import BLOCK, Limits, Reader, Writer, WriterProcess, audit, refuse
from pib.errors import PibError, Reason, VerifyError
from pib.fsutil import remove_tree, replace_dir, sha256_file
from pib.run import Log, minimal_env, run

__all__ = ["Limits", "PackResult", "UnpackResult", "check_zstd_frames", "pack", "unpack", "validate"]

READ_SIZE = 1 << 20  # decompressed bytes per read: bounds memory per step
# Compressed bytes per read of the archive. Each read takes the interpreter lock from the parsing thread;
# zstd's own 128 KiB made ten times as many hand-overs, each of which can wait for the lock.
COMPRESSED_READ = 1 << 20
# From this compressed size up, a forked process writes the tree (tarread.WriterProcess). Measured against
# the thread, interleaved at load 2.3: 12 MB of small files 1.27x against 1.37x of tar, 40 MB 1.03x against
# 1.32x, 151 MB 1.07x against 1.27x; at 1 to 4 MB the fork and the shared pages cost more than they save.
PROCESS_FROM = 8 << 20
NO_SPECIAL_BITS = Limits()  # the default policy


@dataclass(frozen=True)
class PackResult:
    path: Path
    sha256: str
    size: int
    seconds: float


@dataclass(frozen=True)
class UnpackResult:
    members: int
    bytes: int  # decompressed tar stream length
    seconds: float
    # Where the time went (unpack only): CPU seconds of the reading thread (decompress, parse, check)
    # and of the writing thread (system calls), wall seconds of the final lstat walk.
    read_cpu: float = 0.0
    write_cpu: float = 0.0
    audit_seconds: float = 0.0


# --------------------------------------------------------------------- pack


def pack(
    src: Path,
    archive: Path,
    *,
    epoch: int,
    level: int = 3,
    log: Log | None = None,
    timeout: float | None = None,
) -> PackResult:
    """Pack the tree `src` into `archive` (tar + zstd), deterministically.

    The archive is written beside its final name and renamed into place, so a
    failure leaves nothing behind.
    """
    if not src.is_dir():
        raise PibError(f"cannot pack {src}: not a directory", reason=Reason.BUILD,
                       hint="build the component first so its proto area exists")
    start = time.monotonic()
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".tmp", dir=archive.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    hasher = _TailHasher(tmp)
    try:
        try:
            run(
                [
                    "tar", "--create", "--file", tmp,
                    "--use-compress-program", f"zstd -T0 -{int(level)} -q",
                    "--format=gnu", "--sort=name",
                    f"--mtime=@{int(epoch)}", "--clamp-mtime",
                    "--owner=0", "--group=0", "--numeric-owner",
                    "--no-acls", "--no-xattrs", "--no-selinux",
                    "--directory", src, ".",
                ],
                env=minimal_env(),
                log=log,
                timeout=timeout,
                reason=Reason.BUILD,
                what=f"packing {src}",
            )
        finally:
            sha, size = hasher.finish()
        if size != tmp.stat().st_size:
            raise PibError(f"packing {src}: archive changed while it was hashed", reason=Reason.INTERNAL)
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return PackResult(archive, sha, size, time.monotonic() - start)


class _TailHasher:
    """Hash a file while another process is still appending to it.

    Overlapping the SHA-256 with compression hides most of its cost
    (measured: about 15% of a pack when done afterwards).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._done = threading.Event()
        self._hash = hashlib.sha256()
        self._size = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, name="pack-hash", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            with open(self._path, "rb", buffering=0) as fh:
                buf = bytearray(READ_SIZE)
                view = memoryview(buf)
                while True:
                    finished = self._done.is_set()  # read before the last pass, so nothing is missed
                    n = fh.readinto(buf)
                    if n:
                        self._hash.update(view[:n])
                        self._size += n
                    elif finished:
                        return
                    else:
                        time.sleep(0.005)
        except BaseException as exc:  # surfaced by finish()
            self._error = exc

    def finish(self) -> tuple[str, int]:
        self._done.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest(), self._size


# ------------------------------------------------------------- zstd framing


def check_zstd_frames(path: Path) -> None:
    """Walk the zstd frame and block headers; refuse truncated or malformed framing."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size == 0:
            raise _refuse(path, "empty archive")
        frames = 0
        while fh.tell() < size:
            magic = _read_exact(fh, 4, path)
            value = int.from_bytes(magic, "little")
            if 0x184D2A50 <= value <= 0x184D2A5F:  # skippable frame
                skip = int.from_bytes(_read_exact(fh, 4, path), "little")
                _seek_within(fh, skip, size, path)
                continue
            if value != 0xFD2FB528:
                raise _refuse(path, "not a zstd stream (bad frame magic)")
            fhd = _read_exact(fh, 1, path)[0]
            single_segment = (fhd >> 5) & 1
            has_checksum = (fhd >> 2) & 1
            if fhd & 0x08:
                raise _refuse(path, "zstd frame header uses a reserved bit")
            header_rest = (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3]
            header_rest += ((1 if single_segment else 0), 2, 4, 8)[fhd >> 6]
            _seek_within(fh, header_rest, size, path)
            while True:
                bh = int.from_bytes(_read_exact(fh, 3, path), "little")
                last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
                if btype == 3:
                    raise _refuse(path, "zstd block of reserved type")
                _seek_within(fh, 1 if btype == 1 else bsize, size, path)
                if last:
                    break
            if has_checksum:
                _seek_within(fh, 4, size, path)
            frames += 1
        if frames == 0:
            raise _refuse(path, "no zstd frame in archive")


def _read_exact(fh: BinaryIO, n: int, path: Path) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise _refuse(path, "archive is truncated (zstd framing ends early)")
    return data


def _seek_within(fh: BinaryIO, n: int, size: int, path: Path) -> None:
    target = fh.tell() + n
    if target > size:
        raise _refuse(path, "archive is truncated (zstd framing ends early)")
    fh.seek(target)


_refuse = refuse


class _Decompressed:
    """The archive's decompressed bytes in bounded reads, counted against the limit.

    Decompressed on the parsing thread itself. A thread of its own would have
    to take the interpreter lock back from the parser after every piece (each
    read, hash and decompression step releases it) and the writer's thread
    would wait behind both: measured, parsing beside such a thread took as
    long as the two one after the other, and unpacking as a whole 10% longer
    than with the decompression inline.
    """

    def __init__(self, path: Path, limits: Limits, *, hashed: bool = True,
                 into: Callable[[], mmap.mmap] | None = None) -> None:
        self.path = path
        # Headers and padding come on top of member data; allow for them.
        self.bound = limits.max_bytes + (limits.max_members + 64) * 3 * BLOCK
        self.count = 0
        self._raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        # the SHA-256 of the compressed file, taken in the same pass
        self._hashed = _Hashed(self._raw, hashlib.sha256()) if hashed else None
        self._fh: BinaryIO = cast(BinaryIO, self._hashed) if self._hashed is not None else self._raw
        self._reader = zstandard.ZstdDecompressor().stream_reader(self._fh, read_size=COMPRESSED_READ,
                                                                  read_across_frames=True)
        self._into = into  # where to decompress each piece: a new bytes object when None
        self._done = False

    def read(self) -> bytes | mmap.mmap:
        if self._done:
            return b""
        try:
            if self._into is None:
                chunk: bytes | mmap.mmap = self._reader.read(READ_SIZE)
            else:
                buf = self._into()
                n = self._reader.readinto(buf)
                chunk = buf if n == len(buf) else buf[:n]
        except zstandard.ZstdError as exc:
            self._done = True
            raise _refuse(self.path, f"corrupt zstd data ({exc})") from exc
        self.count += len(chunk)
        if self.count > self.bound:
            self._done = True
            raise _refuse(self.path, f"decompresses past the bound of {self.bound} bytes")
        if not chunk:
            self._done = True
            while self._fh.read(READ_SIZE):  # whatever zstd left unread still counts in the hash
                pass
        return chunk

    def hexdigest(self) -> str:
        """The SHA-256 of the whole archive file (read to its end)."""
        assert self._hashed is not None, "not hashed"
        return self._hashed.hexdigest()

    def close(self) -> None:
        if self._hashed is not None:
            self._hashed.close()
        self._raw.close()


class _Hashed:
    """A file whose bytes are hashed as they are read, on a thread of its own.

    The hash is needed only at the end, so it runs beside the parsing, not in
    its way (SHA-256 releases the interpreter lock while it works); the queue
    holds the very bytes zstd was given.
    """

    QUEUED = 32  # pieces waiting to be hashed (1 MiB each): bounds the memory

    def __init__(self, fh: BinaryIO, sha256: hashlib._Hash) -> None:
        self._fh = fh
        self._sha256 = sha256
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.QUEUED)
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="unpack-hash", daemon=True)
        self._thread.start()

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        if data:
            self._queue.put(data)
        return data

    def hexdigest(self) -> str:
        """The hash of everything read."""
        self.close()
        self._thread.join()
        return self._sha256.hexdigest()

    def close(self) -> None:
        """No more reads: the thread ends once it has hashed what is queued (hexdigest waits for that)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def _work(self) -> None:
        update = self._sha256.update
        while (data := self._queue.get()) is not None:
            update(data)


def validate(archive: Path, limits: Limits = NO_SPECIAL_BITS) -> UnpackResult:
    """Check an archive against the unpack policy without extracting it (the same reader, no writer)."""
    start = time.monotonic()
    check_zstd_frames(archive)
    reader = Reader(archive, limits)
    stream = _Decompressed(archive, limits, hashed=False)
    try:
        reader.run(stream.read)
    finally:
        stream.close()
    return UnpackResult(len(reader.members), stream.count, time.monotonic() - start)


# --------------------------------------------------------------- unpacking


def unpack(
    archive: Path,
    dest: Path,
    *,
    limits: Limits = NO_SPECIAL_BITS,
    log: Log | None = None,
    timeout: float | None = None,
    sha256: str | None = None,
) -> UnpackResult:
    """Unpack `archive` so that `dest` becomes exactly its tree, or refuse.

    On success `dest` is replaced atomically; on any failure `dest` is left
    as it was and the temporary directory beside it is removed. `log` and
    `timeout` are accepted for symmetry with pack; extraction runs in
    process and is bounded by the limits, not by a clock.

    With `sha256` (what signed metadata states), the archive is hashed in the
    pass that decompresses it and nothing is put into place unless it
    matches: one read of the file instead of two. The bytes parsed before the
    hash is known go only into the private directory, through the same
    policy-checked reader as any others; Nix restores substitutes the same
    way, checking the NAR hash before the path becomes valid.
    """
    start = time.monotonic()
    check_zstd_frames(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpack-", dir=dest.parent))  # mode 0700
    try:
        tree = private / "tree"
        tree.mkdir()
        writer, into = _writer(tree, archive.stat().st_size >= PROCESS_FROM)
        stream = _Decompressed(archive, limits, hashed=sha256 is not None, into=into)
        reader = Reader(archive, limits, writer)
        read_cpu = time.thread_time()
        try:
            try:
                reader.run(stream.read)
                read_cpu = time.thread_time() - read_cpu
            except VerifyError:
                if sha256 is not None and sha256_file(archive)[0] != sha256:
                    raise _mismatch(archive) from None  # the cause, rather than what it led to
                raise
            writer.finish()
        finally:
            stream.close()
            writer.close_all()
        # The lstat walk while the hash thread finishes what it has queued; a mismatch is the cause, so it
        # is what is reported when both fail.
        audit_start = time.monotonic()
        try:
            audit(tree, len(reader.members) - (1 if "" in reader.members else 0), limits, archive)
        except VerifyError:
            if sha256 is not None and stream.hexdigest() != sha256:
                raise _mismatch(archive) from None
            raise
        audit_seconds = time.monotonic() - audit_start
        if sha256 is not None and stream.hexdigest() != sha256:
            raise _mismatch(archive)
        replace_dir(tree, dest)
    finally:
        remove_tree(private)
    return UnpackResult(len(reader.members), stream.count, time.monotonic() - start, read_cpu, writer.cpu,
                        audit_seconds)


def _writer(tree: Path, large: bool) -> tuple[Writer, Callable[[], mmap.mmap] | None]:
    """The writer for an archive, and where to decompress into for it."""
    if large:
        try:
            forked = WriterProcess(tree)
            return forked, forked.buffer
        except OSError:  # no process to be had (a process limit, no memory): the thread does the same
            pass
    return Writer(tree), None


def _mismatch(archive: Path) -> VerifyError:
    return VerifyError(f"archive {archive.name} does not match the SHA-256 its signed metadata states",
                       hint="the store holds a damaged or altered artifact; delete it")
