"""A no-op plan learns each working tree from one `find` that prints only what changed since the
last walk, instead of a git process per checkout, and still sees every change git would."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pib.build import checkout
from pib.build.checkout import source_state, source_states
from tests.gitutil import make_repo, sh


def _tick() -> None:
    time.sleep(0.05)  # past the file system's timestamp granularity


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Believe entries changed just before a walk, so a test need not wait out the racy window; a
    # change made after the walk still shows.
    monkeypatch.setattr(checkout, "_RACY_SECONDS", 0)
    _tick()


class GitCalls:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = checkout.git

        def counting(*a: object, **k: object) -> str:
            self.count += 1
            return real(*a, **k)  # type: ignore[arg-type]

        monkeypatch.setattr(checkout, "git", counting)


def _states(repos: list[Path], tmp: Path, memo: str = "walk") -> list[str]:
    return [s.tree for s in source_states([(r, tmp / f"i{i}") for i, r in enumerate(repos)], tmp / memo)]


def test_unchanged_tree_runs_no_git(tmp_path: Path, trusting: None, monkeypatch: pytest.MonkeyPatch) -> None:
    repos = [make_repo(tmp_path / f"r{i}", {"a.c": f"int a{i};\n", "sub/b.h": "\n"}) for i in range(3)]
    _tick()
    trees = _states(repos, tmp_path)
    assert trees == [source_state(r, tmp_path / f"fresh{i}").tree for i, r in enumerate(repos)]
    calls = GitCalls(monkeypatch)
    assert _states(repos, tmp_path) == trees
    assert _states(repos[1:], tmp_path) == trees[1:]  # a plan of some components keeps the others' memo
    assert _states(repos, tmp_path) == trees
    assert calls.count == 0


def _same_size_edit(repo: Path) -> None:
    st = os.stat(repo / "a.c")
    (repo / "a.c").write_text("int b;\n")
    os.utime(repo / "a.c", ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime and size as before (touch -d)


def _rename(repo: Path) -> None:
    (repo / "sub" / "b.h").rename(repo / "sub" / "c.h")


def _retarget(repo: Path) -> None:
    (repo / "link").unlink()
    (repo / "link").symlink_to("sub/b.h")


def _new_dir(repo: Path) -> None:
    (repo / "sub" / "deeper" / "new").mkdir(parents=True)
    (repo / "sub" / "deeper" / "new" / "n.c").write_text("x\n")


def _moved_in(repo: Path) -> None:
    # A tree made before the walk, moved in afterwards: its own entries all have old ctimes.
    (repo.parent / "elsewhere" / "old.c").rename(repo / "sub" / "old.c")


def _untracked_by_index(repo: Path) -> None:
    # build.o is ignored but tracked (added with -f): leaving the user's index drops it from the content.
    sh(["git", "rm", "-q", "--cached", "build.o"], repo)


CHANGES: dict[str, Callable[[Path], object]] = {
    "same-size edit, mtime restored": _same_size_edit,
    "new untracked file": lambda r: (r / "sub" / "new.c").write_text("x\n"),
    "new file in a new directory": _new_dir,
    "file from elsewhere moved in": _moved_in,
    "deleted file": lambda r: (r / "sub" / "b.h").unlink(),
    "rename": _rename,
    "chmod +x": lambda r: (r / "a.c").chmod(0o755),
    "symlink retargeted": _retarget,
    "ignore rule dropped": lambda r: (r / ".gitignore").write_text(""),
    "ignored file dropped from the user's index": _untracked_by_index,
}


def _subject(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n", "sub/b.h": "\n", ".gitignore": "*.o\n"})
    (repo / "link").symlink_to("a.c")
    (repo / "build.o").write_text("ignored, and tracked\n")
    sh(["git", "add", "-f", "build.o"], repo)
    (repo / "ignored.o").write_text("ignored until the rule goes\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "old.c").write_text("made long ago\n")
    return repo


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_reaches_git(tmp_path: Path, trusting: None, change: str) -> None:
    repo = _subject(tmp_path)
    _tick()
    [tree] = _states([repo], tmp_path)
    [again] = _states([repo], tmp_path)
    assert again == tree
    _tick()
    CHANGES[change](repo)
    truth = source_state(repo, tmp_path / "fresh-index").tree  # git alone, nothing remembered
    assert truth != tree
    assert _states([repo], tmp_path) == [truth]


def test_change_in_the_same_second_as_the_walk_is_seen(tmp_path: Path) -> None:
    # No waiting at all: the change lands in the same clock second as the walk that recorded the tree.
    repo = _subject(tmp_path)
    for change in ("same-size edit, mtime restored", "chmod +x", "symlink retargeted"):
        [tree] = _states([repo], tmp_path)
        CHANGES[change](repo)
        truth = source_state(repo, tmp_path / "fresh-index").tree
        assert truth != tree
        assert _states([repo], tmp_path) == [truth], change


def test_recent_change_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n"})
    (repo / "a.c").write_text("int b;\n")  # within the racy window of the walk below
    _states([repo], tmp_path)
    calls = GitCalls(monkeypatch)
    _states([repo], tmp_path)
    assert calls.count > 0


def test_nested_repository_is_not_trusted(tmp_path: Path, trusting: None, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n"})
    make_repo(repo / "vendor" / "lib", {"x.c": "\n"})
    other = make_repo(tmp_path / "o", {"a.c": "\n"})
    _tick()
    _states([repo, other], tmp_path)
    calls = GitCalls(monkeypatch)
    _states([other], tmp_path)
    assert calls.count == 0
    _states([repo], tmp_path)
    assert calls.count > 0


def test_missing_checkout_falls_back(tmp_path: Path, trusting: None) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n"})
    # find fails for the whole batch: every checkout in it goes to git, which names the problem.
    assert checkout._walk([repo, tmp_path / "gone"], time.time(), batches=1) == [None, None]
    assert checkout._walk([repo], time.time(), batches=1) != [None]


def test_file_system_of_another_clock_always_runs_git(tmp_path: Path, trusting: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n"})
    monkeypatch.setattr(checkout, "_LOCAL_FS", frozenset())  # as if on NFS
    _tick()
    _states([repo], tmp_path)
    calls = GitCalls(monkeypatch)
    _states([repo], tmp_path)
    assert calls.count > 0


def test_clock_set_back_voids_the_memo(tmp_path: Path, trusting: None, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n"})
    _tick()
    _states([repo], tmp_path)
    now = time.time()
    monkeypatch.setattr(checkout.time, "time", lambda: now - 3600)
    calls = GitCalls(monkeypatch)
    _states([repo], tmp_path)
    assert calls.count > 0


@pytest.mark.parametrize("bad", ["", "[" * 100_000, "{}", '{"format": 1, "started": 1e999, "shared": "", "known": {}}',
                                 "not json", '{"format": 1, "started": 0, "shared": "x", "known": {"a": [1, 2]}}'])
def test_damaged_memo_is_a_cache_miss(tmp_path: Path, trusting: None, bad: str) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n"})
    truth = source_state(repo, tmp_path / "fresh-index").tree
    (tmp_path / "walk").write_text(bad)
    assert _states([repo], tmp_path) == [truth]
    assert json.loads((tmp_path / "walk").read_text())["format"] == checkout._WALK_FORMAT  # written anew
