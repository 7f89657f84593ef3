"""Real git repositories and workspaces for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(args, cwd=cwd, env=env, check=check, capture_output=True, text=True)


def make_repo(path: Path, files: dict[str, str], branch: str = "main") -> Path:
    path.mkdir(parents=True)
    sh(["git", "init", "-q", "-b", branch], path)
    write(path, files)
    commit(path, "initial")
    return path


def write(path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
        if name.endswith(".sh"):
            f.chmod(0o755)


def commit(path: Path, message: str) -> None:
    sh(["git", "add", "-A"], path)
    sh(["git", "commit", "-q", "--allow-empty", "-m", message], path)


def pib(ws: Path, *args: str, check: bool = False,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a user runs it (env: variables added to this process's environment)."""
    return subprocess.run([sys.executable, "-m", "pib", "-C", str(ws), *args], capture_output=True, text=True,
                          check=check, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


MAKEFILE = """\
all:
\tmkdir -p $(DESTDIR)/bin
\tcc -o $(DESTDIR)/bin/{name} {name}.c
"""

C_SOURCE = """\
#include <stdio.h>
int main(void) {{ puts("{name}"); return 0; }}
"""


def core_workspace(root: Path, build: str, extra: str = "") -> Path:
    """root/ws: one prebuilt component `core` from a new repository root/repos/core whose build.sh is
    `build`, with a local store; `extra` is appended to its pib.toml (stores, trust). Not configured."""
    make_repo(root / "repos" / "core", {"build.sh": build})
    ws = root / "ws"
    ws.mkdir()
    (ws / "pib.toml").write_text(f"""\
[platform]
min_version = "1"
[local_store]
path = "store"
[components.core]
source = "../repos/core"
build = ["./build.sh"]
prebuilt = true
{extra}""")
    return ws


def c_component(root: Path, name: str) -> Path:
    """A component built with make and the C compiler."""
    return make_repo(root / "repos" / name, {
        "Makefile": MAKEFILE.format(name=name),
        f"{name}.c": C_SOURCE.format(name=name),
        ".gitignore": "*.o\n",
    })
