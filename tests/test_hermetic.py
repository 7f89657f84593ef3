"""The suite depends on nothing from the machine or the user: a hostile HOME changes no outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import hermetic_environ

REPO = Path(__file__).resolve().parents[1]


def test_environment_is_hermetic() -> None:
    home = Path(os.environ["HOME"])
    assert os.environ["GIT_CONFIG_GLOBAL"] == str(home / "gitconfig") and os.environ["GIT_CONFIG_NOSYSTEM"] == "1"
    assert os.environ["XDG_CACHE_HOME"].startswith(str(home))
    assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert not any(k.startswith("PIB_") and k != "PIB_CACHE" for k in os.environ)


def test_hermetic_environ_drops_the_callers_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIB_SIGNING_KEY", "/home/someone/ci.key")
    monkeypatch.setenv("GIT_DIR", "/elsewhere")
    monkeypatch.setenv("CI", "true")
    env = hermetic_environ(tmp_path)
    assert "PIB_SIGNING_KEY" not in env and "GIT_DIR" not in env and "CI" not in env
    assert (tmp_path / "home" / "gitconfig").read_text().startswith("[user]")


@pytest.mark.integration
def test_workspace_tests_pass_under_a_hostile_home(tmp_path: Path) -> None:
    """A user whose git signs every commit, ignores *.c and *.txt everywhere and has no identity."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(
        "[commit]\n\tgpgsign = true\n[gpg]\n\tprogram = /bin/false\n"
        "[core]\n\texcludesFile = ~/.gitignore_global\n\tautocrlf = true\n"
        "[init]\n\tdefaultBranch = trunk\n[user]\n\tuseConfigOnly = true\n")
    (home / ".gitignore_global").write_text("*.c\n*.txt\n*.sh\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                          "tests/test_keys.py", "tests/test_build.py"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and " failed" not in res.stdout
