"""A no-op plan learns each working tree from one stat walk instead of a git process, and still
sees every change git would."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pib.build import checkout
from pib.build.checkout import source_state, stat_digests
from tests.gitutil import make_repo


def _tick() -> None:
    time.sleep(0.02)  # past the file system's timestamp granularity


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Trust entries changed just now, so a test need not wait out the racy window.
    monkeypatch.setattr(checkout, "_RACY_SECONDS", -60)


def _no_git(*_a: object, **_k: object) -> str:
    raise AssertionError("git was run for an unchanged tree")


def test_unchanged_tree_runs_no_git(tmp_path: Path, trusting: None, monkeypatch: pytest.MonkeyPatch) -> None:
    repos = [make_repo(tmp_path / f"r{i}", {"a.c": f"int a{i};\n", "sub/b.h": "\n"}) for i in range(3)]
    first = stat_digests(repos)
    trees = [source_state(r, tmp_path / f"i{i}", d).tree for i, (r, d) in enumerate(zip(repos, first, strict=True))]
    again = stat_digests(repos, batches=1)
    assert again == first and None not in again
    monkeypatch.setattr(checkout, "git", _no_git)
    assert [source_state(r, tmp_path / f"i{i}", d).tree
            for i, (r, d) in enumerate(zip(repos, again, strict=True))] == trees


def _same_size_edit(repo: Path) -> None:
    st = os.stat(repo / "a.c")
    (repo / "a.c").write_text("int b;\n")
    os.utime(repo / "a.c", ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime and size as before


def _rename(repo: Path) -> None:
    (repo / "sub" / "b.h").rename(repo / "sub" / "c.h")


def _retarget(repo: Path) -> None:
    (repo / "link").unlink()
    (repo / "link").symlink_to("sub/b.h")


CHANGES: dict[str, Callable[[Path], object]] = {
    "same-size edit, mtime restored": _same_size_edit,
    "new untracked file": lambda r: (r / "sub" / "new.c").write_text("x\n"),
    "deleted file": lambda r: (r / "sub" / "b.h").unlink(),
    "rename": _rename,
    "chmod +x": lambda r: (r / "a.c").chmod(0o755),
    "symlink retargeted": _retarget,
    "ignore rule dropped": lambda r: (r / ".gitignore").write_text(""),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_reaches_git(tmp_path: Path, trusting: None, change: str) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n", "sub/b.h": "\n"})
    (repo / "link").symlink_to("a.c")
    (repo / ".gitignore").write_text("*.o\n")  # only the tree's own ignore rules count
    (repo / "build.o").write_text("ignored until the rule goes\n")
    index = tmp_path / "index"
    [before] = stat_digests([repo])
    tree = source_state(repo, index, before).tree
    _tick()
    CHANGES[change](repo)
    [after] = stat_digests([repo])
    assert after != before
    truth = source_state(repo, tmp_path / "fresh-index").tree  # git alone, nothing remembered
    assert truth != tree
    assert source_state(repo, index, after).tree == truth


def test_recent_change_is_not_trusted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n"})
    (repo / "a.c").write_text("int b;\n")  # within the racy window
    assert stat_digests([repo]) == [None]


def test_nested_repository_is_not_trusted(tmp_path: Path, trusting: None) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n"})
    make_repo(repo / "vendor" / "lib", {"x.c": "\n"})
    other = make_repo(tmp_path / "o", {"a.c": "\n"})
    assert stat_digests([repo, other], batches=1)[0] is None
    assert stat_digests([repo, other], batches=1)[1] is not None


def test_missing_checkout_falls_back(tmp_path: Path, trusting: None) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n"})
    # find fails for the whole batch: every checkout in it goes to git, which names the problem.
    assert stat_digests([repo, tmp_path / "gone"], batches=1) == [None, None]
