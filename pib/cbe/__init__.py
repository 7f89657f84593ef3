"""Versioned build environments (CBE), installed side by side.

A CBE version is a prefix `<root>/<version>` populated by a provider from a
lock file that pins exactly what the version contains. `ensure()` checks (and
installs) the version a workspace needs; pib.build.env turns it into the
environment builds run with.

The stores a prefix tarball may come from and the keys it is checked against
are given by the caller: this package never reads the workspace's trust
settings itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pib.cbe import install as _inst
from pib.cbe.install import Status
from pib.cbe.pins import Lock, load
from pib.cbe.providers import Context
from pib.config.types import CbeSpec
from pib.errors import CbeError, Location, PibError
from pib.fsutil import write_atomic
from pib.run import Log

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pib.artifacts.signing import Signer
    from pib.cbe.providers.tarball import Published

__all__ = [
    "CbeStateError",
    "InstalledCbe",
    "InstalledVersion",
    "Status",
    "default_root",
    "ensure",
    "list_installed",
    "load_lock",
    "publish_tarball",
    "record_user",
    "remove",
    "signing_key",
    "verify_full",
]

load_lock = load


class CbeStateError(CbeError):
    """The installed version is missing, half-installed, out of date or modified."""

    def __init__(self, message: str, *, status: Status, hint: str, where: Location | None) -> None:
        super().__init__(message, hint=hint, where=where)
        self.status = status


@dataclass(frozen=True)
class InstalledCbe:
    name: str
    version: str
    root: Path
    prefix: Path
    lock_digest: str
    path: str                  # the complete PATH for builds
    env: dict[str, str]        # the variables the CBE exports
    provider: str = ""


@dataclass(frozen=True)
class InstalledVersion:
    version: str
    name: str
    provider: str
    lock_digest: str
    installed_at: str
    users: tuple[Path, ...]
    complete: bool             # False: half-installed (no valid record)
    state: str = ""            # with check=True: ok, modified, half-installed
    problems: tuple[str, ...] = ()


def default_root(name: str) -> Path:
    """`/opt/<name>` if it exists (a shared root) or /opt is writable, else a per-user directory."""
    opt = Path("/opt") / name
    if opt.is_dir() or os.access("/opt", os.W_OK):
        return opt
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pib" / "cbe" / name


def _root(spec: CbeSpec) -> Path:
    return spec.root if spec.root is not None else default_root(spec.name)


def _load_for(spec: CbeSpec) -> Lock:
    lock = load(spec.lock)
    if lock.name != spec.name or lock.version != spec.version:
        raise CbeError(
            f"the lock is for CBE {lock.name} {lock.version}, pib.toml asks for {spec.name} {spec.version}",
            where=spec.where or lock.where(),
            hint="make [cbe] name/version in pib.toml and the lock's name/version agree",
        )
    return lock


def _installed(spec: CbeSpec, lock: Lock, root: Path, record: Mapping[str, object]) -> InstalledCbe:
    prefix = _inst.prefix_of(root, lock.version)
    env: dict[str, str] = {}
    provider_env = record.get("provider_env")
    pairs = list(provider_env.items()) if isinstance(provider_env, dict) else []
    for k, v in [*pairs, *lock.env]:
        env[str(k)] = str(v).replace("${PREFIX}", str(prefix))
    path = ":".join([*(str(prefix / b) for b in lock.bin_dirs), *spec.system_path])
    return InstalledCbe(lock.name, lock.version, root, prefix, lock.digest, path, env, lock.provider)


def _problem(spec: CbeSpec, lock: Lock, state: _inst.Check, root: Path) -> CbeStateError:
    label = f"CBE {lock.name} {lock.version} at {_inst.prefix_of(root, lock.version)}"
    where = spec.where
    if state.status is Status.MISSING:
        return CbeStateError(f"{label} is not installed", where=where, status=state.status,
                        hint="run `pib configure` or `pib cbe install` to install it")
    if state.status is Status.HALF:
        return CbeStateError(f"{label} is half-installed (an interrupted install?)", where=where, status=state.status,
                        hint="run `pib cbe install` to replace it")
    first = "; ".join(state.problems[:5])
    more = f" (and {len(state.problems) - 5} more)" if len(state.problems) > 5 else ""
    if state.status is Status.OUTDATED:
        return CbeStateError(f"{label} is out of date: {first}", where=where, status=state.status,
                        hint="run `pib cbe install --update` to install the current lock")
    return CbeStateError(f"{label} was modified after install: {first}{more}", where=where, status=state.status,
                    hint="run `pib cbe install --update` to reinstall it; never edit a CBE prefix by hand")


def ensure(
    spec: CbeSpec,
    *,
    install: bool,
    update: bool = False,
    log: Log | None = None,
    stores: Sequence[object] = (),
    trusted_keys: Sequence[object] = (),
    offline: bool = False,
) -> InstalledCbe:
    """The CBE that spec names, checked against its lock (cheap check).

    install: install a missing or half-installed version (under a lock, so
    concurrent callers share one copy). update: also replace an out-of-date
    or modified one (checking every file's hash). Otherwise any problem is a CbeError with the command to
    run.
    """
    lock = _load_for(spec)
    root = _root(spec)
    prefix = _inst.prefix_of(root, lock.version)
    # An explicit update is rare and must catch every edit: hash everything.
    state = _inst.check(prefix, lock, full=update)
    if state.status is not Status.OK:
        fixable = {Status.MISSING, Status.HALF} if install else set()
        if update:
            fixable |= {Status.MISSING, Status.HALF, Status.OUTDATED, Status.MODIFIED}
        if state.status not in fixable:
            raise _problem(spec, lock, state, root)
        from pib.fetch import download_cache

        ctx = Context(root=root, log=log, stores=stores, trusted_keys=trusted_keys, downloads=download_cache(),
                      offline=offline)
        try:
            state = _inst.install(lock, root, ctx, replace=update, full=update)
        except OSError as exc:
            raise CbeError(
                f"cannot install CBE {lock.name} {lock.version} into {root}: {exc.strerror or exc}",
                where=spec.where,
                hint="install it as the owner of the CBE root, or set [cbe] root to a directory you can write",
            ) from None
        if state.status is not Status.OK:
            raise _problem(spec, lock, state, root)
    assert state.record is not None
    return _installed(spec, lock, root, state.record)


def verify_full(spec: CbeSpec) -> InstalledCbe:
    """Re-hash every file of the installed version against its install record."""
    lock = _load_for(spec)
    root = _root(spec)
    state = _inst.check(_inst.prefix_of(root, lock.version), lock, full=True)
    if state.status is not Status.OK:
        raise _problem(spec, lock, state, root)
    assert state.record is not None
    return _installed(spec, lock, root, state.record)






def _user_file(root: Path, version: str, workspace: Path) -> Path:
    ws = str(workspace.resolve())
    return root / ".users" / version / hashlib.sha256(ws.encode()).hexdigest()[:32]


def record_user(installed: InstalledCbe, workspace: Path) -> bool:
    """Note that workspace uses this version (shown by `pib cbe ls`, checked by rm).

    Bookkeeping only: returns False when the root is not writable for this
    user (a shared, read-only CBE root), which must not stop a build.
    """
    path = _user_file(installed.root, installed.version, workspace)
    try:
        # Sticky and world-writable like /tmp, so every user of a shared root
        # can register a workspace but not remove another user's.
        for d in (path.parent.parent, path.parent):
            if not d.is_dir():
                d.mkdir(exist_ok=True)
                os.chmod(d, 0o1777)
        write_atomic(path, str(workspace.resolve()) + "\n")
    except OSError:
        return False
    # A workspace uses one version at a time: it no longer holds the others.
    for other in path.parent.parent.glob(f"*/{path.name}"):
        if other != path:
            with contextlib.suppress(OSError):
                other.unlink()
    return True




def users_of(root: Path, version: str) -> tuple[Path, ...]:
    """Workspaces using version that still exist."""
    d = root / ".users" / version
    out: list[Path] = []
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.name.endswith(".tmp"):
                continue
            try:
                ws = Path(f.read_text(encoding="utf-8").strip())
            except OSError:
                continue
            if ws.is_dir():
                out.append(ws)
    return tuple(sorted(out))


def list_installed(root: Path, *, check: bool = False) -> list[InstalledVersion]:
    """Installed versions under root; `check` also runs each one's cheap check
    against the copy of the lock it was installed from."""
    out: list[InstalledVersion] = []
    if not root.is_dir():
        return out
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        rec = _inst.read_record(p)
        state: str = ""
        problems: tuple[str, ...] = ()
        if check:
            state, problems = _state_of(p, rec)
        out.append(InstalledVersion(
            version=p.name,
            name=str(rec.get("name", "")) if rec else "",
            provider=str(rec.get("provider", "")) if rec else "",
            lock_digest=str(rec.get("lock_digest", "")) if rec else "",
            installed_at=str(rec.get("installed_at", "")) if rec else "",
            users=users_of(root, p.name),
            complete=rec is not None,
            state=state,
            problems=problems,
        ))
    return out


def _state_of(prefix: Path, record: Mapping[str, object] | None) -> tuple[str, tuple[str, ...]]:
    if record is None:
        return Status.HALF.value, ()
    try:
        lock = load(prefix / _inst.RECORD_DIR / "lock.toml")
    except CbeError as exc:
        return Status.MODIFIED.value, (exc.message,)
    state = _inst.check(prefix, lock)
    return state.status.value, state.problems


def remove(root: Path, version: str, *, force: bool = False) -> None:
    users = users_of(root, version)
    if users and not force:
        raise CbeError(
            f"CBE version {version} is used by {len(users)} workspace(s): {', '.join(map(str, users))}",
            hint="switch those workspaces to another version, or pass --force",
        )
    _inst.remove(root, version)




def signing_key(path: Path | None, env_var: str | None) -> Signer:
    """The publisher's key: a pib key file, or an environment variable holding the key or its path."""
    from pib.artifacts import signing

    value = str(path) if path is not None else os.environ.get(env_var or "", "")
    if not value:
        raise CbeError("no signing key to publish with",
                       hint="pass --key FILE (`pib keygen` makes one), set [trust] signing_key, "
                            "or export the signing key variable")
    try:
        return signing.load_signer(value)
    except PibError as exc:
        raise CbeError(exc.message, hint=exc.hint) from None


def publish_tarball(
    src: Path,
    name: str,
    version: str,
    store: object,
    signer: Signer | Ed25519PrivateKey,
    *,
    bin_dirs: Sequence[str] = ("bin",),
) -> Published:
    """Pack directory src as CBE name/version into store; `.lock_text()` is the lock to commit."""
    from pib.cbe.providers import tarball

    return tarball.publish(src, name, version, store, signer, bin_dirs=bin_dirs)
