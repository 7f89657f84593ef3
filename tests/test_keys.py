"""Input keys follow content, not timestamps; the key document format is pinned."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from pib import keys
from pib.build.checkout import source_state
from pib.config.loader import load
from tests.gitutil import commit, make_repo, sh, write

GOLDEN_DOC = {
    "format": 3,
    "component": "extra",
    "source": {"tree": "4b825dc642cb6eb9a060e54bf8d69288fbee4904"},
    "epoch": 1700000000,
    "recipe": {"build": ["make", "install"], "env": {"OPT": "-O2"}},
    "cbe": {"name": "smartos-cbe", "version": "2", "lock": "ab" * 32, "system_path": "/usr/bin:/bin"},
    "platform": {"baseline": "20180329T002515Z"},
    "key_files": {"compat/illumos-hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    "depends": {"illumos": "o1:" + "cd" * 32},
}
# Changing this value means every existing artifact in every store is orphaned (format 2 did, on purpose:
# the build epoch and cbe.system_path became inputs; format 3 too: dependencies count by output digest):
# bump keys.FORMAT and say so in the release notes.
GOLDEN_KEY = "9e8b25b253b003e6fb042a0078d21f9967505a458433de0eadc51dd92f53a901"


def test_golden_key_document(tmp_path: Path) -> None:
    (tmp_path / "compat").mkdir()
    (tmp_path / "compat" / "illumos-hash").write_text("")
    (tmp_path / "pib.toml").write_text(
        '[components.illumos]\nsource = "x"\nbuild = ["true"]\n'
        '[components.extra]\nsource = "y"\nbuild = ["make", "install"]\ndepends = ["illumos"]\n'
        'env = { OPT = "-O2" }\nkey_files = ["compat/illumos-hash"]\n'
    )
    cfg = load(tmp_path)
    doc = keys.key_document(
        cfg.component("extra"), workspace=tmp_path, tree="4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        epoch=1700000000, cbe={"name": "smartos-cbe", "version": "2", "lock": "ab" * 32, "system_path": "/usr/bin:/bin"},
        baseline="20180329T002515Z",
        dep_outputs={"illumos": "o1:" + "cd" * 32},
    )
    assert doc == GOLDEN_DOC
    assert keys.canonical(doc).startswith(b'{"cbe":{"lock":"abab')
    assert keys.digest(doc) == GOLDEN_KEY
    # No absolute path of this machine may leak into a key.
    assert str(tmp_path).encode() not in keys.canonical(doc)


def test_tree_follows_content(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.c": "int a;\n", ".gitignore": "*.o\n"})
    index = tmp_path / "index"
    clean = source_state(repo, index)
    assert not clean.dirty and clean.tree == clean.head_tree

    # A bare touch (new mtime, same bytes) does not change the key.
    future = time.time() + 100
    os.utime(repo / "a.c", (future, future))
    assert source_state(repo, index).tree == clean.tree

    # An ignored build product does not change it either.
    (repo / "a.o").write_bytes(b"\0")
    assert source_state(repo, index).tree == clean.tree

    # A one-byte edit of a tracked file does.
    (repo / "a.c").write_text("int b;\n")
    edited = source_state(repo, index)
    assert edited.tree != clean.tree and edited.dirty

    # Undoing it brings the key back: content, not history.
    (repo / "a.c").write_text("int a;\n")
    assert source_state(repo, index).tree == clean.tree

    # A new untracked file changes it.
    (repo / "new.h").write_text("")
    untracked = source_state(repo, index)
    assert untracked.tree != clean.tree and untracked.dirty

    # Committing that same content gives the same key, now clean.
    commit(repo, "add new.h")
    committed = source_state(repo, index)
    assert committed.tree == untracked.tree and not committed.dirty

    # The user's own index is untouched by all of this.
    st = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True,
                        check=True)
    assert st.stdout == "" and st.returncode == 0


def test_two_identical_dirty_trees_share_a_key(tmp_path: Path) -> None:
    a = make_repo(tmp_path / "a", {"f": "1\n"})
    b = make_repo(tmp_path / "b", {"f": "1\n"})
    for r in (a, b):
        write(r, {"f": "2\n", "g": "x\n"})
    assert source_state(a, tmp_path / "ia").tree == source_state(b, tmp_path / "ib").tree


def test_diff_lists_changed_fields() -> None:
    new = {**GOLDEN_DOC, "cbe": {**GOLDEN_DOC["cbe"], "version": "3"}}  # type: ignore[dict-item]
    assert keys.diff(GOLDEN_DOC, new) == [("cbe.version", "2", "3")]


def test_isolation_enters_the_key_only_when_not_the_default(tmp_path: Path) -> None:
    """Sandboxed without network is the default and leaves the document (and GOLDEN_KEY) as it was;
    a build with network, or without a sandbox, has a key of its own."""
    from pib.build.sandbox import key_fields

    def doc_of(extra: str) -> dict[str, object]:
        (tmp_path / "pib.toml").write_text('[components.c]\nsource = "x"\nbuild = ["true"]\n' + extra)
        cfg = load(tmp_path)
        return keys.key_document(cfg.component("c"), workspace=tmp_path, tree="t", epoch=0, cbe=None,
                                 baseline=None, dep_outputs={}, isolation=key_fields(cfg, cfg.component("c")))

    default = doc_of("")
    assert "isolation" not in default
    assert doc_of('[sandbox]\nmode = "required"\n') == default
    assert doc_of("network = true\n")["isolation"] == {"network": True}
    assert doc_of('[sandbox]\nmode = "none"\n')["isolation"] == {"sandbox": "none"}
    assert len({keys.digest(d) for d in (default, doc_of("network = true\n"), doc_of('[sandbox]\nmode = "none"\n'))}) == 3


def _recorded_seconds(repo: Path, name: str) -> tuple[int, int]:
    """ctime and mtime seconds the user's index recorded for `name`."""
    out = sh(["git", "ls-files", "--debug", name], repo).stdout
    got = dict(line.strip().split(": ", 1) for line in out.splitlines()[1:3])
    return int(got["ctime"].split(":")[0]), int(got["mtime"].split(":")[0])


def test_same_second_edit_is_seen_through_a_seeded_private_index(tmp_path: Path) -> None:
    """The private index starts as a copy of the user's: an entry the user's index holds as racily clean
    (changed in the second the index was written) must stay so in the copy, or git trusts its stat data."""
    truth = source_state(make_repo(tmp_path / "truth", {"f": "2\n"}), tmp_path / "it").tree
    for attempt in range(10):
        time.sleep(1.02 - time.time() % 1)  # just after a second begins: commit and edit share it
        repo = make_repo(tmp_path / f"r{attempt}", {"f": "1\n"})
        (repo / "f").write_text("2\n")  # same size
        st = os.stat(repo / "f")
        if _recorded_seconds(repo, "f") == (int(st.st_ctime), int(st.st_mtime)):
            break
    else:
        pytest.skip("could not commit and edit within one second on this machine")
    time.sleep(1.02 - time.time() % 1)  # the private index is made in a later second
    assert source_state(repo, tmp_path / "index").tree == truth
