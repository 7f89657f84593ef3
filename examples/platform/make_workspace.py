#!/usr/bin/env python3
"""Lay out the example platform as a developer would have it:

    DEST/repos/<component>   one git repository per component (branch main)
    DEST/<name>/             the workspace: pib.toml, the CBE lock, the overlay

so pib clones real repositories and sees clean, dirty and new commits for real.

    python3 examples/platform/make_workspace.py DEST [--name example] [--repos DIR]

With --repos, existing component repositories are reused (a second workspace
of the same platform shares them); otherwise they are created from
examples/platform/components/*.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from pib.run import minimal_env, run  # noqa: E402

COMPONENTS = ("kernel", "extra", "boot", "lib", "core")
WORKSPACE_FILES = ("pib.toml", "cbe", "overlay")
# Fixed identity and dates: the repositories carry no trace of who ran the demo.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "pib example",
    "GIT_AUTHOR_EMAIL": "example@pib.invalid",
    "GIT_COMMITTER_NAME": "pib example",
    "GIT_COMMITTER_EMAIL": "example@pib.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    env = minimal_env(GIT_ENV)
    env["GIT_CONFIG_GLOBAL"] = "/dev/null"
    return run(["git", *args], cwd=cwd, env=env, capture=True, what=f"git {args[0]}").stdout


def _source_files(src: Path) -> list[Path]:
    """The component's files as this repository has them: tracked or new, never ignored build products."""
    out = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", ".", cwd=src)
    return sorted({Path(p) for p in out.split("\0") if p and (src / p).exists()})


def make_repo(name: str, dest: Path) -> Path:
    """A git repository at dest holding components/<name> as one commit on main."""
    src = HERE / "components" / name
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel in _source_files(src):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, tmp / rel)
    git("init", "-q", "-b", "main", cwd=tmp)
    git("add", "-A", cwd=tmp)
    git("commit", "-q", "-m", f"{name}: initial import", cwd=tmp)
    tmp.rename(dest)
    return dest


def make_workspace(dest: Path, *, name: str = "example", repos: Path | None = None) -> Path:
    """Create dest/repos (unless `repos` is given) and dest/<name>; returns the workspace directory."""
    dest = dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    repo_dir = (repos or dest / "repos").resolve()
    repo_dir.mkdir(parents=True, exist_ok=True)
    for comp in COMPONENTS:
        if not (repo_dir / comp / ".git").is_dir():
            make_repo(comp, repo_dir / comp)
    ws = dest / name
    if ws.exists():
        raise SystemExit(f"{ws} exists already; remove it or pick another --name")
    tmp = dest / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for item in WORKSPACE_FILES:
        s = HERE / item
        if s.is_dir():
            shutil.copytree(s, tmp / item)
        else:
            shutil.copy2(s, tmp / item)
    text = (tmp / "pib.toml").read_text(encoding="utf-8")
    rel = Path("..") / repo_dir.relative_to(dest) if repo_dir.is_relative_to(dest) else repo_dir
    text = text.replace('"../repos/', f'"{rel.as_posix()}/')
    (tmp / "pib.toml").write_text(text, encoding="utf-8")
    tmp.rename(ws)
    return ws


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--name", default="example")
    ap.add_argument("--repos", type=Path, help="use (or create) the component repositories here")
    args = ap.parse_args()
    print(make_workspace(args.dest, name=args.name, repos=args.repos))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
