"""A local store whose metadata is not what pib wrote: a fifo, or a link to /dev/zero. A fifo held
`pib build` (and `status`, `explain`) forever, deaf to SIGTERM (the reading thread never returned);
/dev/zero was read until memory ran out. Each is now a store warning and a local build, within seconds,
through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gitutil import make_repo
from tests.reliability import tally
from tests.services.badhttp import BadHttp

pytestmark = pytest.mark.integration

BUILD = "#!/bin/sh\nset -e\nmkdir -p \"$DESTDIR/etc\"\necho root:x:0:0::/:/bin/sh > \"$DESTDIR/etc/passwd\"\n"


def _fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


def _zero(p: Path) -> None:
    p.unlink()
    p.symlink_to("/dev/zero")


CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "metadata a fifo": ("json", _fifo),
    "metadata a link to /dev/zero": ("json", _zero),
}


def _pib(ws: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pib", "-C", str(ws), *args], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=120)
    return r, time.monotonic() - t


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_local_store_entry_that_is_not_a_file(tmp_path: Path, case: str) -> None:
    with tally("hostile store", f"local store: {case}"):
        make_repo(tmp_path / "repos" / "core", {"build.sh": BUILD})
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "pib.toml").write_text('[platform]\nmin_version = "1"\n[local_store]\npath = "store"\n'
                                     '[components.core]\nsource = "../repos/core"\nbuild = ["./build.sh"]\n'
                                     'prebuilt = true\n')
        r, _ = _pib(ws, "configure")
        assert r.returncode == 0, r.stderr
        r, _ = _pib(ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        key = json.loads(r.stdout)["components"][0]["key"]
        suffix, spoil = CASES[case]
        [entry] = (ws / "store" / "core").glob(f"{key}*.{suffix}")
        spoil(entry)
        assert _pib(ws, "clobber", "core")[0].returncode == 0
        for args in (("status",), ("explain", "core")):
            r, seconds = _pib(ws, *args)
            assert r.returncode == 0 and seconds < 30, (args, r.stderr)
        r, seconds = _pib(ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        assert seconds < 30
        report = json.loads(r.stdout)
        assert report["components"][0]["action"] == "built"
        assert any("store local" in w for w in report["warnings"]), report["warnings"]


@pytest.mark.parametrize("command", ["build", "status --remote"])
def test_sigterm_while_a_store_never_answers(tmp_path: Path, badhttp: BadHttp, command: str) -> None:
    """A store that accepts the connection and never answers holds a worker thread (the restore's lookup,
    or status's) for as long as its time-out allows; SIGTERM must still end pib with 130 within seconds,
    nothing half in place, and the next build (the store gone) gives the component."""
    with tally("hostile store", f"SIGTERM while a store request never returns: pib {command}"):
        make_repo(tmp_path / "repos" / "core", {"build.sh": BUILD})
        ws = tmp_path / "ws"
        ws.mkdir()
        toml = ('[platform]\nmin_version = "1"\n[local_store]\npath = "store"\n[components.core]\n'
                'source = "../repos/core"\nbuild = ["./build.sh"]\nprebuilt = true\n')
        (ws / "pib.toml").write_text(toml + f'[[store]]\nname = "stuck"\ntype = "http"\n'
                                            f'url = "{badhttp.url}/stall/{tmp_path.name}"\ntimeout = 600\n')
        assert _pib(ws, "configure")[0].returncode == 0
        seen = len(badhttp.requests)
        proc = subprocess.Popen([sys.executable, "-m", "pib", "-C", str(ws), *command.split()], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while len(badhttp.requests) == seen and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(badhttp.requests) > seen, "pib never asked the store"
            time.sleep(0.3)
            t = time.monotonic()
            proc.terminate()
            _out, err = proc.communicate(timeout=60)
            seconds = time.monotonic() - t
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, err
        assert seconds < 15, seconds
        assert "Traceback" not in err
        assert not (ws / "proto.core").exists() and not list(ws.glob("proto.core*"))
        (ws / "pib.toml").write_text(toml)
        r, _ = _pib(ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["components"][0]["action"] == "built"
