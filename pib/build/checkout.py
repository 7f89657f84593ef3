"""Component checkouts: clone, branch, update, and the content of the working tree.

The content hash of a working tree is a git tree id computed with a private
index (`git update-index` + `git write-tree`): tracked edits and untracked
files not ignored by the tree's own .gitignore files count, a bare `touch`
does not, and the user's own index is never touched.

The content, never the machine, decides the key: every git command that looks
at content runs without the system and global git configuration and with the
settings that change what git reads from a file pinned (`HERMETIC`), and
ignore rules come only from .gitignore files in the tree (not
`.git/info/exclude` or `core.excludesFile`, which a fresh clone does not have).
The private index is reconciled with the current path set on every run, so a
file once seen and later ignored leaves no trace in the key.

A no-op build need not start git at all: one `find` over every
checkout gives a digest of the stat data of each tree, and a tree whose digest
equals the one recorded beside its private index has the tree recorded there.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from pib.config.types import ComponentConfig
from pib.errors import Location, PibError, Reason, local_error
from pib.flock import held
from pib.fsutil import remove_tree, write_atomic
from pib.parallel import parallel_map
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


# What a key or a status may depend on: the repository, never the user's or the machine's git configuration.
HERMETIC_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_ATTR_NOSYSTEM": "1"}
HERMETIC = (
    "-c", "core.excludesFile=/dev/null", "-c", "core.attributesFile=/dev/null", "-c", "core.autocrlf=false",
    "-c", "core.safecrlf=false", "-c", "core.fileMode=true", "-c", "core.symlinks=true",
    "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false", "-c", "core.quotePath=false",
)


def git(args: list[str], cwd: Path, *, log: Log | None = None, env: Mapping[str, str] | None = None,
        check: bool = True, timeout: float | None = 600, hermetic: bool = False, input: bytes | None = None) -> str:
    """Run git; hermetic: without the user's and the machine's configuration (keys and status)."""
    argv = ["git", *HERMETIC, *args] if hermetic else ["git", *args]
    full_env = git_env({**(env or {}), **HERMETIC_ENV} if hermetic else env)
    res = run(argv, cwd=cwd, env=full_env, log=log, capture=True, check=check, input=input,
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


def ensure_checkout(comp: ComponentConfig, *, update: bool = False, log: Log | None = None,
                    sources: Mapping[str, Location] | None = None) -> CheckoutReport:
    """Clone a missing checkout, put it on its configured branch or ref; with update, fast-forward it.

    `sources` (the configuration's key -> file:line map) lets errors point at the line to fix.
    """
    dest = comp.checkout
    if comp.path is not None:
        if not _is_repo(dest):
            raise PibError(
                f"component {comp.name!r}: {dest} is not a git checkout",
                reason=Reason.SOURCE,
                where=_where(comp, sources, "path"),
                hint=f"run git init in {dest} and commit, or use source = ... to clone one",
            )
        st = source_state(dest, None)
        return CheckoutReport(comp.name, CheckoutAction.IN_PLACE, st.branch, st.head, st.dirty)
    assert comp.source is not None
    action = CheckoutAction.UNCHANGED
    note = ""
    target = comp.ref or comp.branch
    if not _is_repo(dest):
        if dest.exists() and any(dest.iterdir()):
            raise PibError(
                f"component {comp.name!r}: {dest} exists and is not a git checkout",
                reason=Reason.SOURCE,
                where=comp.where,
                hint=f"move it away, or run: pib clobber {comp.name}",
            )
        _check_source(comp, sources)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.cloning")
        remove_tree(tmp)
        args = ["clone", "--quiet"]
        if comp.branch and not _PR.match(comp.branch):
            args += ["--branch", comp.branch]
        # Clone and check out beside the destination: a failure (or a kill) leaves nothing that blocks a retry.
        try:
            with _explained(comp, sources, f"cannot clone {comp.source}"):
                run(["git", *args, comp.source, str(tmp)], env=git_env(), log=log, reason=Reason.SOURCE,
                    what=f"git clone {comp.source}", capture=True, timeout=3600)
            if target:
                with _explained(comp, sources, f"cannot check out {target}"):
                    _checkout(comp, tmp, target, update=False, log=log)
        except BaseException:
            remove_tree(tmp)
            raise
        tmp.rename(dest)
        action = CheckoutAction.CLONED
    else:
        origin = git(["config", "--get", "remote.origin.url"], dest, check=False, hermetic=True).strip()
        if origin != comp.source:
            fix = f"git -C {dest} remote set-url origin {comp.source}"
            if not update:
                note = (f"origin is {origin or '(none)'} but pib.toml says {comp.source}; "
                        f"run pib configure --update to repoint it (or: {fix})")
            else:
                _check_source(comp, sources)
                if origin:
                    git(["remote", "set-url", "origin", comp.source], dest, log=log)  # keeps branch tracking
                else:
                    git(["remote", "add", "origin", comp.source], dest, log=log)
                note = f"origin repointed from {origin or '(none)'} to {comp.source}"
                action = CheckoutAction.UPDATED
        with _explained(comp, sources, "cannot update the checkout"):
            if target:
                action = _checkout(comp, dest, target, update=update, log=log) or action
            elif update:
                action = _fast_forward(comp, dest, log) or action
    st = source_state(dest, None)
    return CheckoutReport(comp.name, action, st.branch, st.head, st.dirty, note)


def _where(comp: ComponentConfig, sources: Mapping[str, Location] | None, key: str) -> Location:
    return (sources or {}).get(f"components.{comp.name}.{key}") or comp.where


def _check_source(comp: ComponentConfig, sources: Mapping[str, Location] | None) -> None:
    """A source that is a path on this machine must exist before git is asked to clone it."""
    assert comp.source is not None
    src = comp.source.removeprefix("file://")
    if src.startswith("/") and not Path(src).exists():
        raise PibError(
            f"component {comp.name!r}: source {comp.source} does not exist",
            reason=Reason.SOURCE,
            where=_where(comp, sources, "source"),
            hint="fix source in pib.toml (a git URL, or the path of a repository; relative paths are "
                 "relative to the workspace)",
        )


@contextlib.contextmanager
def _explained(comp: ComponentConfig, sources: Mapping[str, Location] | None, doing: str) -> Iterator[None]:
    """A raw git failure becomes an error naming the component, the pib.toml line and what to check."""
    try:
        yield
    except PibError as exc:
        if exc.where is not None:
            raise
        said = [ln.strip() for ln in (exc.detail or "").splitlines()
                if ln.strip() and not re.match(r"^\[\d\d:\d\d:\d\d\] ", ln)]  # pib's own log lines
        why = said[-1].removeprefix("fatal: ") if said else exc.message
        key = "branch" if comp.branch and "branch" in why.lower() else "ref" if comp.ref else "source"
        raise PibError(
            f"component {comp.name!r}: {doing}: {why}",
            reason=Reason.SOURCE,
            where=_where(comp, sources, key),
            hint=f"check {key} of [components.{comp.name}] in pib.toml; then run pib configure again",
            detail=exc.detail,
        ) from exc


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
    if git(["status", "--porcelain", "--untracked-files=no"], dest, hermetic=True).strip():
        raise PibError(
            f"component {comp.name!r}: cannot {doing}: {dest} has uncommitted changes",
            reason=Reason.SOURCE,
            where=comp.where,
            hint="commit or stash them first; pib never discards your work",
        )


# A change within this many seconds of the walk could share its timestamp tick with an earlier
# one and go unseen by the next walk, so such a tree is not remembered (git's "racily clean").
_RACY_SECONDS = 2
_ROOT = "\0" "0\t"  # a record of depth 0: where a checkout's records start


def stat_digests(checkouts: Sequence[Path], *, batches: int = 2) -> list[str | None]:
    """A digest of the lstat data of every entry under each checkout (.git aside), from one
    `find` per batch instead of one git process per checkout.

    Equal digests mean nothing was added, removed, renamed, written or chmod-ed:
    each of these moves a ctime, which (unlike an mtime) cannot be set back. None where the walk
    cannot vouch for the tree: an entry changed within the last seconds, a
    nested repository (its HEAD is content pib does not walk), a checkout whose
    .git is a file, or a `find` that failed.
    """
    out: list[str | None] = [None] * len(checkouts)
    if not checkouts:
        return out
    since = int(time.time()) - _RACY_SECONDS
    # Ignore rules, attributes (filters) and settings outside the walk decide what `git add -A` sees.
    shared = _stat_line(*_global_git_files())
    size = -(-len(checkouts) // batches)
    chunks = [list(range(i, min(i + size, len(checkouts)))) for i in range(0, len(checkouts), size)]

    def walk(idx: list[int]) -> None:
        argv = ["find", "-H", *(str(checkouts[i]) for i in idx),
                # find expands the escapes; records end with NUL, which no name contains.
                "-name", ".git", "-printf", "G\\t%P\\0", "-prune",
                "-o", "-printf", "%d\\t%P\\t%i\\t%s\\t%C@\\0",
                "(", "-newerct", f"@{since}", "-printf", "R\\0", "-o", "-true", ")"]
        res = run(argv, env=minimal_env(), capture=True, check=False, timeout=600)
        if res.returncode != 0:
            return
        text = res.stdout
        # Each checkout's records start with its own (depth 0) record; string operations, not a
        # loop over every record, keep this cheap for a thousand checkouts.
        starts = [0] if text.startswith("0\t") else []
        at = text.find(_ROOT)
        while at >= 0:
            starts.append(at)
            at = text.find(_ROOT, at + 1)
        if len(starts) != len(idx):
            return
        for k, i in enumerate(idx):
            end = starts[k + 1] + 1 if k + 1 < len(idx) else len(text)
            seg = "\0" + text[starts[k] + (k > 0):end]  # NUL before and after every record
            if "\0R\0" in seg or seg.count("\0G\t") != 1 or "\0G\t.git\0" not in seg:
                continue
            git_dir = checkouts[i] / ".git"
            if not git_dir.is_dir():
                continue
            h = hashlib.sha256(f"{checkouts[i]}\n{shared}".encode())
            h.update(_stat_line(git_dir / "config", git_dir / "info" / "exclude",
                                git_dir / "info" / "attributes").encode())
            h.update(seg.encode())
            out[i] = h.hexdigest()

    parallel_map(walk, chunks, workers=batches)
    return out


def _global_git_files() -> list[Path]:
    home = Path(os.environ.get("HOME", "/nonexistent"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "git"
    files = [home / ".gitconfig", xdg / "config", xdg / "ignore", xdg / "attributes", Path("/etc/gitconfig")]
    files += [Path(os.environ[k]) for k in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM") if os.environ.get(k)]
    return files


def _stat_line(*paths: Path) -> str:
    parts = []
    for p in paths:
        try:
            st = os.stat(p)
            parts.append(f"{p}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}")
        except OSError:
            parts.append(f"{p}:-")
    return "\n".join(parts) + "\n"


def source_states(checkouts: Sequence[tuple[Path, Path]]) -> list[SourceState]:
    """`source_state` of each (checkout, private index), with one stat walk for all of them.

    Trees the walk vouches for are answered here in turn (threads would only fight over the
    interpreter); the others run git on a few threads.
    """
    digests = stat_digests([c for c, _ in checkouts])
    out: list[SourceState | None] = [None] * len(checkouts)
    slow: list[int] = []
    for i, ((c, index), d) in enumerate(zip(checkouts, digests, strict=True)):
        if _remembered_tree(index.with_name(index.name + ".stat"), d) is None:
            slow.append(i)
        else:
            out[i] = source_state(c, index, d)

    def one(i: int) -> None:
        out[i] = source_state(*checkouts[i], digests[i])

    parallel_map(one, slow)
    return [s for s in out if s is not None]


def source_state(checkout: Path, index: Path | None, stat_digest: str | None = None) -> SourceState:
    """The content of the working tree: see _source_state. The private index and its memos live under
    the workspace's state directory: a full or read-only one is the error a user can act on."""
    try:
        return _source_state(checkout, index, stat_digest)
    except OSError as exc:
        raise local_error(index if index is not None else checkout, exc,
                          f"keep the private index of {checkout} at") from None


def _source_state(checkout: Path, index: Path | None, stat_digest: str | None = None) -> SourceState:
    """The content of the working tree (tracked + untracked, not ignored) as a git tree id.

    `index` is a private index file kept between runs so unchanged files are not re-hashed.
    `stat_digest` is this checkout's entry from `stat_digests`, taken before this call: when
    it equals the one recorded with the last tree, that tree is the answer and git is not run.
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
            index = Path(git(["rev-parse", "--absolute-git-dir"], checkout, hermetic=True).strip()) / "pib-index"
    memo = index.with_name(index.name + ".stat")
    tree = _remembered_tree(memo, stat_digest)
    if tree is None:
        index.parent.mkdir(parents=True, exist_ok=True)
        env = {"GIT_INDEX_FILE": str(index)}
        # Under this flock no other pib uses the private index: a git lock file beside it was left by a
        # killed git, and an index that git cannot read (truncated by a kill) is only a cache, rebuilt.
        with held(index.with_name(index.name + ".pib-lock")):
            index.with_name(index.name + ".lock").unlink(missing_ok=True)
            _seed_index(checkout, index)
            try:
                _sync_index(checkout, env)
            except PibError:
                for stale in (index, index.with_name(index.name + ".tree")):
                    stale.unlink(missing_ok=True)
                _seed_index(checkout, index)
                _sync_index(checkout, env)
            tree = _tree_of_index(checkout, index, env)
        if stat_digest is not None:
            write_atomic(memo, f"{stat_digest} {tree}\n")
    branch, head = _read_head(checkout / ".git")
    if head is None:
        out = git(["rev-parse", "--verify", "--quiet", "HEAD"], checkout, check=False, hermetic=True).split()
        head = out[0] if out else None
    if head is None:
        return SourceState(tree, None, None, branch)
    return SourceState(tree, head, _head_tree(checkout, head, index), branch)


def content_paths(checkout: Path) -> list[str]:
    """The paths that make up the content: those in the user's index (tracked) and the untracked files
    that no .gitignore of the tree ignores. Nested repositories that are not submodules are left out."""
    out = git(["ls-files", "-z", "--cached", "--others", "--exclude-per-directory=.gitignore"], checkout,
              hermetic=True)
    return sorted({p for p in out.split("\0") if p and not p.endswith("/")})


def _sync_index(checkout: Path, env: Mapping[str, str]) -> None:
    """Make the private index hold exactly content_paths(), with the working tree's bytes.

    Entries whose stat data matches are not re-hashed (update-index skips them).
    """
    want = content_paths(checkout)
    have = [p for p in git(["ls-files", "-z"], checkout, env=env, hermetic=True).split("\0") if p]
    extra = sorted(set(have) - set(want))
    if extra:
        git(["update-index", "--force-remove", "-z", "--stdin"], checkout, env=env, hermetic=True,
            input="\0".join(extra).encode() + b"\0")
    if want:
        git(["update-index", "--add", "--remove", "-z", "--stdin"], checkout, env=env, hermetic=True,
            input="\0".join(want).encode() + b"\0")


def untracked_files(checkout: Path) -> list[str]:
    """Untracked files no .gitignore of the tree ignores: work a user has not committed yet."""
    out = git(["ls-files", "-z", "--others", "--exclude-per-directory=.gitignore"], checkout, hermetic=True)
    return sorted(p for p in out.split("\0") if p)


def changed_files(checkout: Path, old_tree: str, new_tree: str) -> list[str]:
    """Paths that differ between two content trees (empty when either is no longer known)."""
    res = run(["git", *HERMETIC, "diff-tree", "-r", "-z", "--name-only", "--no-renames", old_tree, new_tree],
              cwd=checkout, env=git_env(HERMETIC_ENV), capture=True, check=False, reason=Reason.SOURCE)
    if res.returncode != 0:
        return []
    return [p for p in res.stdout.split("\0") if p]


def _seed_index(checkout: Path, index: Path) -> None:
    real = checkout / ".git" / "index"
    if not index.exists() and real.is_file():
        from shutil import copyfile

        copyfile(real, index)  # seeds stat data: the first hash is cheap too


def _remembered_tree(memo: Path, stat_digest: str | None) -> str | None:
    if stat_digest is None:
        return None
    try:
        digest, _, tree = memo.read_text(encoding="ascii").partition(" ")
    except (OSError, UnicodeDecodeError):  # a memo is only a cache: damaged, it is not believed
        return None
    return tree.strip() if digest == stat_digest and tree.strip() else None


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
    except (OSError, UnicodeDecodeError):
        pass
    tree = git(["write-tree"], checkout, env=env, hermetic=True).strip()
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
    tree = git(["rev-parse", f"{commit}^{{tree}}"], checkout, hermetic=True).strip()
    # Written whole and renamed: a kill leaves the old memo or the new one, never a torn line.
    write_atomic(memo, "".join(f"{line}\n" for line in [*kept[-999:], f"{commit} {tree}"]))
    return tree


def clean_checkout(comp: ComponentConfig, log: Log | None = None) -> None:
    """`git clean -xdf`: remove untracked and ignored files (build products) from the checkout."""
    if _is_repo(comp.checkout):
        git(["clean", "-xdfq"], comp.checkout, log=log)
