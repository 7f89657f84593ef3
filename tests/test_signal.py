"""SIGTERM or SIGINT to the real CLI at the points of tests/test_kill.py; unlike SIGKILL these run pib's
handlers (a KeyboardInterrupt in the main thread, the build's process group stopped), so they test the
clean-up paths: pib must end with exit 130 soon, leave nothing half in place, and the next run must give
the clean image.

The signal goes to pib alone, as a CI runner or a terminal sends it; the point's function then carries
on (the launcher's PIB_KILL_GO), as it would if the signal had come a moment earlier.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.reliability import tally
from tests.test_kill import (
    POINTS,
    Kit,
    Point,
    _prepare,
    _wait_for,
    check_nothing_half,
    check_recovered,
    kill_tree,
    kit,
    new_ws,
    pib,
)

pytestmark = pytest.mark.integration
__all__ = ["kit"]

# Where a signal finds pib inside its own code, at the steps whose clean-up matters most: the record of a
# build, an extraction, the image's final rename, a publish half done, the CBE's rename into place. (A probe
# of every function point of tests/test_kill.py with both signals held too; these stay as its guard.)
SIGNAL_POINTS = [p for p in POINTS if p.func and p.name in (
    "proto area swapped in, build not recorded", "restore: extracting", "image: complete, not yet renamed",
    "publish: archive uploaded, metadata not", "CBE: recorded, not yet renamed into place")]


def _signal_at(kit: Kit, point: Point, sig: signal.Signals, request: pytest.FixtureRequest) -> None:
    flavour = "cbe" if point.cbe else "plain"
    name = f"ws-{sig.name.lower()}-" + hashlib.sha1(point.name.encode()).hexdigest()[:10]
    remote = f"{request.getfixturevalue('nginx').url}/term-{os.getpid()}-{name}" if point.remote else ""
    ws = new_ws(kit, name, cbe=point.cbe, remote=remote)
    if point.command.startswith(("build", "clobber")):
        assert pib(kit, ws, "configure").returncode == 0
    _prepare(kit, ws, point.before)
    mark = ws / "marks" / "func"
    go = ws / "marks" / "go"
    env = {**kit.env, "PIB_KILL_AT": point.func, "PIB_KILL_MARK": str(mark), "PIB_KILL_GO": str(go)}
    proc = subprocess.Popen([sys.executable, str(kit.launcher), "-C", str(ws), *point.command.split()], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for(mark, proc)
        if point.witness and not point.witness.startswith("remote:"):
            assert list(ws.glob(point.witness)), f"not at the point: nothing matches {point.witness}"
        proc.send_signal(sig)
        time.sleep(0.2)
        go.touch()
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            raise AssertionError(f"pib did not end within 60 s of {sig.name}") from None
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    # Interrupted, or (a signal that came after the last step that checks) done.
    assert proc.returncode in (130, 0), f"exit {proc.returncode}: {err[-2000:]}"
    assert "Traceback" not in err and "internal error" not in err, err[-2000:]
    check_nothing_half(kit, ws, flavour, remote)
    check_recovered(kit, ws, flavour, remote)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("point", SIGNAL_POINTS, ids=[p.name for p in SIGNAL_POINTS])
def test_signal_then_rebuild(kit: Kit, point: Point, sig: signal.Signals, request: pytest.FixtureRequest) -> None:
    with tally("signal", f"{sig.name}: {point.name}"):
        _signal_at(kit, point, sig, request)


# `pib clobber` of a built component, stopped at its start, just before it forgets the build record,
# half-way through removing the proto area (moved aside first) and while it cleans the checkout: afterwards
# the proto area is whole or gone (never recorded as built without it; clobber removed the proto area before
# the record until these cases) and the next build gives the clean image.
CLOBBER_POINTS = [
    Point("clobber: started", "clobber base", func="pib.build.checkout|untracked_files|1", before="built"),
    Point("clobber: proto area half-removed", "clobber base", func="os|rmdir|1", before="built",
          witness=".proto.base.pib-old"),
    Point("clobber: about to forget the record", "clobber base", func="pib.build.state|forget|1", before="built"),
    Point("clobber: cleaning the checkout", "clobber base", func="pib.build.commands|clean_checkout|1",
          before="built"),
]


@pytest.mark.parametrize("point", CLOBBER_POINTS, ids=[p.name for p in CLOBBER_POINTS])
def test_sigterm_during_clobber(kit: Kit, point: Point, request: pytest.FixtureRequest) -> None:
    with tally("signal", f"SIGTERM: {point.name}"):
        _signal_at(kit, point, signal.SIGTERM, request)
