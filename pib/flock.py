"""Inter-process locks (flock): one build per workspace, one install per CBE
version, readers and writers of the local artifact store.

The kernel drops a lock when its holder dies, so a killed pib never leaves
one behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from pib.errors import PibError, Reason, WorkspaceError, local_error


def take(fd: int, *, shared: bool = False, wait: float | None = None, poll: float = 0.05) -> bool:
    """Lock the open file `fd`: wait up to `wait` seconds (None: as long as it takes, 0: not at all).

    False when another process still holds it at the end.
    """
    op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    if wait is None:
        fcntl.flock(fd, op)
        return True
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)


def open_lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_NONBLOCK: a fifo put in its place must not hold the opener.
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)


@contextlib.contextmanager
def held(path: Path, *, shared: bool = False, wait: float | None = None,
         busy: Callable[[], Exception] | None = None) -> Iterator[None]:
    """Hold the lock on `path` for the block; raises busy() if it is not had within `wait` seconds."""
    fd = open_lock_file(path)
    try:
        if not take(fd, shared=shared, wait=wait):
            raise busy() if busy is not None else TimeoutError(f"{path} is locked")
        yield
    finally:
        os.close(fd)


class FileLock:
    """A lock that says who holds it (pid and since when), for "in use by" errors."""

    def __init__(self, path: Path, *, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self, *, wait: bool, timeout: float | None = None,
                on_wait: Callable[[str], None] | None = None) -> None:
        try:
            fd = open_lock_file(self.path)
        except OSError as exc:
            raise local_error(self.path, exc, f"use the lock of {self.what} at") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise WorkspaceError(f"{self.path} is not a regular file, so it cannot lock {self.what}",
                                 hint=f"remove {self.path} (pib makes it again), then run pib again")
        if not take(fd, wait=0):
            if wait and on_wait is not None:
                on_wait(self.holder())
            if not wait or not take(fd, wait=timeout, poll=0.1):
                holder = self.holder()
                os.close(fd)
                raise PibError(
                    f"{self.what} is in use by another pib ({holder})",
                    reason=Reason.LOCKED,
                    hint="wait for it to finish, or pass --wait to queue behind it",
                )
        self._fd = fd
        # Who holds it is for "in use by" messages only: a full disk must not stop the build here.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "since": time.time()}).encode())

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
            return f"pid {info.get('pid')}, since {time.strftime('%H:%M:%S', time.localtime(info.get('since', 0)))}"
        except (OSError, ValueError):
            return "unknown process"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
