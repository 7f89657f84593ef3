"""Terminal output: the live build view, plain timestamped lines, tables."""

from __future__ import annotations

import os
import sys
import threading
import time
import unicodedata
from collections.abc import Sequence
from typing import TextIO

from pib.build.runner import NOT_DONE, BuildReport, Event, State

_SYMBOL = {
    State.WAITING: "·", State.BUILDING: "▶", State.RESTORING: "⇣", State.PUBLISHING: "⇡",
    State.BUILT: "✓", State.RESTORED: "✓", State.UP_TO_DATE: "=", State.FAILED: "✗", State.STOPPED: "■",
    State.SKIPPED: "-",
}
_ACTIVE = {State.BUILDING, State.RESTORING, State.PUBLISHING}
_ATTENTION = _ACTIVE | {State.FAILED, State.STOPPED}  # shown first when not every line fits


def _cells(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def fit(text: str, width: int) -> str:
    """`text` in at most `width` terminal cells: control characters become spaces, a cut ends in '…'.

    A line wider than the terminal wraps, and the live view's cursor movements then miss.
    """
    clean = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    if sum(_cells(ch) for ch in clean) <= width:
        return clean
    out, used = [], 0
    for ch in clean:
        n = _cells(ch)
        if used + n > width - 1:
            break
        out.append(ch)
        used += n
    return "".join(out) + "…" if width > 0 else ""


def terminal_size(stream: TextIO) -> tuple[int, int]:
    """Columns and rows of the terminal `stream` writes to (80x24 when it cannot tell)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 80, 24
    return size.columns or 80, size.lines or 24


def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    all_rows = [list(header)] if header else []
    all_rows += [list(r) for r in rows]
    if not all_rows:
        return ""
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in all_rows]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


class Progress:
    """Shows each component's state as events arrive.

    On a terminal: one line per component, redrawn in place with elapsed time.
    Elsewhere: one timestamped line per change, good for CI logs.
    """

    def __init__(self, names: Sequence[str], stream: TextIO | None = None, live: bool | None = None) -> None:
        # sys.stderr as it is now, not as it was at import (pib.cli.main may run in-process, redirected).
        stream = sys.stderr if stream is None else stream
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.names = list(names)
        self.state: dict[str, State] = dict.fromkeys(names, State.WAITING)
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.detail: dict[str, str] = {}
        self._lock = threading.Lock()
        self._drawn = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.live:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.live:
            with self._lock:
                self._draw()

    def event(self, e: Event) -> None:
        with self._lock:
            if e.component not in self.state:
                self.names.append(e.component)
            prev = self.state.get(e.component)
            self.state[e.component] = e.state
            if e.state in _ACTIVE and e.component not in self.started:
                self.started[e.component] = time.monotonic() - e.elapsed
            if e.state not in _ACTIVE and e.state is not State.WAITING:
                self.finished[e.component] = e.elapsed
            if e.detail:
                self.detail[e.component] = e.detail
            if self.live:
                self._draw()
            elif e.state is not State.WAITING and e.state != prev:
                stamp = time.strftime("%H:%M:%S")
                extra = f" ({seconds(e.elapsed)})" if e.state not in _ACTIVE and e.elapsed else ""
                detail = f": {e.detail.splitlines()[0]}" if e.detail else ""
                self.stream.write(f"[{stamp}] {e.component}: {e.state}{extra}{detail}\n")
                self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        cols, rows = terminal_size(self.stream)
        # The last column stays empty: writing there leaves some terminals waiting to wrap.
        avail = max(cols - 1, 10)
        names = self.names
        more = ""
        if len(names) > max(rows - 1, 2):
            # Lines that scrolled off the top cannot be redrawn: show what needs attention, then a count.
            room = max(rows - 2, 1)
            first = [n for n in names if self.state[n] in _ATTENTION][:room]
            rest = [n for n in names if n not in first]
            shown = set(first + rest[: room - len(first)])
            hidden = [n for n in names if n not in shown]
            names = [n for n in names if n in shown]
            counts: dict[str, int] = {}
            for n in hidden:
                counts[self.state[n]] = counts.get(self.state[n], 0) + 1
            more = f" … {len(hidden)} more: " + ", ".join(f"{c} {st}" for st, c in counts.items())
        # Names get what the fixed columns leave, keeping room for some detail on a wide terminal.
        longest = max((len(n) for n in self.names), default=8)
        width = min(longest, max(8, avail - 26 - 20))
        lines = []
        for n in names:
            st = self.state[n]
            if st in _ACTIVE:
                t = seconds(now - self.started.get(n, now))
            elif n in self.finished and st not in (State.UP_TO_DATE, State.SKIPPED):
                t = seconds(self.finished[n])
            else:
                t = ""
            detail = self.detail.get(n, "").strip().split("\n", 1)[0]
            line = f" {_SYMBOL.get(st, '?')} {fit(n, width).ljust(width)}  {st:<11} {t:>7}  {detail}"
            lines.append(fit(line.rstrip(), avail))
        if more:
            lines.append(fit(more, avail))
        out = f"\x1b[{self._drawn}F" if self._drawn else ""
        # Erase below: the view may have fewer lines than last time.
        out += "\x1b[J" + "".join(f"{line}\n" for line in lines)
        # The view's own cursor movements; its lines are fitted, control characters gone.
        getattr(self.stream, "unescaped", self.stream).write(out)
        self.stream.flush()
        self._drawn = len(lines)


def summary(report: BuildReport, width: int | None = None) -> str:
    """The table of outcomes; with `width` (a terminal's columns) no line is wider than the terminal."""
    rows = []
    for o in report.outcomes:
        extra = (o.store and f"from {o.store}") or (", ".join(f"published to {s}" for s in o.published))
        if o.action in NOT_DONE and o.detail:
            extra = o.detail.strip().split("\n", 1)[0]
        name = o.component if width is None else fit(o.component, max(12, width // 3))
        rows.append([name, o.action, seconds(o.seconds) if o.seconds else "-", o.key[:12] + ("+dirty" if o.dirty else ""), extra])
    header = ["component", "action", "time", "key", "note"]
    if width is not None:
        # The note takes what the other columns leave; a terminal too narrow even for those cuts lines.
        fixed = sum(max(len(r[i]) for r in [header, *rows]) + 2 for i in range(4))
        for r in rows:
            r[4] = fit(r[4], max(width - 1 - fixed, 4))
    text = table(rows, header)
    if width is not None:
        text = "\n".join(fit(line, max(width - 1, 10)) for line in text.split("\n"))
    counts: dict[str, int] = {}
    for o in report.outcomes:
        counts[o.action] = counts.get(o.action, 0) + 1
    text += "\n" + ", ".join(f"{n} {a}" for a, n in counts.items()) + f" in {seconds(report.seconds)}"
    actions = {o.component: o.action for o in report.outcomes}
    for name, kept in report.cutoff.items():
        verb = "restored" if actions.get(name) == "restored" else "rebuilt"
        text += (f"\n{name} {verb}, output unchanged: {len(kept)} dependent{'s' if len(kept) != 1 else ''} kept "
                 f"({', '.join(kept)})")
    return text
