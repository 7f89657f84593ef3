"""A repository's own .git/config cannot make different content look the same: with core.ignorecase set
there (git sets it when a repository is cloned onto a case-insensitive file system, and it travels
with a copy of the checkout), a new TOOL.sh beside a tracked tool.sh was no content at all: the tree
stayed clean and the key unchanged while the build could read it. Through the real CLI and real git."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gitutil import make_repo, pib, sh
from tests.reliability import tally

pytestmark = pytest.mark.integration


def _status(ws: Path) -> tuple[str, bool]:
    r = pib(ws, "status", "--json")
    assert r.returncode == 0, r.stderr
    comp = json.loads(r.stdout)["components"][0]
    return comp["key"], comp["dirty"]


def test_core_ignorecase_in_the_repository_does_not_hide_a_file(tmp_path: Path) -> None:
    with tally("hostile build", "core.ignorecase in the repository's .git/config hides a new file"):
        make_repo(tmp_path / "repos" / "core", {"build.sh": "#!/bin/sh\ncp *.sh \"$DESTDIR/\"\n",
                                                "tool.sh": "echo tool\n"})
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "pib.toml").write_text('[platform]\nmin_version = "1"\n[components.core]\n'
                                     'source = "../repos/core"\nbuild = ["./build.sh"]\n')
        assert pib(ws, "configure").returncode == 0
        checkout = ws / "projects" / "core"
        clean_key, dirty = _status(ws)
        assert not dirty
        sh(["git", "config", "core.ignorecase", "true"], checkout)
        assert _status(ws) == (clean_key, False)  # the setting alone changes nothing
        (checkout / "TOOL.sh").write_text("echo something else\n")
        key, dirty = _status(ws)
        assert dirty and key != clean_key
        (checkout / "TOOL.sh").unlink()
        assert _status(ws) == (clean_key, False)
