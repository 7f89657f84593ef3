"""pib's one tar reader: it parses every header and writes the tree itself.

What is checked is exactly what is extracted, because nothing else reads the
stream: no second tar implementation gets to interpret a header differently.
Only the headers pib's packer writes (GNU tar, `--format=gnu`, numeric owner,
no extended attributes) are accepted, byte for byte:

- numeric fields in octal, zero-padded to their width and NUL-terminated
  (no leading NULs or spaces, no signs); base-256 only for a size too large
  for octal, as GNU tar writes it;
- the unsigned header checksum, as `%06o\\0 `;
- the GNU magic, with empty owner names, no device numbers and nothing in the
  GNU extension area (no sparse map, no multi-volume offsets, no prefix);
- type flags regular file (`0`), hard link, symlink, directory and the GNU
  long name/long link headers; a long name ends in its only NUL at the last
  byte of its declared size and the rest of its block is zeros. Everything
  else (pax, global pax, sparse, multi-volume, devices, fifos, `\\0` files) is
  refused.

Names are relative without `..`; every ancestor of a member is a directory
(made implicitly when the archive does not list it); no name twice; hard
links only to earlier regular files; no setuid/setgid/sticky bits unless the
limits allow them. Symlink targets are resolved against the member table at
the end; one that leaves the tree is refused.

The writer creates each member relative to a directory descriptor it opened
itself (`O_NOFOLLOW`, `O_EXCL`), so a symlink in the tree is never followed
while extracting. Directories are made 0700 and get their modes and mtimes
at the end, deepest first.
"""

from __future__ import annotations

import contextlib
import errno
import marshal
import mmap
import os
import posixpath
import queue
import re
import signal
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pib.errors import PibError, Reason, VerifyError

BLOCK = 512
MAX_LONGNAME = 4096 + 1  # PATH_MAX and its NUL
MAX_SYMLINK_HOPS = 40

_FILE = ord("0")
_HARDLINK = ord("1")
_SYMLINK = ord("2")
_DIR = ord("5")
_LONGNAME = ord("L")
_LONGLINK = ord("K")
_ZERO_BLOCK = bytes(BLOCK)
_TAIL = b"ustar  \0" + bytes(BLOCK - 265)  # GNU magic, no owner names, devices or extensions
_SPECIAL = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
# mode, uid, gid, size (octal or GNU base-256), mtime, checksum: exactly as GNU tar writes them
_NUMBERS = re.compile(rb"([0-7]{7})\0[0-7]{7}\0[0-7]{7}\0(?:([0-7]{11})\0|\x80\0\0\0([\0-\xff]{8}))"
                      rb"([0-7]{11})\0([0-7]{6})\0 ", re.DOTALL)
_KINDS = {ord("3"): "character device", ord("4"): "block device", ord("6"): "fifo", ord("7"): "contiguous file",
          0: "old-style file", ord("x"): "pax header", ord("g"): "pax global header", ord("S"): "sparse file",
          ord("M"): "multi-volume continuation", ord("V"): "volume label", ord("D"): "GNU dump directory"}

_OP_MKDIR, _OP_FILE, _OP_WRITE, _OP_CLOSE, _OP_SYMLINK, _OP_HARDLINK, _OP_SHARED = range(7)
_OPEN_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
Buffer = bytes | mmap.mmap  # what the reader parses: a decompressed piece (slices of either are bytes)
# errors that only a member clashing with another (or a path through a non-directory) can cause
_CLASH = {errno.EEXIST, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENOENT}


@dataclass(frozen=True)
class Limits:
    """Bounds for unpacking: decompressed bytes, members, special mode bits policy."""

    max_bytes: int = 64 * 1024**3
    max_members: int = 2_000_000
    allow_setid: bool = False  # setuid, setgid and sticky bits
    # Symlinks to absolute paths, kept as links (never followed while unpacking): a CBE prefix
    # unpacked from Debian packages has some (lib64/ld-linux-x86-64.so.2). Never for proto areas.
    allow_absolute_links: bool = False


@dataclass
class _Member:
    kind: str  # "file", "dir", "symlink", "hardlink"
    target: str = ""


class Writer:
    """Creates members below a directory descriptor; never follows a symlink.

    The reader hands it operations in archive order; one thread of its own
    carries them out in that order, in batches. The system calls (most of an
    unpack's time) then run beside the parsing instead of after it, much as
    tar and zstd run as two processes. The first failure stops the thread and
    is raised to the reader at its next hand-over, or by drain().
    """

    BATCH_OPS = 512
    BATCH_BYTES = 4 << 20
    QUEUED = 4  # batches in flight: bounds the memory held for writing

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, _OPEN_DIR)
        self._cur = ""
        self._cur_fd = self.root_fd
        self._fd = -1  # the regular file being written
        self._dirs: list[tuple[str, int, int]] = []  # (name, mode, mtime), parents first
        self._umask = _current_umask()
        self._ops: list[tuple[Any, ...]] = []
        self._bytes = 0
        self._error: BaseException | None = None
        self.cpu = 0.0  # CPU seconds of the writing thread (or process), once it has ended
        try:
            self._start()
        except BaseException:
            os.close(self.root_fd)
            raise

    def _start(self) -> None:
        self._queue: queue.Queue[list[tuple[Any, ...]] | None] = queue.Queue(self.QUEUED)
        self._thread = threading.Thread(target=self._work, name="unpack-write", daemon=True)
        self._thread.start()

    # ---- called by the reader, in archive order

    def mkdir(self, name: str, mode: int, mtime: int) -> None:
        if name:
            self._push((_OP_MKDIR, name))
        self._dirs.append((name, mode, mtime))

    def file(self, name: str, mode: int, mtime: int) -> None:
        self._push((_OP_FILE, name, mode))

    def write(self, buf: Buffer, start: int, stop: int) -> None:
        self._ops.append((_OP_WRITE, memoryview(buf)[start:stop]))
        self._bytes += stop - start
        if self._bytes >= self.BATCH_BYTES:
            self._flush()

    def close(self, mtime: int) -> None:
        self._push((_OP_CLOSE, mtime))

    def symlink(self, name: str, target: str, mtime: int) -> None:
        self._push((_OP_SYMLINK, name, target, mtime))

    def hardlink(self, name: str, target: str) -> None:
        self._push((_OP_HARDLINK, name, target))

    def drain(self) -> None:
        """Wait until every operation handed over is done; raise the first failure."""
        self._flush()
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Directory modes and mtimes, deepest first (so a read-only directory is filled before)."""
        self._parent("")
        for name, mode, mtime in reversed(self._dirs):
            fd = os.open(name, _OPEN_DIR, dir_fd=self.root_fd) if name else self.root_fd
            try:
                os.fchmod(fd, mode)
                ns = mtime * 1_000_000_000
                os.utime(fd, ns=(ns, ns))
            finally:
                if fd != self.root_fd:
                    os.close(fd)

    def close_all(self) -> None:
        """Stop the thread (dropping what it has not done) and close every descriptor."""
        if self._thread.is_alive():
            self._error = self._error or _Stopped()
            while self._thread.is_alive():
                try:
                    self._queue.put(None, timeout=0.1)
                except queue.Full:
                    continue
                self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._cur_fd != self.root_fd:
            os.close(self._cur_fd)
            self._cur_fd = self.root_fd
        os.close(self.root_fd)

    def _push(self, op: tuple[Any, ...]) -> None:
        self._ops.append(op)
        if len(self._ops) >= self.BATCH_OPS:
            self._flush()

    def _flush(self) -> None:
        if self._error is not None:
            raise self._error
        if self._ops:
            self._queue.put(self._ops)
            self._ops = []
            self._bytes = 0

    # ---- the writing thread

    def _work(self) -> None:
        start = time.thread_time()
        while True:
            batch = self._queue.get()
            if batch is None:
                self.cpu = time.thread_time() - start
                return
            if self._error is not None:
                continue  # failed or stopped: drop the rest until told to end
            try:
                self._apply(batch)
            except BaseException as exc:  # handed to the reader's thread, which raises it
                self._error = exc

    def _apply(self, batch: list[tuple[Any, ...]], shared: Sequence[mmap.mmap] = ()) -> None:
        """Carry out a batch. A write's data is a view or bytes, or (_OP_SHARED) a range of a shared buffer."""
        write, umask = os.write, self._umask
        for op in batch:
            kind = op[0]
            if kind in (_OP_WRITE, _OP_SHARED):
                data = memoryview(shared[op[1]])[op[2]:op[3]] if kind == _OP_SHARED else op[1]
                while data:
                    data = data[write(self._fd, data):]
            elif kind == _OP_FILE:
                parent, base = _split(op[1])
                mode = op[2]
                self._fd = os.open(base, _OPEN_FILE, mode & 0o777, dir_fd=self._parent(parent))
                if mode & umask or mode & _SPECIAL:
                    os.fchmod(self._fd, mode)
            elif kind == _OP_CLOSE:
                fd, self._fd = self._fd, -1
                try:
                    ns = op[1] * 1_000_000_000
                    os.utime(fd, ns=(ns, ns))
                finally:
                    os.close(fd)
            elif kind == _OP_MKDIR:
                parent, base = _split(op[1])
                os.mkdir(base, 0o700, dir_fd=self._parent(parent))
            elif kind == _OP_SYMLINK:
                parent, base = _split(op[1])
                fd = self._parent(parent)
                os.symlink(op[2], base, dir_fd=fd)
                ns = op[3] * 1_000_000_000
                os.utime(base, ns=(ns, ns), dir_fd=fd, follow_symlinks=False)
            else:  # _OP_HARDLINK
                parent, base = _split(op[1])
                os.link(op[2], base, src_dir_fd=self.root_fd, dst_dir_fd=self._parent(parent), follow_symlinks=False)

    def _parent(self, parent: str) -> int:
        if parent == self._cur:
            return self._cur_fd
        if self._cur_fd != self.root_fd:
            os.close(self._cur_fd)
            self._cur_fd = self.root_fd
        self._cur = ""
        if parent:
            self._cur_fd = os.open(parent, _OPEN_DIR, dir_fd=self.root_fd)
            self._cur = parent
        return self._cur_fd


class WriterProcess(Writer):
    """The same operations, carried out by a forked process instead of a thread.

    A thread shares the interpreter lock with the reader: after each of its
    system calls it waits for the reader's Python to let go, so the two
    overlap only in part. The forked process has a lock of its own. The
    reader decompresses into BUFFERS shared buffers (anonymous shared
    memory, so file data is never copied between the processes); the
    operations go down a pipe in batches, each acknowledged once done, and a
    buffer is decompressed into again only after every batch that refers to
    it is acknowledged. The process runs Writer._apply and nothing else: it
    decides nothing, and it ends when the pipe does (its parent gone, say).
    Its start costs a fork (a few milliseconds), so it writes large archives.
    """

    BUFFERS = 8
    BUFFER_SIZE = 1 << 20
    BATCH_BYTES = 2 << 20
    # Batch length down the pipe; acknowledged batch number (or -1 and the failure) back. Acknowledgements
    # are read when a buffer is needed again, so at most those of batches without data pile up in their
    # pipe: such a batch holds 512 operations, at most two per member, so the member bound (2 million)
    # keeps them under 32 KiB, within the pipe's 64 KiB; the process never blocks on them.
    _LEN = struct.Struct("<i")

    def _start(self) -> None:
        self.buffers = [mmap.mmap(-1, self.BUFFER_SIZE) for _ in range(self.BUFFERS)]
        self._index = {id(b): i for i, b in enumerate(self.buffers)}
        self._next = 0  # the buffer to decompress into next
        self._sent = 0  # batches sent
        self._acked = 0  # batches acknowledged
        self._needs = [0] * self.BUFFERS  # per buffer: batches that must be acknowledged before reuse
        self._pending: set[int] = set()  # buffers the unsent batch refers to
        ops_r, self._ops_w = os.pipe2(os.O_CLOEXEC)
        self._acks_r, acks_w = os.pipe2(os.O_CLOEXEC)
        try:
            self._pid = os.fork()
        except BaseException:
            for fd in (ops_r, self._ops_w, self._acks_r, acks_w):
                os.close(fd)
            raise
        if self._pid == 0:  # the child: never returns
            self._serve(ops_r, acks_w)
        os.close(ops_r)
        os.close(acks_w)

    # ---- called by the reader

    def buffer(self) -> mmap.mmap:
        """A shared buffer to decompress the next piece into, free of any pending write."""
        i = self._next
        self._next = (i + 1) % self.BUFFERS
        if i in self._pending:
            self._flush()
        while self._acked < self._needs[i]:
            self._wait()
        return self.buffers[i]

    def write(self, buf: Buffer, start: int, stop: int) -> None:
        i = self._index.get(id(buf))
        if i is None:  # not a shared buffer (a piece joined across two): the bytes themselves
            self._ops.append((_OP_WRITE, bytes(buf[start:stop])))
        else:
            self._ops.append((_OP_SHARED, i, start, stop))
            self._pending.add(i)
        self._bytes += stop - start
        if self._bytes >= self.BATCH_BYTES:
            self._flush()

    def drain(self) -> None:
        self._flush()
        while self._acked < self._sent:
            self._wait()

    def close_all(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._ops_w)  # the process ends at the end of the pipe
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)  # and at once if it is still writing
            with contextlib.suppress(ChildProcessError):
                usage = os.wait4(self._pid, 0)[2]
                self.cpu = usage.ru_utime + usage.ru_stime
            self._pid = 0
        os.close(self._acks_r)
        for b in self.buffers:
            with contextlib.suppress(BufferError):
                b.close()
        if self._cur_fd != self.root_fd:
            os.close(self._cur_fd)
            self._cur_fd = self.root_fd
        os.close(self.root_fd)

    # ---- the pipe

    def _flush(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._ops:
            return
        data = marshal.dumps(self._ops)
        self._sent += 1
        for i in self._pending:
            self._needs[i] = self._sent
        self._pending.clear()
        self._ops = []
        self._bytes = 0
        try:
            _write_all(self._ops_w, self._LEN.pack(len(data)) + data)
        except BrokenPipeError:
            while True:  # the process ended: its answer, after the acknowledgements before it, says why
                self._wait()

    def _wait(self) -> None:
        """Read the next acknowledgement; raise the process's failure."""
        raw = _read_exact(self._acks_r, self._LEN.size)
        n = self._LEN.unpack(raw)[0] if raw is not None else 0
        if n > 0:
            self._acked = n
            return
        answer = None
        if n < 0:  # a failure: its length, then (errno, strerror, filename)
            size = _read_exact(self._acks_r, self._LEN.size)
            answer = _read_exact(self._acks_r, self._LEN.unpack(size)[0]) if size is not None else None
        if answer is None:
            self._error = self._ended()
        else:
            err, strerror, filename = marshal.loads(answer)
            self._error = OSError(err, strerror, filename or None)
        raise self._error

    def _ended(self) -> PibError:
        """Why the process ended without an answer (it is gone: its end of the pipe is closed)."""
        status = 0
        if self._pid:
            with contextlib.suppress(ChildProcessError):
                _, status, usage = os.wait4(self._pid, 0)
                self.cpu = usage.ru_utime + usage.ru_stime
            self._pid = 0
        if os.WIFSIGNALED(status):
            return PibError(f"the process writing the unpacked tree was stopped by signal {os.WTERMSIG(status)}",
                            reason=Reason.INTERRUPTED)
        return PibError(f"the process writing the unpacked tree ended without an answer (status {status})",
                        reason=Reason.INTERNAL)

    def _serve(self, ops_r: int, acks_w: int) -> None:
        """The child's whole life: apply batches, acknowledge each, and exit."""
        code = 1
        try:
            # Only its own pipes and the tree: an inherited copy of another pipe's writing end (a
            # concurrent unpack's, say) would keep that one's process waiting after its parent is gone.
            low = 3
            for fd in sorted((ops_r, acks_w, self.root_fd)):
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, _MAX_FD)
            # Not the parent's handlers: the parent decides what ^C means; a stop signal sent to this
            # process ends it, and the parent reports the interruption.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            done = 0
            while (raw := _read_exact(ops_r, self._LEN.size)) is not None:
                batch = _read_exact(ops_r, self._LEN.unpack(raw)[0])
                if batch is None:
                    break
                try:
                    self._apply(marshal.loads(batch), self.buffers)
                except OSError as exc:
                    answer = marshal.dumps((exc.errno, exc.strerror or "", exc.filename or ""))
                    _write_all(acks_w, self._LEN.pack(-1) + self._LEN.pack(len(answer)) + answer)
                    break
                done += 1
                _write_all(acks_w, self._LEN.pack(done))
            code = 0
        except BaseException:  # never back into the parent's code; the parent reports a missing answer
            code = 1
        finally:
            os._exit(code)


_MAX_FD = os.sysconf("SC_OPEN_MAX") if "SC_OPEN_MAX" in os.sysconf_names else 1 << 20


def _read_exact(fd: int, n: int) -> bytes | None:
    """Exactly n bytes from fd, or None at its end."""
    parts = []
    while n:
        part = os.read(fd, n)
        if not part:
            return None
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Stopped(Exception):
    """The writer was stopped before it finished (the reader failed first)."""


class Reader:
    """Parses a tar stream (pib's subset of GNU tar) and, given a Writer, extracts it."""

    def __init__(self, path: Path, limits: Limits, writer: Writer | None = None) -> None:
        self.path = path
        self.limits = limits
        self.writer = writer
        self.members: dict[str, _Member] = {}
        self.total = 0
        self._last_parent = ""  # checked already: members come sorted, siblings together

    def refuse(self, why: str) -> VerifyError:
        return refuse(self.path, why)

    def run(self, read: Callable[[], Buffer]) -> None:
        """Parse (and extract) the whole stream that `read` returns piece by piece, then check links."""
        try:
            self._run(read)
            if self.writer is not None:
                self.writer.drain()
        except OSError as exc:
            if exc.errno in _CLASH:
                raise self.refuse(f"a member clashes with another ({exc.strerror}: {exc.filename})") from exc
            raise
        self._check_symlinks()

    def _run(self, read: Callable[[], Buffer]) -> None:
        writer = self.writer
        buf: Buffer = b""
        pos = end = 0
        longs: dict[int, bytes] = {}
        zeros = 0
        while True:
            if end - pos < BLOCK:
                chunk = read()
                if not chunk:
                    raise self.refuse("archive is truncated (no end-of-archive marker)")
                buf = buf[pos:end] + chunk if pos < end else chunk
                pos, end = 0, len(buf)
                continue
            header = buf[pos:pos + BLOCK]
            pos += BLOCK
            if header == _ZERO_BLOCK:
                if longs:
                    raise self.refuse("long-name header not followed by a member")
                zeros += 1
                if zeros == 2:
                    break
                continue
            if zeros:
                raise self.refuse("a lone zero block inside the archive")
            typeflag, size, mode, mtime = self._header(header)
            if typeflag in (_LONGNAME, _LONGLINK):
                if not 2 <= size <= MAX_LONGNAME:
                    raise self.refuse("long name of a bad length")
                padded = _padded(size)
                while end - pos < padded:
                    chunk = read()
                    if not chunk:
                        raise self.refuse("archive is truncated (in a long name)")
                    buf = buf[pos:end] + chunk
                    pos, end = 0, len(buf)
                value = buf[pos:pos + size - 1]
                if 0 in value or buf[pos + size - 1:pos + padded] != bytes(padded - size + 1):
                    raise self.refuse("long name with a NUL inside it or data after it")
                if typeflag in longs:
                    raise self.refuse("two long-name headers for one member")
                longs[typeflag] = value
                pos += padded
                continue
            name_raw = longs.pop(_LONGNAME, None)
            if name_raw is None:
                name_raw = self._field(header, 0, 100, "name")
            link_raw = longs.pop(_LONGLINK, None)
            if link_raw is None:
                link_raw = b"" if header.count(0, 157, 257) == 100 else self._field(header, 157, 257, "link target")
            elif typeflag != _SYMLINK and typeflag != _HARDLINK:
                raise self.refuse("long link target for a member that is no link")
            self._member(typeflag, name_raw, link_raw, mode, mtime, size)
            if typeflag != _FILE:
                continue
            # The member's data and its padding to the next block; the data handed on as views of the
            # decompressed buffers, never copied.
            done, whole = 0, _padded(size)
            while done < whole:
                if pos == end:
                    buf = read()
                    if not buf:
                        where = "data" if done < size else "padding"
                        raise self.refuse(f"archive is truncated (in a member's {where})")
                    pos, end = 0, len(buf)
                take = min(whole - done, end - pos)
                if writer is not None and done < size:
                    writer.write(buf, pos, pos + min(take, size - done))
                pos += take
                done += take
            if writer is not None:
                writer.close(mtime)
        # Only zeros may follow the end marker (the packer's record padding).
        rest = buf[pos:end]
        while True:
            if rest.count(0) != len(rest):
                raise self.refuse("data after the end-of-archive marker")
            rest = bytes(read())  # a shared buffer has no count()
            if not rest:
                return

    def _header(self, header: bytes) -> tuple[int, int, int, int]:
        m = _NUMBERS.fullmatch(header, 100, 156)
        if m is None or header[257:] != _TAIL:
            raise self.refuse("a tar header pib's packer does not write (format, numeric fields or extensions)")
        # The unsigned sum of the header's bytes, the checksum field counted as 8 spaces. Each half's sum
        # (at most 256 * 255) is below adler32's modulus, so adler32's low half is 1 + that sum, exactly,
        # in C rather than in a Python loop over 512 bytes.
        total = (zlib.adler32(header[:256]) & 0xFFFF) + (zlib.adler32(header[256:]) & 0xFFFF) - 2
        if total - sum(m[5]) + 7 * 32 != int(m[5], 8):
            raise self.refuse("header checksum mismatch (corrupt archive)")
        typeflag = header[156]
        if m[2] is not None:
            size = int(m[2], 8)
        else:
            size = int.from_bytes(m[3], "big")
            if size < 8**11:
                raise self.refuse("a base-256 size that fits in octal")
        if typeflag not in (_FILE, _HARDLINK, _SYMLINK, _DIR, _LONGNAME, _LONGLINK):
            raise self.refuse(f"member of refused type {_KINDS.get(typeflag, repr(chr(typeflag)))}")
        return typeflag, size, int(m[1], 8), int(m[4], 8)

    def _field(self, header: bytes, start: int, stop: int, what: str) -> bytes:
        nul = header.find(0, start, stop)
        if nul < 0:
            return header[start:stop]
        if header.count(0, nul, stop) != stop - nul:
            raise self.refuse(f"{what} field with bytes after its NUL")
        return header[start:nul]

    def _member(self, typeflag: int, name_raw: bytes, link_raw: bytes, mode: int, mtime: int, size: int) -> None:
        """Check one member against the policy and have it created (a file's data follows)."""
        if len(self.members) >= self.limits.max_members:
            raise self.refuse(f"more than {self.limits.max_members} members")
        raw = name_raw.decode("utf-8", "surrogateescape")
        name = self._normalize(raw, "member name")
        if raw.endswith("/") and typeflag != _DIR:
            raise self.refuse(f"{raw}: non-directory member with a trailing slash")
        if mode & _SPECIAL and not self.limits.allow_setid:
            raise self.refuse(f"{raw}: setuid, setgid or sticky bit set")
        if typeflag != _FILE and size:
            raise self.refuse(f"{raw}: non-file member with data")
        if typeflag != _SYMLINK and typeflag != _HARDLINK and link_raw:
            raise self.refuse(f"{raw}: link target on a member that is no link")
        members = self.members
        if name in members:
            raise self.refuse(f"{raw}: duplicate member")
        if name == "" and typeflag != _DIR:
            raise self.refuse("the archive root is not a directory")
        writer = self.writer
        if name:
            cut = name.rfind("/")
            if cut > 0 and name[:cut] != self._last_parent:
                self._parents(name, raw, mtime)
                self._last_parent = name[:cut]
        if typeflag == _DIR:
            members[name] = _Member("dir")
            if writer is not None:
                writer.mkdir(name, mode, mtime)
            return
        if typeflag == _SYMLINK:
            target = link_raw.decode("utf-8", "surrogateescape")
            if not target or (target.startswith("/") and not self.limits.allow_absolute_links):
                raise self.refuse(f"{raw}: symlink target {target!r} is absolute or empty")
            members[name] = _Member("symlink", target)
            if writer is not None:
                writer.symlink(name, target, mtime)
            return
        if typeflag == _HARDLINK:
            raw_target = link_raw.decode("utf-8", "surrogateescape")
            target = self._normalize(raw_target, "hard link target")
            seen = members.get(target)
            if seen is None or seen.kind != "file":
                raise self.refuse(f"{raw}: hard link to {raw_target!r}, not an earlier file in the archive")
            members[name] = _Member("hardlink", target)
            if writer is not None:
                writer.hardlink(name, target)
            return
        members[name] = _Member("file")
        self.total += size
        if self.total > self.limits.max_bytes:
            raise self.refuse(f"members exceed the size bound of {self.limits.max_bytes} bytes")
        if writer is not None:
            writer.file(name, mode, mtime)

    def _parents(self, name: str, raw: str, mtime: int) -> None:
        """Every ancestor is a directory: one the archive listed, or one made now."""
        parent = posixpath.dirname(name)
        missing: list[str] = []
        while parent:
            seen = self.members.get(parent)
            if seen is not None:
                if seen.kind != "dir":
                    raise self.refuse(f"{raw}: lies below a {seen.kind} member")
                break
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for d in reversed(missing):
            if len(self.members) >= self.limits.max_members:
                raise self.refuse(f"more than {self.limits.max_members} members")
            self.members[d] = _Member("dir")
            if self.writer is not None:
                self.writer.mkdir(d, 0o755, mtime)

    def _normalize(self, raw: str, what: str) -> str:
        if raw.startswith("./") and "//" not in raw and "/." not in raw:  # as GNU tar writes names
            return raw[2:-1] if raw.endswith("/") else raw[2:]
        if raw.startswith("/"):
            raise self.refuse(f"{what} {raw!r} is absolute")
        parts = [p for p in raw.split("/") if p and p != "."]
        if ".." in parts:
            raise self.refuse(f"{what} {raw!r} contains '..'")
        return "/".join(parts)

    def _check_symlinks(self) -> None:
        for name, member in self.members.items():
            if member.kind == "symlink" and not (self.limits.allow_absolute_links and member.target.startswith("/")):
                self._resolve(name, member.target)

    def _resolve(self, name: str, target: str) -> None:
        """Resolve a symlink against the member table; refuse if it leaves the tree."""
        why = link_escape(name, target, lambda n: m.target if (m := self.members.get(n)) is not None
                          and m.kind == "symlink" else None, allow_absolute=self.limits.allow_absolute_links)
        if why:
            raise self.refuse(why)


def link_escape(name: str, target: str, link_at: Callable[[str], str | None], *,
                allow_absolute: bool = False) -> str | None:
    """Why the symlink `name` -> `target` leaves its tree (None if it stays inside), resolved lexically:
    `link_at(path)` is the target of the symlink at that tree path, None if there is none.
    The one rule for archives and for trees a build leaves."""
    if not target or target.startswith("/"):
        return None if allow_absolute and target else f"{name}: symlink target {target!r} is absolute or empty"
    hops = 0
    stack: list[str] = [p for p in posixpath.dirname(name).split("/") if p]
    todo = [p for p in target.split("/") if p not in ("", ".")]
    todo.reverse()
    while todo:
        part = todo.pop()
        if part == "..":
            if not stack:
                return f"{name}: symlink to {target!r} points outside the tree"
            stack.pop()
            continue
        here = "/".join([*stack, part])
        link = link_at(here)
        if link is not None:
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return f"{name}: symlink loop"
            if link.startswith("/"):
                return None if allow_absolute else f"{name}: symlink chain reaches an absolute target"
            more = [p for p in link.split("/") if p not in ("", ".")]
            todo.extend(reversed(more))
            continue
        stack.append(part)
    return None


def audit(tree: Path, members: int, limits: Limits, archive: Path) -> None:
    """The final lstat walk: only directories, regular files and symlinks, no special mode bits
    (unless allowed), and exactly as many entries as the archive had members."""
    seen = 0
    todo = [str(tree)]
    special = 0 if limits.allow_setid else _SPECIAL
    while todo:
        with os.scandir(todo.pop()) as it:
            for entry in it:
                seen += 1
                st = entry.stat(follow_symlinks=False)
                kind = stat.S_IFMT(st.st_mode)
                if kind == stat.S_IFDIR:
                    todo.append(entry.path)
                elif kind != stat.S_IFREG and kind != stat.S_IFLNK:
                    raise refuse(archive, f"{entry.path}: extracted as a special file")
                if st.st_mode & special and kind != stat.S_IFLNK:
                    raise refuse(archive, f"{entry.path}: extracted with a setuid, setgid or sticky bit")
    if seen != members:  # the root is a member, not an entry below the tree
        raise refuse(archive, f"extracted {seen} entries for {members} members")


def refuse(path: Path, why: str) -> VerifyError:
    return VerifyError(
        f"refusing archive {path}: {why}",
        hint="the artifact is corrupt or hostile; delete it from the store and rebuild the component",
    )


def _split(name: str) -> tuple[str, str]:
    cut = name.rfind("/")
    return (name[:cut], name[cut + 1:]) if cut >= 0 else ("", name)


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _current_umask() -> int:
    """The process umask, read without changing it (os.umask is not thread-safe to probe)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777  # unknown: always set the mode explicitly
