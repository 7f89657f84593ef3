"""Terminal output: the live build view, plain timestamped lines, tables."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from pib.build.runner import NOT_DONE, BuildReport, Event, State

_SYMBOL = {
    State.WAITING: "·", State.BUILDING: "▶", State.RESTORING: "⇣", State.PUBLISHING: "⇡",
    State.BUILT: "✓", State.RESTORED: "✓", State.UP_TO_DATE: "=", State.FAILED: "✗", State.STOPPED: "■",
    State.SKIPPED: "-",
}
_ACTIVE = {State.BUILDING, State.RESTORING, State.PUBLISHING}


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
        width = max((len(n) for n in self.names), default=8)
        lines = []
        for n in self.names:
            st = self.state[n]
            if st in _ACTIVE:
                t = seconds(now - self.started.get(n, now))
            elif n in self.finished and st not in (State.UP_TO_DATE, State.SKIPPED):
                t = seconds(self.finished[n])
            else:
                t = ""
            detail = self.detail.get(n, "").splitlines()[0][:60] if self.detail.get(n) else ""
            lines.append(f" {_SYMBOL.get(st, '?')} {n.ljust(width)}  {st:<11} {t:>7}  {detail}".rstrip())
        out = ""
        if self._drawn:
            out += f"\x1b[{self._drawn}F"
        out += "".join(f"\x1b[2K{line}\n" for line in lines)
        self.stream.write(out)
        self.stream.flush()
        self._drawn = len(lines)


def summary(report: BuildReport) -> str:
    rows = []
    for o in report.outcomes:
        extra = (o.store and f"from {o.store}") or (", ".join(f"published to {s}" for s in o.published))
        if o.action in NOT_DONE and o.detail:
            extra = o.detail.splitlines()[0]
        rows.append([o.component, o.action, seconds(o.seconds) if o.seconds else "-", o.key[:12] + ("+dirty" if o.dirty else ""), extra])
    text = table(rows, ["component", "action", "time", "key", "note"])
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
