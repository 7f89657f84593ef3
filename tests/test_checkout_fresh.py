"""The first look at a checkout (no private index yet): fewer git processes, the same trees as git's."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from pib.build import checkout
from pib.build.checkout import _loose_commit_tree, source_state
from tests.gitutil import make_repo, sh
from tests.test_checkout_stat import GitCalls


def _git_tree(repo: Path, rev: str = "HEAD") -> str:
    return sh(["git", "rev-parse", f"{rev}^{{tree}}"], repo).stdout.strip()


def _head(repo: Path) -> str:
    return sh(["git", "rev-parse", "HEAD"], repo).stdout.strip()


FILES = {"a.c": "int a;\n", "sub/b.h": "\n", "run.sh": "#!/bin/sh\n", ".gitattributes": "*.c text eol=crlf\n"}


def test_a_first_plan_runs_three_git_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without attributes: a tree with a .gitattributes has its converted files checked too (three more).
    repo = make_repo(tmp_path / "r", {k: v for k, v in FILES.items() if k != ".gitattributes"})
    calls = GitCalls(monkeypatch)
    st = source_state(repo, tmp_path / "index")
    # content paths, update-index, write-tree; the private index is the user's, copied (nothing to list
    # or remove), and HEAD's tree comes from its loose commit object.
    assert calls.count == 3
    assert st.tree == st.head_tree == _git_tree(repo)
    assert not st.dirty


def test_a_first_plan_of_a_dirty_tree_with_untracked_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", FILES)
    (repo / "a.c").write_text("int changed;\n")
    (repo / "new.c").write_text("int n;\n")
    (repo / "link").symlink_to("a.c")
    (repo / ".gitignore").write_text("*.o\n")
    (repo / "x.o").write_text("ignored\n")
    (repo / "run.sh").chmod(0o755)
    st = source_state(repo, tmp_path / "index")
    assert st.dirty
    # What git makes of the same working tree in an index of its own, ignoring what .gitignore ignores.
    env_index = tmp_path / "git-index"
    sh(["cp", str(repo / ".git" / "index"), str(env_index)], repo)
    sh(["env", f"GIT_INDEX_FILE={env_index}", "git", "add", "-A", "."], repo)
    want = sh(["env", f"GIT_INDEX_FILE={env_index}", "git", "write-tree"], repo).stdout.strip()
    assert st.tree == want
    assert source_state(repo, tmp_path / "index").tree == want  # the second look agrees with the first


def test_the_loose_commit_reader_agrees_with_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", FILES)
    (repo / "more.c").write_text("int m;\n")
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "two\n\nwith a body\n"], repo)
    for rev in ("HEAD", "HEAD~1"):
        commit = sh(["git", "rev-parse", rev], repo).stdout.strip()
        assert _loose_commit_tree(repo / ".git", commit) == _git_tree(repo, rev)


def test_a_packed_or_damaged_commit_is_left_to_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", FILES)
    head = _head(repo)
    loose = repo / ".git" / "objects" / head[:2] / head[2:]
    body = zlib.decompress(loose.read_bytes())
    forged = body[:-1] + b"!"  # one byte of the message changed: no longer the object its id names
    loose.chmod(0o644)
    loose.write_bytes(zlib.compress(forged))  # content that is not what its id says
    assert _loose_commit_tree(repo / ".git", head) is None
    loose.write_bytes(b"not zlib")
    assert _loose_commit_tree(repo / ".git", head) is None
    loose.write_bytes(zlib.compress(body))
    assert _loose_commit_tree(repo / ".git", head) == _git_tree(repo)
    sh(["git", "gc", "-q", "--prune=now"], repo)
    assert not loose.exists()
    assert _loose_commit_tree(repo / ".git", head) is None
    st = source_state(repo, tmp_path / "index")  # git answers for a packed commit
    assert st.head_tree == _git_tree(repo) == st.tree


def test_a_sha256_repository(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    res = sh(["git", "init", "-q", "--object-format=sha256", "-b", "main", str(repo)], tmp_path, check=False)
    if res.returncode != 0:
        pytest.skip("this git cannot make SHA-256 repositories")
    (repo / "a.c").write_text("int a;\n")
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"], repo)
    head = _head(repo)
    assert len(head) == 64
    assert _loose_commit_tree(repo / ".git", head) == _git_tree(repo)
    st = source_state(repo, tmp_path / "index")
    assert st.tree == st.head_tree == _git_tree(repo)


def test_a_first_plan_after_the_user_untracked_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The private index is seeded from the user's index: a path the user removed from it before the
    first plan is not in the content (the copy holds only what is tracked now)."""
    repo = make_repo(tmp_path / "r", FILES)
    (repo / ".gitignore").write_text("sub/\n")
    sh(["git", "rm", "-q", "--cached", "sub/b.h"], repo)
    st = source_state(repo, tmp_path / "index")
    names = sh(["git", "ls-tree", "-r", "--name-only", st.tree], repo).stdout.split()
    assert "sub/b.h" not in names and "a.c" in names
    monkeypatch.setattr(checkout, "_loose_commit_tree", lambda *_a: None)
    assert source_state(repo, tmp_path / "index2").tree == st.tree  # the same with git answering
