"""Component checkouts: clone, branch, update, and the content of the working tree.

The content hash of a working tree is a git tree id computed with a private
index (`git add -A` + `git write-tree`): tracked edits and untracked,
not-ignored files count, a bare `touch` does not, and the user's own index is
never touched.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from pib.config.types import ComponentConfig
from pib.errors import PibError, Reason
from pib.flock import held
from pib.fsutil import remove_tree, write_atomic
from pib.run import Log, minimal_env, run

_PR = re.compile(r"^PR-(\d+)$")


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = minimal_env({"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"})
    # Tests and CI point git at their own config through these; keep them.
    for k in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM"):
        if k in os.environ:
            env[k] = os.environ[k]
    if extra:
        env.update(extra)
    return env


def git(args: list[str], cwd: Path, *, log: Log | None = None, env: Mapping[str, str] | None = None,
        check: bool = True, timeout: float | None = 600) -> str:
    res = run(["git", *args], cwd=cwd, env=git_env(env), log=log, capture=True, check=check,
              reason=Reason.SOURCE, what=f"git {' '.join(args[:2])} in {cwd}", timeout=timeout)
    return res.stdout


_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class SourceState(NamedTuple):
    tree: str  # git tree of the working tree content
    head: str | None  # HEAD commit (None in an empty repository)
    head_tree: str | None
    branch: str | None  # None when detached

    @property
    def dirty(self) -> bool:
        return self.tree != self.head_tree


class CheckoutAction(enum.StrEnum):
    """What `pib configure` did to a checkout; the values appear in --json output."""

    CLONED = "cloned"
    CHECKED_OUT = "checked-out"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    IN_PLACE = "in-place"  # a `path` component: used where it is, never touched


class CheckoutReport(NamedTuple):
    name: str
    action: CheckoutAction
    branch: str | None
    head: str | None
    dirty: bool
    note: str = ""


def _is_repo(path: Path) -> bool:
    return (path / ".git").exists()


def ensure_checkout(comp: ComponentConfig, *, update: bool = False, log: Log | None = None) -> CheckoutReport:
    """Clone a missing checkout, put it on its configured branch or ref; with update, fast-forward it."""
    dest = comp.checkout
    if comp.path is not None:
        if not _is_repo(dest):
            raise PibError(
                f"component {comp.name!r}: {dest} is not a git checkout",
                reason=Reason.SOURCE,
                where=comp.where,
                hint=f"run git init in {dest} and commit, or use source = ... to clone one",
            )
        st = source_state(dest, None)
        return CheckoutReport(comp.name, CheckoutAction.IN_PLACE, st.branch, st.head, st.dirty)
    assert comp.source is not None
    action = CheckoutAction.UNCHANGED
    if not _is_repo(dest):
        if dest.exists() and any(dest.iterdir()):
            raise PibError(
                f"component {comp.name!r}: {dest} exists and is not a git checkout",
                reason=Reason.SOURCE,
                where=comp.where,
                hint=f"move it away, or run: pib clobber {comp.name}",
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.cloning")
        remove_tree(tmp)
        args = ["clone", "--quiet"]
        if comp.branch and not _PR.match(comp.branch):
            args += ["--branch", comp.branch]
        run(["git", *args, comp.source, str(tmp)], env=git_env(), log=log, reason=Reason.SOURCE,
            what=f"git clone {comp.source}", capture=True, timeout=3600)
        tmp.rename(dest)  # a killed clone leaves only the .cloning directory
        action = CheckoutAction.CLONED
    target = comp.ref or comp.branch
    if target:
        action = _checkout(comp, dest, target, update=update or action is CheckoutAction.CLONED, log=log) or action
    elif update:
        action = _fast_forward(comp, dest, log) or action
    st = source_state(dest, None)
    return CheckoutReport(comp.name, action, st.branch, st.head, st.dirty)


def _checkout(comp: ComponentConfig, dest: Path, target: str, *, update: bool, log: Log | None) -> CheckoutAction | None:
    current = git(["rev-parse", "--abbrev-ref", "HEAD"], dest).strip()
    pr = _PR.match(target)
    if pr:
        if current == target and not update:
            return None
        _require_clean(comp, dest, f"switch to {target}")
        git(["fetch", "--quiet", "origin", f"+refs/pull/{pr.group(1)}/head:refs/remotes/origin/{target}"], dest, log=log)
        git(["checkout", "--quiet", "-B", target, f"refs/remotes/origin/{target}"], dest, log=log)
        return CheckoutAction.CHECKED_OUT
    if comp.ref:
        head = git(["rev-parse", "HEAD"], dest).strip()
        want = git(["rev-parse", "--verify", "--quiet", f"{target}^{{commit}}"], dest, check=False).strip()
        if want and want == head:
            return None
        _require_clean(comp, dest, f"check out {target}")
        if not want:
            git(["fetch", "--quiet", "origin", target], dest, log=log)
            target = "FETCH_HEAD"
        git(["checkout", "--quiet", "--detach", target], dest, log=log)
        return CheckoutAction.CHECKED_OUT
    if current == target:
        return _fast_forward(comp, dest, log) if update else None
    _require_clean(comp, dest, f"switch from {current} to {target}")
    has_local = git(["rev-parse", "--verify", "--quiet", f"refs/heads/{target}"], dest, check=False).strip()
    if not has_local:
        git(["fetch", "--quiet", "origin", target], dest, log=log)
        git(["checkout", "--quiet", "-b", target, "--track", f"origin/{target}"], dest, log=log)
    else:
        git(["checkout", "--quiet", target], dest, log=log)
    return CheckoutAction.CHECKED_OUT


def _fast_forward(comp: ComponentConfig, dest: Path, log: Log | None) -> CheckoutAction | None:
    before = git(["rev-parse", "HEAD"], dest).strip()
    git(["fetch", "--quiet", "origin"], dest, log=log)
    upstream = git(["rev-parse", "--verify", "--quiet", "@{upstream}"], dest, check=False).strip()
    if not upstream or upstream == before:
        return None
    _require_clean(comp, dest, "fast-forward")
    out = run(["git", "merge", "--ff-only", "--quiet", "@{upstream}"], cwd=dest, env=git_env(), log=log,
              capture=True, check=False, reason=Reason.SOURCE)
    if out.returncode != 0:
        raise PibError(
            f"component {comp.name!r}: cannot fast-forward {dest} to its upstream (local commits?)",
            reason=Reason.SOURCE,
            where=comp.where,
            hint="rebase or reset the branch yourself, then run pib configure again",
        )
    return CheckoutAction.UPDATED


def _require_clean(comp: ComponentConfig, dest: Path, doing: str) -> None:
    if git(["status", "--porcelain", "--untracked-files=no"], dest).strip():
        raise PibError(
            f"component {comp.name!r}: cannot {doing}: {dest} has uncommitted changes",
            reason=Reason.SOURCE,
            where=comp.where,
            hint="commit or stash them first; pib never discards your work",
        )


def source_state(checkout: Path, index: Path | None) -> SourceState:
    """The content of the working tree (tracked + untracked, not ignored) as a git tree id.

    `index` is a private index file kept between runs so unchanged files are not re-hashed.
    """
    if not _is_repo(checkout):
        raise PibError(
            f"{checkout} is not a git checkout",
            reason=Reason.SOURCE,
            hint="run pib configure to clone it",
        )
    if index is None:
        index = checkout / ".git" / "pib-index"
        if not (checkout / ".git").is_dir():
            index = Path(git(["rev-parse", "--absolute-git-dir"], checkout).strip()) / "pib-index"
    index.parent.mkdir(parents=True, exist_ok=True)
    env = {"GIT_INDEX_FILE": str(index)}
    # Under this flock no other pib uses the private index: a git lock file beside it was left by a
    # killed git, and an index that git cannot read (truncated by a kill) is only a cache, rebuilt.
    with held(index.with_name(index.name + ".pib-lock")):
        index.with_name(index.name + ".lock").unlink(missing_ok=True)
        _seed_index(checkout, index)
        try:
            git(["add", "--all", "--", "."], checkout, env=env)
        except PibError:
            for stale in (index, index.with_name(index.name + ".tree")):
                stale.unlink(missing_ok=True)
            _seed_index(checkout, index)
            git(["add", "--all", "--", "."], checkout, env=env)
        tree = _tree_of_index(checkout, index, env)
    branch, head = _read_head(checkout / ".git")
    if head is None:
        out = git(["rev-parse", "--verify", "--quiet", "HEAD"], checkout, check=False).split()
        head = out[0] if out else None
    if head is None:
        return SourceState(tree, None, None, branch)
    return SourceState(tree, head, _head_tree(checkout, head, index), branch)


def _seed_index(checkout: Path, index: Path) -> None:
    real = checkout / ".git" / "index"
    if not index.exists() and real.is_file():
        from shutil import copyfile

        copyfile(real, index)  # seeds stat data: the first hash is cheap too


def _tree_of_index(checkout: Path, index: Path, env: Mapping[str, str]) -> str:
    """`git write-tree` of the private index, skipped when the index is byte-for-byte the last one.

    An index file ends with the SHA-1 of its content, and the tree is a
    function of that content: equal checksums, equal trees.
    """
    memo = index.with_name(index.name + ".tree")
    checksum = _index_checksum(index)
    try:
        last_sum, _, last_tree = memo.read_text(encoding="ascii").partition(" ")
        if checksum and last_sum == checksum and last_tree.strip():
            return last_tree.strip()
    except OSError:
        pass
    tree = git(["write-tree"], checkout, env=env).strip()
    # write-tree may store its cache in the index: remember the checksum it leaves behind.
    checksum = _index_checksum(index)
    if checksum:
        write_atomic(memo, f"{checksum} {tree}\n")
    return tree


def _index_checksum(index: Path) -> str:
    try:
        with open(index, "rb") as fh:
            fh.seek(-20, os.SEEK_END)
            return fh.read(20).hex()
    except OSError:
        return ""


def _read_head(gitdir: Path) -> tuple[str | None, str | None]:
    """Branch and commit of HEAD read from the files, saving a git process on the no-op path."""
    try:
        head = (gitdir / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None, None  # a linked worktree (.git is a file): let git answer
    if not head.startswith("ref: "):
        return None, head if re.fullmatch(r"[0-9a-f]{40,64}", head) else None
    ref = head[5:]
    branch = ref.removeprefix("refs/heads/")
    try:
        return branch, (gitdir / ref).read_text(encoding="utf-8").strip()
    except OSError:
        pass
    try:
        for line in (gitdir / "packed-refs").read_text(encoding="utf-8").splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return branch, sha
    except OSError:
        pass
    return branch, None


def _head_tree(checkout: Path, commit: str, index: Path) -> str:
    """The tree of a commit never changes, so it is remembered beside the private index."""
    memo = index.with_name(index.name + ".trees")
    kept: list[str] = []
    try:
        for line in memo.read_text(encoding="utf-8").splitlines():
            c, _, t = line.partition(" ")
            if not (_OBJECT_ID.fullmatch(c) and _OBJECT_ID.fullmatch(t)):
                continue  # a torn line (an older pib appended in place): ignored, not believed
            if c == commit:
                return t
            kept.append(line)
    except (OSError, UnicodeDecodeError):
        pass
    tree = git(["rev-parse", f"{commit}^{{tree}}"], checkout).strip()
    # Written whole and renamed: a kill leaves the old memo or the new one, never a torn line.
    write_atomic(memo, "".join(f"{line}\n" for line in [*kept[-999:], f"{commit} {tree}"]))
    return tree


def clean_checkout(comp: ComponentConfig, log: Log | None = None) -> None:
    """`git clean -xdf`: remove untracked and ignored files (build products) from the checkout."""
    if _is_repo(comp.checkout):
        git(["clean", "-xdfq"], comp.checkout, log=log)
