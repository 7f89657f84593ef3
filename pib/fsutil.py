"""File-system helpers, each written once: hashing a file, canonical JSON,
atomic writes, putting a directory in place, removing trees, and sizes.

Everything that replaces a file or a tree does it so that a reader (or a run
killed half-way) sees the old one or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

# shutil and ctypes are imported where they are used: shutil pulls in the
# compression modules, a noticeable share of a no-op build's start-up.

READ_SIZE = 1 << 20
RECORD_DEPTH = 64  # pib's own records nest a few levels


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file's content."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of a small regular file (a key, a record), refusing anything else.

    Opened without blocking (a fifo gives no writer's data, and would hold the reader forever),
    refused unless it is a regular file, and read to at most `limit` bytes: /dev/zero or a huge
    file is an error, not an endless read. Raises OSError (EINVAL, EFBIG) for what is refused.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            # Ask for what fstat said plus one byte, not for `limit`: os.read allocates what it is asked for.
            chunk = os.read(fd, min(limit + 1 - got, st.st_size + 1 if not chunks else 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > limit:  # it grew while read
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json_record(path: Path, limit: int) -> Any:
    """A JSON record pib wrote (state, image): FileNotFoundError when there is none, ValueError when
    it is not a JSON document of at most `limit` bytes (truncated, nested past the parser's stack, a
    directory or a fifo in its place). Its fields are the caller's to check."""
    return json_record(read_record(path, limit))


def read_record(path: Path, limit: int) -> bytes:
    """The bytes of a record (read_json_record's first half): OSError when there is none, ValueError when
    something that is not a small regular file stands in its place."""
    try:
        return read_small(path, limit)
    except (IsADirectoryError, OSError) as exc:
        if isinstance(exc, FileNotFoundError) or exc.errno not in (errno.EINVAL, errno.EFBIG, errno.EISDIR):
            raise
        raise ValueError(exc.strerror or str(exc)) from None


def json_record(raw: bytes) -> Any:
    """The JSON document of a record's bytes (read_json_record's second half), ValueError when it is none."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise ValueError(f"not JSON: {exc}") from None
    # What parsed may still nest deeper than the recursive code that reads it can follow.
    todo: list[tuple[int, Any]] = [(0, data)]
    while todo:
        depth, value = todo.pop()
        if depth > RECORD_DEPTH:
            raise ValueError("nested too deeply")
        if isinstance(value, dict | list):
            todo += [(depth + 1, v) for v in (value.values() if isinstance(value, dict) else value)]
    return data


def set_aside(path: Path) -> Path:
    """Move a corrupt record out of the way, kept for a post-mortem: NAME.corrupt-<UTC time>."""
    dest = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.rename(path, dest)
    return dest


def canonical_json(doc: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: equal documents give equal bytes (keys, digests, signatures)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------
# Atomic writes


def _tmp_beside(path: Path) -> Path:
    # pid and thread: concurrent writers of one path never share a temporary file.
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A file to write `path` through: a temporary file beside it, renamed over it on success."""
    tmp = _tmp_beside(path)
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # not the umask's choice: private keys stay 0600
        with open(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` (text is UTF-8)."""
    with atomic_writer(path, mode=mode) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def symlink_atomic(target: str, link: Path) -> None:
    """Point `link` at `target` (relative to the link's directory), replacing what was there."""
    tmp = _tmp_beside(link)
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(target)
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------
# Trees


def writable_dir(path: Path) -> None:
    """Make `path` (and its parents) a directory this process can write in, or raise OSError: a
    read-only mount too, which mkdir(exist_ok=True) does not notice."""
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


def remove_tree(path: Path) -> None:
    """Remove a file, a link or a whole tree, read-only directories included.

    An absent path is fine, and errors are ignored: what is left behind is
    swept by the next run.
    """
    import shutil

    def onerror(func: Callable[..., object], p: str, exc_info: Any) -> None:
        if isinstance(exc_info[1], FileNotFoundError):
            return
        # A read-only directory (Debian packages, manifest modes such as 0555): open it up, retry.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
        with contextlib.suppress(OSError):
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)

    if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
        with contextlib.suppress(OSError):
            path.unlink()
        return
    if path.exists():
        shutil.rmtree(path, onerror=onerror)


# Temporaries named RUN_TMP + "<pid>-..." belong to the process that made them; remove_stale removes
# them once that process is gone (killed).
RUN_TMP = ".pib-tmp-"


def remove_stale(directory: Path) -> None:
    """Remove the temporaries of killed runs from `directory`."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        pid = name[len(RUN_TMP):].split("-", 1)[0] if name.startswith(RUN_TMP) else ""
        if pid.isdigit() and not _pid_alive(int(pid)):
            remove_tree(directory / name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def aside(path: Path) -> Path:
    """Where a tree goes while it is replaced or removed; swept by the next run if one is killed."""
    return path.with_name(f".{path.name}.pib-old")


def discard_tree(path: Path) -> None:
    """Remove a tree by first renaming it aside, so no half-removed tree is ever seen at `path`."""
    old = aside(path)
    remove_tree(old)
    try:
        os.rename(path, old)
    except FileNotFoundError:
        return
    remove_tree(old)


def replace_dir(new: Path, dest: Path) -> None:
    """Put the tree `new` at `dest` and remove what was there; `dest` is never missing or half there.

    Where the kernel has it, the two are swapped in one atomic step
    (renameat2 RENAME_EXCHANGE); elsewhere the old tree is renamed aside
    first, so for a moment `dest` is absent, never partial.
    """
    try:
        os.rename(new, dest)
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise
    if _exchange(new, dest):
        remove_tree(new)  # now the old tree
        return
    old = aside(dest)
    remove_tree(old)
    os.rename(dest, old)
    os.rename(new, dest)
    remove_tree(old)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where renameat2 is missing or unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


def real_path(path: str, parents: dict[str, str]) -> str:
    """os.path.realpath(path), with the parent directory resolved once for every call sharing `parents`
    (siblings share it): one lstat per path instead of one per component of it."""
    parent, name = os.path.split(path)
    if not os.path.isabs(path) or name in ("", ".", ".."):
        return os.path.realpath(path)
    real_parent = parents.get(parent)
    if real_parent is None:
        real_parent = parents[parent] = os.path.realpath(parent)
    joined = os.path.join(real_parent, name)
    # The rest is what realpath does with the last component: follow it only when it is a link.
    return os.path.realpath(joined) if os.path.islink(joined) else joined


# --------------------------------------------------------------------------
# Sizes

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes of a size such as 1500, 64M, 1.5G, 20Gi or 20GiB (binary units); ValueError if it is none."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * _UNITS[unit])


def human_size(n: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def tree_entries(root: Path) -> dict[str, tuple[str, int, str]]:
    """A canonical walk of a tree: relative path -> (type, permission bits, link target or content SHA-256).

    Owners and times are left out: proto areas are compared by what a build decides.
    """
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", 0, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", perm, "")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", perm, sha256_file(Path(full))[0])
            else:
                out[rel] = ("special", perm, f"{st.st_mode:o}:{st.st_rdev}")
    return out


def tree_differences(old: Path, new: Path) -> list[tuple[str, str]]:
    """Paths where two trees differ, in path order, with what differs."""
    a, b = tree_entries(old), tree_entries(new)
    out: list[tuple[str, str]] = []
    for path in sorted(set(a) | set(b)):
        x, y = a.get(path), b.get(path)
        if x == y:
            continue
        if x is None:
            out.append((path, "only in the rebuild"))
        elif y is None:
            out.append((path, "missing from the rebuild"))
        elif x[0] != y[0]:
            out.append((path, f"was a {x[0]}, is a {y[0]}"))
        elif x[1] != y[1]:
            out.append((path, f"mode {x[1]:04o} -> {y[1]:04o}"))
        else:
            out.append((path, "link target differs" if x[0] == "symlink" else "content differs"))
    return out
