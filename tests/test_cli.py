"""The CLI as people meet it: config show, the live view on a terminal, help."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gitutil import make_repo, pib


def _ws(tmp_path: Path) -> Path:
    make_repo(tmp_path / "repos" / "a", {"build.sh": "#!/bin/sh\nsleep 0.6\nmkdir -p $DESTDIR/x\n"})
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "pib.toml").write_text('[platform]\nmin_version = "1"\n[components.a]\nsource = "../repos/a"\n'
                                 'build = ["./build.sh"]\n')
    (ws / "pib.local.toml").write_text('[components.a]\nbranch = "main"\n')
    return ws


def test_config_show_names_where_each_value_came_from(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    r = pib(ws, "config", "show")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("components.a.branch"))
    assert '"main"' in line and line.endswith("pib.local.toml:2")
    data = json.loads(pib(ws, "config", "show", "--json").stdout)
    assert data["config"]["components"]["a"]["build"] == ["./build.sh"]
    assert data["sources"]["components.a.source"].endswith("pib.toml:4")


def test_live_view_on_a_terminal(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    assert pib(ws, "configure").returncode == 0
    pid, fd = pty.fork()
    if pid == 0:  # child: the real CLI on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "pib", "-C", str(ws), "build"])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "\x1b[1F\x1b[J" in text  # lines redrawn in place
    assert "building" in text and "built" in text
    assert "1 built in" in text


def test_help_and_no_command() -> None:
    r = subprocess.run([sys.executable, "-m", "pib"], capture_output=True, text=True)
    assert r.returncode == 2 and "configure" in r.stdout


def test_an_unexpected_exception_is_a_short_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # The last line only: a bug (here planted in `pib status`) says "internal error" and where its
    # traceback went, instead of printing the traceback.
    from pib.build import commands
    from pib.cli import main
    from pib.errors import EXIT_CODES, Reason

    ws = _ws(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(commands, "status", bug)
    rc = main(["-C", str(ws), "status", "--json"])
    out, err = capsys.readouterr()
    assert rc == EXIT_CODES[Reason.INTERNAL]
    assert "Traceback" not in err and "internal error" in err
    assert json.loads(out)["error"]["reason"] == "internal"
    log = tmp_path / "cache" / "pib" / "internal-errors.log"
    assert str(log) in err
    assert "ZeroDivisionError: planted" in log.read_text() and "Traceback" in log.read_text()
