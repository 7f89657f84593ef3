"""The live build view on real terminals of several sizes, read back through a terminal emulator."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import pytest

from tests.gitutil import make_repo

LONG = "a-component-whose-name-is-far-too-long-for-any-ordinary-terminal-line"
SYMBOLS = "·▶⇣⇡✓=✗■-"
STATES = ("waiting", "building", "restoring", "publishing", "up-to-date", "built", "restored", "failed",
          "stopped", "skipped")
VIEW_LINE = re.compile(rf"^ [{re.escape(SYMBOLS)}] (\S+) +({'|'.join(STATES)})\b")
SMALL = [f"c{i:02d}" for i in range(1, 10)]


def _workspace(tmp_path: Path) -> Path:
    repos = tmp_path / "repos"
    make_repo(repos / "long", {"build.sh": "#!/bin/sh\nsleep 1.5\nmkdir -p \"$DESTDIR/x\"\n"})
    # A failure whose message runs far past any terminal's width, with a tab and an escape in it.
    make_repo(repos / "fails", {"build.sh": "#!/bin/sh\nsleep 0.5\necho 'broken\t\033[31m' "
                                            + "very-long-diagnostic-" * 12 + " >&2\nexit 3\n"})
    make_repo(repos / "small", {"build.sh": "#!/bin/sh\nmkdir -p \"$DESTDIR/y\"\n"})
    ws = tmp_path / "ws"
    ws.mkdir()
    text = ('[platform]\nmin_version = "1"\n[workspace]\njobs = 2\n'
            f'[components.{LONG}]\nsource = "../repos/long"\nbuild = ["./build.sh"]\n'
            '[components.fails]\nsource = "../repos/fails"\nbuild = ["./build.sh"]\n'
            '[components.after-fails]\nsource = "../repos/small"\nbuild = ["./build.sh"]\ndepends = ["fails"]\n')
    for name in SMALL:
        text += f'[components.{name}]\nsource = "../repos/small"\nbuild = ["./build.sh"]\n'
    (ws / "pib.toml").write_text(text)
    r = subprocess.run([sys.executable, "-m", "pib", "-C", str(ws), "configure"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return ws


def _on_terminal(ws: Path, cols: int, rows: int, *args: str) -> tuple[int, bytes]:
    """Runs the real CLI on a pseudo-terminal of cols x rows; its exit code and every byte it wrote."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "pib", "-C", str(ws), *args], stdin=slave, stdout=slave,
                            stderr=slave, env={**env, "TERM": "xterm"}, start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=60), out


def _transcript(out: bytes, cols: int, rows: int) -> list[str]:
    """What the terminal shows, with what scrolled off its top before it, one string per row."""
    screen = pyte.HistoryScreen(cols, rows, history=10000)
    pyte.ByteStream(screen).feed(out)
    top = ["".join(line[x].data for x in range(cols)) for line in screen.history.top]
    return [r.rstrip() for r in top + list(screen.display)]


@pytest.mark.integration
@pytest.mark.parametrize(("cols", "rows"), [(80, 24), (40, 10)], ids=["80x24", "40x10"])
def test_live_view_fits_the_terminal(tmp_path: Path, cols: int, rows: int) -> None:
    ws = _workspace(tmp_path)
    code, out = _on_terminal(ws, cols, rows, "build", "--keep-going")
    assert code != 0  # `fails` failed
    shown = _transcript(out, cols, rows)
    summary = next(i for i, r in enumerate(shown) if r.startswith("component "))
    view = [r for r in shown[:summary] if r]
    # The view as last drawn: one well-formed line per component, or, when they do not all fit, as many
    # as the terminal has rows for and one line counting the rest. Nothing left over from earlier draws.
    names = [LONG, "fails", "after-fails", *SMALL]
    expect = len(names) if len(names) <= rows - 1 else rows - 1
    assert len(view) == expect, "\n".join(shown)
    lines = view if len(names) <= rows - 1 else view[:-1]
    parsed = [VIEW_LINE.match(r) for r in lines]
    assert all(parsed), "\n".join(view)
    states = {m.group(1): m.group(2) for m in parsed if m}
    assert len(states) == len(lines)
    if len(names) > rows - 1:
        assert view[-1].startswith(" … ") and "more" in view[-1]
    assert states["fails"] == "failed"
    long_shown = next(n for n in states if n.startswith(LONG[:5]))
    assert states[long_shown] == "built" and long_shown.endswith("…") and LONG.startswith(long_shown[:-1])
    if "after-fails" in states:
        assert states["after-fails"] == "skipped"
    # The summary table is whole too: a header, a rule, a row per component, the counts.
    table = shown[summary:summary + len(names) + 3]
    assert table[1].startswith("-") and re.match(r"^\d+ [a-z-]+(, \d+ [a-z-]+)* in ", table[-1]), "\n".join(table)
    cells = [r.split()[0] for r in table[2:-1]]
    assert len(cells) == len(names)
    assert all(c in names or (c.endswith("…") and any(n.startswith(c[:-1]) for n in names)) for c in cells)

    # On a screen much wider than the terminal nothing wraps: no line of the view or the table was wider.
    wide = _transcript(out, 300, rows)
    end = next(i for i, r in enumerate(wide) if r.startswith("error:"))
    assert all(len(r) <= cols - 1 for r in wide[:end]), "\n".join(r for r in wide[:end] if len(r) >= cols)


def test_fit_counts_terminal_cells() -> None:
    from pib.cli.ui import fit

    assert fit("abc", 3) == "abc"
    assert fit("abcdef", 4) == "abc…"
    assert fit("日本語の名前", 7) == "日本語…"  # two cells each
    assert fit("a\tb\x1b[31mc", 20) == "a b [31mc"  # control characters never reach the terminal
