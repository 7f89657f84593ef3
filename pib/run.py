"""The only place in pib that starts processes.

argv lists only (never a shell string), an explicit environment, the exact
command written to the log, and the log's tail attached to the error when a
command fails.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from pib.errors import PibError, Reason, local_error

# What a child gets when the caller does not say: enough for git and coreutils,
# nothing from the user's shell.
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def minimal_env(extra: Mapping[str, str] | None = None, *, path: str = BASE_PATH) -> dict[str, str]:
    env = {
        "PATH": path,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": os.environ.get("HOME", "/nonexistent"),
    }
    if extra:
        env.update(extra)
    return env


class Log:
    """An append-only log file; each command is written before it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[str] = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise local_error(path, exc, "write the log") from None

    def write(self, text: str) -> None:
        if self._failed:
            return  # said once (a full disk, say); the lines that follow cannot be kept either
        try:
            self._fh.write(text)
            self._fh.flush()
        except OSError as exc:
            self._failed = True
            raise local_error(self.path, exc, "write the log") from None

    def line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.write(f"[{stamp}] {text}\n")

    def command(self, argv: Sequence[str], cwd: Path | None, env: Mapping[str, str] | None) -> None:
        self.line(f"$ {_join(argv)}")
        if cwd is not None:
            self.write(f"  cwd: {cwd}\n")
        if env is not None:
            for k in sorted(env):
                self.write(f"  env: {k}={env[k]}\n")

    def fileno(self) -> int:
        return self._fh.fileno()

    def tail(self, lines: int = 20, since: int = 0) -> str:
        return tail_of(self.path, lines, since)

    def offset(self) -> int:
        self._fh.flush()
        return self._fh.tell()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a write that failed has said so already
            self._fh.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _join(argv: Sequence[str]) -> str:
    import shlex  # only when a command is logged or fails

    return shlex.join(argv)


def tail_of(path: Path, lines: int = 20, since: int = 0) -> str:
    """The last lines of a file, not looking before byte offset `since`."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(since, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class Result(NamedTuple):
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    seconds: float


class Cancelled(PibError):
    reason = Reason.INTERRUPTED


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log: Log | None = None,
    capture: bool = False,
    check: bool = True,
    timeout: float | None = None,
    input: bytes | None = None,
    cancel: threading.Event | None = None,
    reason: Reason = Reason.INTERNAL,
    what: str = "",
) -> Result:
    """Run argv and wait for it.

    - env: the complete environment of the child (None: minimal_env()).
    - log: output goes there (unless capture), after the command line itself.
    - capture: return stdout as text; stderr goes to the log or is captured too.
    - cancel: when set, the whole process group is killed and Cancelled raised.
    - check: a non-zero exit raises PibError(reason) with the log tail.
    """
    if capture:
        stdout: int = subprocess.PIPE
        stderr: int = subprocess.PIPE if log is None else log.fileno()
    elif log is not None:
        stdout = log.fileno()
        stderr = subprocess.STDOUT
    else:
        stdout = subprocess.DEVNULL
        stderr = subprocess.PIPE
    args, proc, start, output_from = _spawn(argv, cwd=cwd, env=env, log=log, reason=reason,
                                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                            stdout=stdout, stderr=stderr,
                                            hint="check that the program is installed and on the build PATH")
    out_b, err_b = b"", b""
    try:
        if cancel is None and input is None:
            out_b, err_b = _communicate(proc, timeout)
        elif input is not None:
            out_b, err_b = proc.communicate(input, timeout=timeout)
        else:
            deadline = None if timeout is None else start + timeout
            while True:
                try:
                    out_b, err_b = proc.communicate(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    if cancel is not None and cancel.is_set():
                        _kill_group(proc)
                        raise Cancelled(f"{what or args[0]}: stopped because another build failed or pib was interrupted") from None
                    if deadline is not None and time.monotonic() > deadline:
                        raise
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise PibError(f"{what or _join(args)} timed out after {timeout:.0f}s", reason=reason) from None
    except BaseException:
        _kill_group(proc)
        raise
    seconds = time.monotonic() - start
    out = out_b.decode("utf-8", "replace") if out_b else ""
    err = err_b.decode("utf-8", "replace") if err_b else ""
    if log is not None:
        log.line(f"exit {proc.returncode} after {seconds:.2f}s")
    if check and proc.returncode != 0:
        detail = log.tail(since=output_from) if log is not None else (err or out)[-4000:]
        where = f" (log: {log.path})" if log is not None else ""
        raise PibError(
            f"{what or _join(args)} failed with exit code {proc.returncode}{where}",
            reason=reason,
            detail=detail.strip(),
        )
    return Result(args, proc.returncode, out if capture else out + err, seconds)


def _spawn(
    argv: Sequence[str | os.PathLike[str]], *, cwd: Path | None, env: Mapping[str, str] | None, log: Log | None,
    reason: Reason, stdin: int, stdout: int, stderr: int, hint: str,
) -> tuple[tuple[str, ...], subprocess.Popen[bytes], float, int]:
    """Log the command and start it in a session of its own (so a cancel can kill the whole tree).

    Returns argv as strings, the process, its start time and the log offset its output starts at.
    """
    args = tuple(os.fspath(a) for a in argv)
    child_env = dict(env) if env is not None else minimal_env()
    output_from = 0
    if log is not None:
        log.command(args, cwd, child_env if env is not None else None)
        output_from = log.offset()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(args, cwd=cwd, env=child_env, stdin=stdin, stdout=stdout, stderr=stderr,
                                start_new_session=True)
    except OSError as exc:
        raise PibError(f"cannot run {args[0]}: {exc.strerror}", reason=reason, hint=hint) from exc
    return args, proc, start, output_from


def _communicate(proc: subprocess.Popen[bytes], timeout: float | None) -> tuple[bytes, bytes]:
    out, err = proc.communicate(timeout=timeout)
    return out or b"", err or b""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class Watched(NamedTuple):
    """How a watched process ended."""

    argv: tuple[str, ...]
    matched: str | None  # the output line that stopped it, if one did
    returncode: int | None  # None when pib stopped it (match or time-out)
    timed_out: bool
    seconds: float  # from start to the match, the exit or the time-out


def run_watch(
    argv: Sequence[str | os.PathLike[str]],
    *,
    until: Callable[[str], bool],
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log: Log | None = None,
    cancel: threading.Event | None = None,
    reason: Reason = Reason.INTERNAL,
) -> Watched:
    """Run argv, reading its output (stdout and stderr merged) line by line.

    Each line goes to the log as it arrives and to `until`; the process group
    is killed as soon as `until` returns True, when `timeout` seconds pass, or
    when `cancel` is set (Cancelled). A process that exits by itself is not an
    error here: the caller decides what its exit means.
    """
    args, proc, start, _ = _spawn(argv, cwd=cwd, env=env, log=log, reason=reason, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  hint="check that the program is installed and on the PATH")
    lines: queue.Queue[bytes | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            lines.put(raw)
        lines.put(None)

    thread = threading.Thread(target=reader, name=f"watch-{os.path.basename(args[0])}", daemon=True)
    thread.start()
    deadline = start + timeout
    matched: str | None = None
    timed_out = False
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"{args[0]}: stopped because pib was interrupted")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            try:
                raw = lines.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                continue
            if raw is None:
                break
            text = raw.decode("utf-8", "replace")
            if log is not None:
                log.write(text if text.endswith("\n") else text + "\n")
            if until(text.rstrip("\r\n")):
                matched = text.rstrip("\r\n")
                break
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        thread.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    returncode = None if (matched is not None or timed_out) else proc.wait()
    if log is not None:
        how = "matched" if matched is not None else "timed out" if timed_out else f"exit {returncode}"
        log.line(f"{how} after {seconds:.2f}s")
    return Watched(args, matched, returncode, timed_out, seconds)
