"""The forked writer of large archives (pib.artifacts.tarread.WriterProcess), beside the thread.

A failure while writing, a kill of the unpacking process, a signal to the writer and concurrent
unpacks: each with the writer it concerns; nothing half in place, no process left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pib.artifacts import archive
from tests.reliability import tally
from tests.tarcraft import Entry, write_archive
from tests.test_archive import make_tree, snapshot

WRITERS = {"thread": 1 << 62, "process": 0}  # archive.PROCESS_FROM for each


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failure_while_writing_reaches_the_caller_and_leaves_nothing(tmp_path: Path, writer: str) -> None:
    """A write the file system refuses (here a file size limit, EFBIG) in the writing thread or the
    forked process: raised to the caller as the OSError it is, nothing in place, no process left."""
    with tally("forked writer", f"a write refused with EFBIG ({writer})"):
        _failure_while_writing(tmp_path, writer)


def _failure_while_writing(tmp_path: Path, writer: str) -> None:
    arc = write_archive(tmp_path / "big.tar.zst", [Entry("small", data=b"x"), Entry("big", data=os.urandom(3 << 20))])
    script = f"""
import errno, os, resource, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from pathlib import Path
from pib.artifacts import archive
archive.PROCESS_FROM = {WRITERS[writer]}
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
try:
    archive.unpack(Path({str(arc)!r}), Path({str(tmp_path / "out")!r}))
except OSError as exc:
    print("errno", errno.errorcode[exc.errno])
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "errno EFBIG", r.stdout + r.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _slow_forked_unpack(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    """A Python process unpacking 3,000 files with the forked writer, slowed to 0.2 s a batch; returns it
    and its writer's pid. It prints the PibError's reason and message if the unpack fails with one."""
    entries = [Entry(f"d/{i:05d}", data=os.urandom(2048)) for i in range(3000)]
    arc = write_archive(tmp_path / "many.tar.zst", entries)
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from pathlib import Path
from pib.artifacts import archive, tarread
from pib.errors import PibError
archive.PROCESS_FROM = 0
apply = tarread.Writer._apply
def slow(self, batch, shared=()):
    time.sleep(0.2)  # in the forked writer: the unpack is still going when the test acts
    apply(self, batch, shared)
tarread.Writer._apply = slow
init = tarread.WriterProcess.__init__
def announce(self, root):
    init(self, root)
    print(self._pid, flush=True)
tarread.WriterProcess.__init__ = announce
try:
    archive.unpack(Path({str(arc)!r}), Path({str(tmp_path / "out")!r}))
except PibError as exc:
    print(exc.reason.value, exc)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def test_the_writing_process_ends_when_the_unpacking_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL to pib in the middle of a large unpack: the forked writer sees its pipe end and exits
    (it holds no other process's pipe), instead of waiting forever."""
    with tally("forked writer", "SIGKILL to the unpacking process: the writer ends"):
        _kill_the_unpacking_process(tmp_path)


def _kill_the_unpacking_process(tmp_path: Path) -> None:
    proc, child = _slow_forked_unpack(tmp_path)
    try:
        time.sleep(0.5)
        assert _alive(child)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
        assert not (tmp_path / "out").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_writing_process_stopped_by_a_signal_is_an_interruption_and_leaves_nothing(tmp_path: Path, sig: int) -> None:
    """`kill` or a process group's SIGTERM or SIGHUP reaching the forked writer: the unpack stops with
    reason interrupted (not an internal error), and nothing is in place."""
    with tally("forked writer", f"{signal.Signals(sig).name} to the writer: an interruption"):
        proc, child = _slow_forked_unpack(tmp_path)
        time.sleep(0.5)
        os.kill(child, sig)
        out, _ = proc.communicate(timeout=30)
        assert out.startswith(f"interrupted the process writing the unpacked tree was stopped by signal {sig}"), out
        assert not (tmp_path / "out").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_concurrent_unpacks_in_threads(tmp_path: Path, writer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """pib restores several components at once, on threads: each unpack forks its own writer."""
    src = tmp_path / "src"
    make_tree(src)
    for i in range(40):
        (src / f"f{i:02d}").write_bytes(os.urandom(30_000))
    packed = archive.pack(src, tmp_path / "a.tar.zst", epoch=1_000_000)
    monkeypatch.setattr(archive, "PROCESS_FROM", WRITERS[writer])
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda n: archive.unpack(packed.path, tmp_path / f"out{n}"), range(8)))
    assert all(r.members == done[0].members for r in done)
    want = snapshot(src)
    for n in range(8):
        assert snapshot(tmp_path / f"out{n}") == want
