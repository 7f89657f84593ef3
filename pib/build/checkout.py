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

A no-op build need not start git at all: one `find` over every checkout
prints only the entries whose ctime is later than the last walk, and a
checkout with none has the tree recorded then (`source_states`).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import math
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from pib.config.types import ComponentConfig
from pib.errors import Location, PibError, Reason, local_error
from pib.flock import held
from pib.fsutil import remove_tree, writable_dir, write_atomic
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
    # A repository's own config too: with ignorecase a file differing from a tracked one in case only is
    # not content; with a lax stat check or a skipped index hash an edit can go unseen.
    "-c", "core.ignorecase=false", "-c", "core.checkStat=default", "-c", "core.trustctime=true",
    "-c", "index.skipHash=false",
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
        try:
            writable_dir(dest.parent)  # a read-only projects directory is the workspace's problem, not the source's
        except OSError as exc:
            raise local_error(dest.parent, exc, f"check out {comp.name} in") from None
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


# The walk believes only ctimes at least this many seconds older than its start: a change that close
# to a walk may carry an earlier timestamp (coarse clock ticks), git's "racily clean" entries.
_RACY_SECONDS = 2
# File systems whose ctimes come from this machine's clock. Elsewhere (NFS, FUSE) a server stamps
# them, and a change there could look older than the last walk: such checkouts always run git.
_LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "bcachefs",
                       "ramfs", "jfs", "nilfs2", "reiserfs"})
_WALK_FORMAT = 1
_MEMO_LIMIT = 64 << 20  # a walk memo is a cache: a larger one is ignored, not read


class _Known(NamedTuple):
    fingerprint: str  # what decides the tree besides the walked entries (_fingerprint)
    tree: str
    head: str | None
    head_tree: str | None
    since: float  # an entry whose ctime is later than this changed after `tree` was taken


class _Memo(NamedTuple):
    started: float  # the start of the last walk: a clock set back since then voids the memo
    shared: str  # git's files outside every checkout (global configuration, ignore and attribute files)
    known: dict[str, _Known]  # checkout -> what it held


def source_states(checkouts: Sequence[tuple[Path, Path]], memo: Path | None = None) -> list[SourceState]:
    """`source_state` of each (checkout, private index).

    With `memo` (a file of pib's own), one `find` per batch of checkouts prints only the entries
    whose ctime is later than the last walk's start (less the racy margin), and a checkout with
    none has the tree recorded then, without a git process. A ctime cannot be set back: a write,
    chmod, rename, link or truncation moves the entry's, and a creation or deletion moves its
    directory's, so "nothing newer" means "nothing changed". What the walk cannot see decides
    too: the user's index (which paths are tracked), .git/config and info files, git's global
    files, mounts inside the checkout, the checkout's own identity; all are in the fingerprint.
    A nested repository (its HEAD is content the walk does not read), a .git that is a file, or a
    file system stamped by another machine's clock is never vouched for.
    """
    started = time.time()
    shared = _stat_line(*_global_git_files())
    last = _load_memo(memo, started, shared) if memo is not None else None
    # Entries of checkouts outside this plan stay as they are, each with its own `since`.
    known = dict(last.known) if last is not None else {}
    paths = [c for c, _ in checkouts]
    had = [known.get(str(c)) for c in paths]
    walked: list[float | None] = []
    prints: list[str | None] = []
    heads: list[tuple[str | None, str | None]] = []

    def task(k: int) -> None:
        if k == 0:
            walked.extend(_walk(paths, min((h.since for h in had if h is not None), default=started)))
        else:  # while find runs: what the walk does not see (compared by equality, so the order is free)
            mounts = _mounts()
            reals: dict[str, str] = {}
            prints.extend(_fingerprint(c, mounts, reals) for c in paths)
            heads.extend(_read_head(c / ".git") for c in paths)

    parallel_map(task, [0, 1], workers=2)
    out: list[SourceState | None] = [None] * len(checkouts)
    slow: list[int] = []
    for i, ((c, index), h, newest, fp) in enumerate(zip(checkouts, had, walked, prints, strict=True)):
        known.pop(str(c), None)
        if h is None or fp is None or h.fingerprint != fp or newest is None or newest > h.since:
            slow.append(i)
            continue
        st = _with_head(c, index, h.tree, h.head, h.head_tree, heads[i])
        out[i] = st
        # Nothing changed between h.since and this walk's visit: a change from now on is later than this.
        known[str(c)] = _Known(fp, h.tree, st.head, st.head_tree, started - _RACY_SECONDS)

    def one(i: int) -> None:
        out[i] = source_state(*checkouts[i])

    parallel_map(one, slow)
    if memo is None:
        return [s for s in out if s is not None]
    for i in slow:
        got, fp = out[i], prints[i]
        if got is not None and fp is not None:
            # git read the tree after `started`: a change since then has a later ctime.
            known[str(paths[i])] = _Known(fp, got.tree, got.head, got.head_tree, started - _RACY_SECONDS)
    data = {"format": _WALK_FORMAT, "started": started, "shared": shared,
            "known": {k: list(v) for k, v in known.items()}}
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(memo, json.dumps(data, separators=(",", ":")))
    return [s for s in out if s is not None]


def _load_memo(path: Path, now: float, shared: str) -> _Memo | None:
    """The last walk's memo; None when it is missing, unreadable, of another format, or not valid now."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MEMO_LIMIT + 1)
        if len(raw) > _MEMO_LIMIT:
            return None
        data = json.loads(raw)
        started = float(data["started"])
        if data["format"] != _WALK_FORMAT or data["shared"] != shared or not started <= now:
            return None
        known = {}
        for k, v in data["known"].items():
            fp, tree, head, head_tree, since = v
            if not (isinstance(k, str) and isinstance(fp, str) and isinstance(tree, str) and _OBJECT_ID.fullmatch(tree)
                    and (head is None or _OBJECT_ID.fullmatch(head))
                    and (head_tree is None or _OBJECT_ID.fullmatch(head_tree))
                    and isinstance(since, float) and since <= started):
                return None
            known[k] = _Known(fp, tree, head, head_tree, since)
        return _Memo(started, shared, known)
    except (OSError, ValueError, TypeError, KeyError, RecursionError, AttributeError):
        return None  # only a cache: every tree is taken again


def _walk(checkouts: Sequence[Path], since: float, *, batches: int = 2) -> list[float | None]:
    """For each checkout, the latest ctime later than `since` of its entries (.git aside), or `since`
    when none is later; None when the walk cannot vouch for it (a nested repository, no .git
    directory, a `find` that failed)."""
    out: list[float | None] = [None] * len(checkouts)
    if not checkouts:
        return out
    where: dict[str, list[int]] = {}
    for i, c in enumerate(checkouts):
        where.setdefault(str(c), []).append(i)
    size = -(-len(checkouts) // batches)
    chunks = [checkouts[i:i + size] for i in range(0, len(checkouts), size)]
    threshold = f"@{math.floor(since)}"  # whole seconds, rounded down: the test errs towards "changed"

    def walk(chunk: Sequence[Path]) -> None:
        # Records of three NUL-ended fields (no name contains NUL): a .git, or an entry changed since.
        argv = ["find", "-H", *(str(c) for c in chunk),
                "-name", ".git", "-printf", "G\\0%H\\0%P\\0", "-prune",
                "-o", "-newerct", threshold, "-printf", "C\\0%H\\0%C@\\0"]
        res = run(argv, env=minimal_env(), capture=True, check=False, timeout=600)
        if res.returncode != 0:
            return
        fields = res.stdout.split("\0")
        gits: dict[str, list[str]] = {}
        newest: dict[str, float] = {}
        for k in range(0, len(fields) - 2, 3):
            kind, start, value = fields[k:k + 3]
            if kind == "G":
                gits.setdefault(start, []).append(value)
            else:
                try:
                    ctime = float(value)
                except ValueError:
                    ctime = math.inf
                newest[start] = max(newest.get(start, since), ctime)
        for c in chunk:
            s = str(c)
            if gits.get(s) != [".git"] or not (c / ".git").is_dir():
                continue
            for i in where[s]:
                out[i] = newest.get(s, since)

    parallel_map(walk, chunks, workers=batches)
    return out


def _mounts() -> list[tuple[str, str]] | None:
    """(mount point, file system type) of every mount this process sees; None without /proc."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split(" ")
        if len(fields) > 4 and right:
            # Octal escapes (\040 for a space) as the kernel writes them.
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            out.append((point, right.split(" ")[0]))
    return out


def _fingerprint(checkout: Path, mounts: list[tuple[str, str]] | None, reals: dict[str, str]) -> str | None:
    """What decides a checkout's tree besides the entries the walk looks at; None when the walk's
    verdict cannot be believed there (no mount table, a file system not stamped by this clock).

    `reals`: real paths of the directories holding checkouts, shared between calls (siblings
    share a parent, so resolving it once saves a lstat per path component per checkout).
    """
    if mounts is None:
        return None
    path = str(checkout)
    try:
        st = os.stat(path)
        if os.path.islink(path):
            real = os.path.realpath(path)
        else:
            parent, name = os.path.split(path)
            if parent not in reals:
                reals[parent] = os.path.realpath(parent)
            real = os.path.join(reals[parent], name)
    except OSError:
        return None
    fs, longest, inside = "", -1, []
    for point, kind in mounts:
        if real == point or real.startswith(point.rstrip("/") + "/"):
            if len(point) > longest:
                fs, longest = kind, len(point)
        elif point.startswith(real + "/"):
            inside.append(f"{point} {kind}")  # a mount inside the checkout changes what git reads
    if fs not in _LOCAL_FS:
        return None
    # The user's index says which paths are tracked (content_paths); the others are git's own settings.
    files = [f"{path}/.git/{name}" for name in ("index", "config", "info/exclude", "info/attributes")]
    text = "\n".join([f"{real} {st.st_dev}:{st.st_ino} {fs}", *sorted(inside), _stat_line(*files)])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _global_git_files() -> list[Path]:
    home = Path(os.environ.get("HOME", "/nonexistent"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "git"
    files = [home / ".gitconfig", xdg / "config", xdg / "ignore", xdg / "attributes", Path("/etc/gitconfig")]
    files += [Path(os.environ[k]) for k in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM") if os.environ.get(k)]
    return files


def _stat_line(*paths: Path | str) -> str:
    parts = []
    for p in paths:
        try:
            st = os.stat(p)
            parts.append(f"{p}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}")
        except OSError:
            parts.append(f"{p}:-")
    return "\n".join(parts) + "\n"


def source_state(checkout: Path, index: Path | None) -> SourceState:
    """The content of the working tree: see _source_state. The private index and its memos live under
    the workspace's state directory: a full or read-only one is the error a user can act on."""
    try:
        return _source_state(checkout, index)
    except OSError as exc:
        raise local_error(index if index is not None else checkout, exc,
                          f"keep the private index of {checkout} at") from None


def _source_state(checkout: Path, index: Path | None) -> SourceState:
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
            index = Path(git(["rev-parse", "--absolute-git-dir"], checkout, hermetic=True).strip()) / "pib-index"
    index.parent.mkdir(parents=True, exist_ok=True)
    env = {"GIT_INDEX_FILE": str(index)}
    # Under this flock no other pib uses the private index: a git lock file beside it was left by a
    # killed git, and an index that git cannot read (truncated by a kill) is only a cache, rebuilt.
    with held(index.with_name(index.name + ".pib-lock")):
        index.with_name(index.name + ".lock").unlink(missing_ok=True)
        try:
            off = _sync_index(checkout, env, fresh=_seed_index(checkout, index))
        except PibError:
            for stale in (index, index.with_name(index.name + ".tree")):
                stale.unlink(missing_ok=True)
            off = _sync_index(checkout, env, fresh=_seed_index(checkout, index))
        tree = _tree_of_index(checkout, index, env, off)
    return _with_head(checkout, index, tree)


def _with_head(checkout: Path, index: Path, tree: str, known_head: str | None = None,
               known_head_tree: str | None = None, read: tuple[str | None, str | None] | None = None) -> SourceState:
    """`tree` with the checkout's HEAD, its branch and the HEAD commit's tree (remembered for `known_head`).

    `read`: branch and HEAD as _read_head gave them, when the caller read them already.
    """
    branch, head = read if read is not None else _read_head(checkout / ".git")
    if head is None:
        out = git(["rev-parse", "--verify", "--quiet", "HEAD"], checkout, check=False, hermetic=True).split()
        head = out[0] if out else None
    if head is None:
        return SourceState(tree, None, None, branch)
    if head == known_head and known_head_tree is not None:
        return SourceState(tree, head, known_head_tree, branch)
    return SourceState(tree, head, _head_tree(checkout, head, index), branch)


def content_paths(checkout: Path) -> list[str]:
    """The paths that make up the content: those in the user's index (tracked) and the untracked files
    that no .gitignore of the tree ignores. Nested repositories that are not submodules are left out."""
    # A .gitattributes file changes what git makes of others' bytes even when a .gitignore ignores it:
    # it is content then too (one in an ignored directory applies only to what is ignored with it).
    out = git(["ls-files", "-z", "--cached", "--others", "--exclude-per-directory=.gitignore",
               "--exclude=!.gitattributes"], checkout, hermetic=True)
    return sorted({p for p in out.split("\0") if p and not p.endswith("/")})


def _sync_index(checkout: Path, env: Mapping[str, str], *, fresh: bool = False) -> list[str]:
    """Make the private index hold exactly content_paths(), with the working tree's bytes.

    Entries whose stat data matches are not re-hashed (update-index skips them). `fresh`: the private
    index is the user's index just copied, or none; its paths are then the tracked ones, all wanted, so
    there is nothing to remove and no need to list them (one git process less on a first plan).
    Returns the options that keep the repository's filter drivers from running (for write-tree).
    """
    want = content_paths(checkout)
    converted, drivers = _conversions(checkout, env, want) if _has_attributes(checkout, want) else ([], set())
    # Writing an index hashes its racily clean entries again, through their filters: every git command
    # here that writes one gets the drivers switched off.
    off = _no_drivers(drivers)
    have = [] if fresh else [p for p in git(["ls-files", "-z"], checkout, env=env, hermetic=True).split("\0") if p]
    extra = sorted(set(have) - set(want))
    if extra:
        git([*off, "update-index", "--force-remove", "-z", "--stdin"], checkout, env=env, hermetic=True,
            input="\0".join(extra).encode() + b"\0")
    if want:
        git([*off, "update-index", "--add", "--remove", "-z", "--stdin"], checkout, env=env, hermetic=True,
            input="\0".join(want).encode() + b"\0")
        if converted:
            _raw_where_converted(checkout, env, converted, off)
    return off


# Attributes that make the blob git stores differ from the file's bytes (crlf is text's old name).
_CONVERTING = ("text", "eol", "crlf", "ident", "filter", "working-tree-encoding")


def _conversions(checkout: Path, env: Mapping[str, str], paths: Sequence[str]) -> tuple[list[str], set[str]]:
    """The paths whose attributes transform their bytes on the way into git, and the filter drivers
    the attributes name. Reading attributes runs nothing."""
    out = git(["check-attr", "-z", "--stdin", *_CONVERTING], checkout, env=env, hermetic=True,
              input="\0".join(paths).encode() + b"\0")
    fields = out.split("\0")
    converted: dict[str, None] = {}
    drivers: set[str] = set()
    for k in range(0, len(fields) - 2, 3):
        path, attr, value = fields[k:k + 3]
        if value in ("unspecified", "unset"):
            continue
        converted[path] = None
        if attr == "filter":
            drivers.add(value)
    return list(converted), drivers


def _has_attributes(checkout: Path, paths: Sequence[str]) -> bool:
    """Whether any attribute can apply to `paths`: with the user's and the system's attribute files off,
    only .gitattributes files among them and the repository's info/attributes can set one."""
    if any(p == ".gitattributes" or p.endswith("/.gitattributes") for p in paths):
        return True
    info = checkout / ".git" / "info" / "attributes"
    try:
        return not (checkout / ".git").is_dir() or os.stat(info).st_size > 0
    except FileNotFoundError:
        return False


def _no_drivers(drivers: set[str]) -> list[str]:
    """Options that make the filter drivers a repository's own .git/config defines run no command: a key
    is computed from the bytes on disk, never by a program the checkout names."""
    out = []
    for name in sorted(drivers):
        for setting in ("clean=", "smudge=", "process=", "required=false"):
            out += ["-c", f"filter.{name}.{setting}"]
    return out


def _raw_where_converted(checkout: Path, env: Mapping[str, str], converted: Sequence[str], off: list[str]) -> None:
    """Put the file's own bytes in the private index where git's conversion (line endings, $Id$, an
    encoding, a filter) stored other ones: two files that differ only in what the conversion removes
    are different inputs to a build, so they must be different content. Where the bytes are the blob
    already (the usual LF file under text=auto) the entry, and so the key, stays what it was."""
    files = []
    for rel in converted:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(checkout / rel).st_mode):  # a link or a submodule is never converted
                files.append(rel)
    if not files:
        return
    wanted = set(files)
    staged: dict[str, tuple[str, str]] = {}
    # The whole listing, not a pathspec per file: no argument list grows with the tree.
    for line in git(["ls-files", "-s", "-z"], checkout, env=env, hermetic=True).split("\0"):
        meta, _, path = line.partition("\t")
        parts = meta.split(" ")
        if path in wanted and len(parts) == 3:
            staged[path] = (parts[0], parts[1])
    differ = []
    for chunk in (files[i:i + 1000] for i in range(0, len(files), 1000)):
        # Hashed only (writing each object costs four times as much); stored below where it differs.
        raw = git(["hash-object", "--no-filters", "--", *chunk], checkout, env=env, hermetic=True).split()
        differ += [rel for rel, oid in zip(chunk, raw, strict=True) if rel in staged and oid != staged[rel][1]]
    changed = []
    for chunk in (differ[i:i + 1000] for i in range(0, len(differ), 1000)):
        raw = git(["hash-object", "-w", "--no-filters", "--", *chunk], checkout, env=env, hermetic=True).split()
        changed += [f"{staged[rel][0]} {oid}\t{rel}" for rel, oid in zip(chunk, raw, strict=True)]
    if changed:
        git([*off, "update-index", "-z", "--index-info"], checkout, env=env, hermetic=True,
            input="\0".join(changed).encode() + b"\0")


def untracked_files(checkout: Path) -> list[str]:
    """Untracked files no .gitignore of the tree ignores: work a user has not committed yet."""
    out = git(["ls-files", "-z", "--others", "--exclude-per-directory=.gitignore"], checkout, hermetic=True)
    return sorted(p for p in out.split("\0") if p)


def unkeyed_paths(checkout: Path) -> list[str]:
    """What lies in the working tree that no key covers: untracked paths a .gitignore of the tree ignores
    (a directory all of whose content is, as "DIR/") and nested repositories that are not submodules
    ("DIR/"). A local configuration file, or what an earlier build in the checkout left."""
    ignored = git(["ls-files", "-z", "--others", "--ignored", "--directory", "--exclude-per-directory=.gitignore"],
                  checkout, hermetic=True)
    others = git(["ls-files", "-z", "--others", "--exclude-per-directory=.gitignore"], checkout, hermetic=True)
    found = {p for p in ignored.split("\0") if p} | {p for p in others.split("\0") if p.endswith("/")}
    dirs = {p for p in found if p.endswith("/")}
    # git lists the content of an ignored directory beside it at times: the directory says it all
    return sorted(p for p in found if next(_prefixes(p, dirs), None) is None)


def copy_content(checkout: Path, dest: Path) -> None:
    """A copy at `dest` of exactly what the key of `checkout` covers (content_paths): what a build that
    writes into its checkout works on, so that it neither reads what no key covers (ignored files, an
    earlier build's products, nested repositories) nor changes the user's checkout. `.git` is an empty
    directory (or the copied file of a linked worktree) for the real one to be mounted on."""
    import shutil

    remove_tree(dest)
    dest.mkdir(parents=True)
    dotgit = checkout / ".git"
    if dotgit.is_dir() and not dotgit.is_symlink():
        (dest / ".git").mkdir()
    elif dotgit.is_file():
        shutil.copy2(dotgit, dest / ".git")
    made: set[Path] = {dest}
    for rel in content_paths(checkout):
        src, out = checkout / rel, dest / rel
        if out.parent not in made:
            out.parent.mkdir(parents=True, exist_ok=True)
            made.add(out.parent)
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            continue  # tracked but deleted: not content
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), out)
        elif stat.S_ISREG(st.st_mode):
            shutil.copy2(src, out, follow_symlinks=False)
        elif stat.S_ISDIR(st.st_mode):  # a submodule
            shutil.copytree(src, out, symlinks=True)


def _prefixes(path: str, dirs: set[str]) -> Iterator[str]:
    """The directories ("D/") in `dirs` above `path`."""
    cut = path.find("/")
    while 0 <= cut < len(path) - 1:
        if path[:cut + 1] in dirs:
            yield path[:cut + 1]
        cut = path.find("/", cut + 1)


def changed_files(checkout: Path, old_tree: str, new_tree: str) -> list[str]:
    """Paths that differ between two content trees (empty when either is no longer known)."""
    res = run(["git", *HERMETIC, "diff-tree", "-r", "-z", "--name-only", "--no-renames", old_tree, new_tree],
              cwd=checkout, env=git_env(HERMETIC_ENV), capture=True, check=False, reason=Reason.SOURCE)
    if res.returncode != 0:
        return []
    return [p for p in res.stdout.split("\0") if p]


def _seed_index(checkout: Path, index: Path) -> bool:
    """Copy the user's index to a missing private index; True when there was none (it is now the copy,
    or still missing when the user has no index either)."""
    if index.exists():
        return False
    real = checkout / ".git" / "index"
    if real.is_file():
        from shutil import copy2

        # Seeds stat data, so the first hash is cheap too. The copy keeps the index's mtime: git holds an
        # entry changed in the second the index was written as racily clean (it hashes the file again);
        # a copy with a later mtime would make git trust that entry's stat data.
        copy2(real, index)
    return True


def _tree_of_index(checkout: Path, index: Path, env: Mapping[str, str], off: Sequence[str] = ()) -> str:
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
    tree = git([*off, "write-tree"], checkout, env=env, hermetic=True).strip()
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
    tree = _loose_commit_tree(checkout / ".git", commit) or git(["rev-parse", f"{commit}^{{tree}}"], checkout,
                                                               hermetic=True).strip()
    # Written whole and renamed: a kill leaves the old memo or the new one, never a torn line.
    write_atomic(memo, "".join(f"{line}\n" for line in [*kept[-999:], f"{commit} {tree}"]))
    return tree


_LOOSE_LIMIT = 1 << 20  # a commit object larger than this is left to git


def _loose_commit_tree(gitdir: Path, commit: str) -> str | None:
    """The tree of `commit` from its loose object (zlib of "commit <size>\\0tree <id>\\n..."), checked
    against the commit id itself; None when it is not loose here (packed, a linked worktree) or not
    exactly what its id says, and git answers instead."""
    import zlib

    try:
        with open(gitdir / "objects" / commit[:2] / commit[2:], "rb") as fh:
            raw = fh.read(_LOOSE_LIMIT + 1)
        if len(raw) > _LOOSE_LIMIT:
            return None
        data = zlib.decompressobj().decompress(raw, 4 * _LOOSE_LIMIT)
    except (OSError, zlib.error):
        return None
    digest = hashlib.sha1(data) if len(commit) == 40 else hashlib.sha256(data)
    if digest.hexdigest() != commit:
        return None
    head, _, body = data.partition(b"\0")
    if head != b"commit %d" % len(body) or not body.startswith(b"tree "):
        return None
    tree = body[5:5 + len(commit)].decode("ascii", "replace")
    return tree if _OBJECT_ID.fullmatch(tree) and body[5 + len(commit):6 + len(commit)] == b"\n" else None


def clean_checkout(comp: ComponentConfig, log: Log | None = None) -> None:
    """`git clean -xdf`: remove untracked and ignored files (build products) from the checkout."""
    if _is_repo(comp.checkout):
        git(["clean", "-xdfq"], comp.checkout, log=log)
