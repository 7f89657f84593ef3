"""Counts for docs/reliability.md: each fault case records whether it held.

With PIB_RELIABILITY_DIR set, every `tally` block appends one JSON line
(family, case, tried, passed, seconds) to DIR/<family>.jsonl; without it the
blocks only run their body. bench/reliability.py sets the variable, runs the
fault tests and turns the lines into the table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENV = "PIB_RELIABILITY_DIR"


@dataclass
class Tally:
    tried: int = 1  # a fuzz case sets this to the number of examples it ran


@contextmanager
def tally(family: str, case: str) -> Iterator[Tally]:
    t = Tally()
    t0 = time.monotonic()
    ok = False
    try:
        yield t
        ok = True
    finally:
        out = os.environ.get(ENV)
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            # One failing example fails the case; the others it ran held.
            line = {"family": family, "case": case, "tried": t.tried, "passed": t.tried if ok else t.tried - 1,
                    "seconds": round(time.monotonic() - t0, 3)}
            with open(Path(out) / f"{family}.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
