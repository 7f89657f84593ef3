"""Inter-process locks (fcntl): one build per workspace, one install per CBE version."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType

from pib.errors import PibError, Reason


class FileLock:
    def __init__(self, path: Path, *, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self, *, wait: bool, timeout: float | None = None, on_wait: object = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (deadline is not None and time.monotonic() > deadline):
                    holder = self.holder()
                    os.close(fd)
                    raise PibError(
                        f"{self.what} is in use by another pib ({holder})",
                        reason=Reason.LOCKED,
                        hint="wait for it to finish, or pass --wait to queue behind it",
                    ) from None
                if callable(on_wait):
                    on_wait(self.holder())
                    on_wait = None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": time.time()}).encode())
        self._fd = fd

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
