"""Installing, checking and removing CBE versions under one root.

Layout of a root (e.g. /opt/smartos-cbe):

    <root>/<version>/                 the prefix
    <root>/<version>/.pib/install.json  the install record, written last
    <root>/.locks/<version>.lock      fcntl lock held while installing/removing
    <root>/.tmp/<version>@<random>/   an install in progress (put into place whole)
    <root>/.<version>.pib-old         a replaced version on its way out
    <root>/.users/<version>/<sha>     one file per workspace using the version
    <root>/.cache/                    provider download caches

A version "looks installed" only when its install record exists, and the
record is written inside the temporary directory before the rename, so a
killed install leaves nothing that looks installed.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pib.cbe.pins import Lock
from pib.cbe.providers import Context, module
from pib.errors import CbeError, PibError
from pib.flock import held
from pib.fsutil import aside, discard_tree, remove_tree, replace_dir, sha256_file, write_atomic

RECORD_DIR = ".pib"
RECORD = f"{RECORD_DIR}/install.json"
RECORD_FORMAT = 1

# One entry per path below the prefix: kind ("f", "l", "d"), mode, size,
# mtime_ns, and sha256 (files) or target (links).
Entry = list[Any]


class Status(enum.Enum):
    OK = "ok"
    MISSING = "missing"          # no directory for this version
    HALF = "half-installed"      # a directory without a valid install record
    OUTDATED = "out-of-date"     # installed from an older lock of the same version
    MODIFIED = "modified"        # files differ from the install record


@dataclass(frozen=True)
class Check:
    status: Status
    problems: tuple[str, ...] = ()
    record: dict[str, Any] | None = None


def prefix_of(root: Path, version: str) -> Path:
    return root / version


def read_record(prefix: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((prefix / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or not isinstance(data.get("files"), dict):
        return None
    return data


def snapshot(prefix: Path, *, hashes: bool) -> dict[str, Entry]:
    """Every path below prefix (except the record) with its stat facts."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(prefix):
        rel_dir = os.path.relpath(dirpath, prefix)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != RECORD_DIR]
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ["l", 0, 0, 0, os.readlink(full)]
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ["d", mode, 0, 0, ""]
            elif stat.S_ISREG(st.st_mode):
                digest = sha256_file(Path(full))[0] if hashes else ""
                out[rel] = ["f", mode, st.st_size, st.st_mtime_ns, digest]
            else:
                out[rel] = ["?", mode, 0, 0, ""]
    return out


def _compare(recorded: dict[str, Entry], now: dict[str, Entry], *, full: bool) -> list[str]:
    problems: list[str] = []
    for rel in sorted(recorded.keys() - now.keys()):
        problems.append(f"missing: {rel}")
    for rel in sorted(now.keys() - recorded.keys()):
        problems.append(f"added: {rel}")
    for rel in sorted(recorded.keys() & now.keys()):
        r, n = recorded[rel], now[rel]
        if r[0] != n[0]:
            problems.append(f"changed type: {rel}")
        elif r[0] == "l" and r[4] != n[4]:
            problems.append(f"link retargeted: {rel} -> {n[4]}")
        elif r[0] in ("d", "f") and r[1] != n[1]:
            problems.append(f"mode changed: {rel}")
        elif r[0] == "f" and r[2] != n[2]:
            problems.append(f"size changed: {rel}")
        elif r[0] == "f" and full and r[4] != n[4]:
            problems.append(f"content changed: {rel}")
        elif r[0] == "f" and not full and r[3] != n[3]:
            problems.append(f"modified (mtime): {rel}")
    return problems


def check(prefix: Path, lock: Lock, *, full: bool = False) -> Check:
    """How the installed version compares with its lock and install record.

    The cheap check compares type, mode, size and mtime of every path with
    the record (and finds added or missing ones); `full` re-hashes contents.
    """
    if not prefix.exists():
        return Check(Status.MISSING)
    record = read_record(prefix)
    if record is None:
        return Check(Status.HALF, ("no valid install record",))
    if record.get("lock_digest") != lock.digest:
        return Check(Status.OUTDATED, (f"installed from lock {str(record.get('lock_digest'))[:12]}, "
                                       f"the lock is now {lock.digest[:12]}",), record)
    problems = _compare(record["files"], snapshot(prefix, hashes=full), full=full)
    if problems:
        return Check(Status.MODIFIED, tuple(problems), record)
    return Check(Status.OK, (), record)


@contextlib.contextmanager
def locked(root: Path, version: str) -> Iterator[None]:
    """The inter-process lock for installing or removing one version."""
    with held(root / ".locks" / f"{version}.lock"):
        yield


def _clean_stale(root: Path, version: str) -> None:
    """Leftovers of killed installs of this version (we hold its lock)."""
    tmp = root / ".tmp"
    if tmp.is_dir():
        for p in tmp.glob(f"{version}@*"):
            remove_tree(p)
    remove_tree(aside(prefix_of(root, version)))  # what a killed removal or replacement left


def _populate(lock: Lock, prefix: Path, ctx: Context) -> dict[str, str]:
    populate = module(lock.provider).populate
    env: dict[str, str] = populate(lock, prefix, ctx)
    return env


def _prebuilt_or_populate(lock: Lock, work: Path, ctx: Context) -> dict[str, str]:
    """A signed prebuilt prefix of this exact lock from the stores, else the provider's packages."""
    if lock.provider != "tarball":  # a tarball lock already is a prebuilt prefix
        from pib.cbe.providers.tarball import install_prefix

        got = install_prefix(lock, work, ctx)
        if got is not None:
            return got[0]
    return _populate(lock, work, ctx)


def _write_record(prefix: Path, lock: Lock, provider_env: dict[str, str]) -> None:
    files = snapshot(prefix, hashes=True)
    record = {
        "format": RECORD_FORMAT,
        "name": lock.name,
        "version": lock.version,
        "provider": lock.provider,
        "lock_digest": lock.digest,
        "lock_path": str(lock.path),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "provider_env": provider_env,
        "files": files,
    }
    rec_dir = prefix / RECORD_DIR
    rec_dir.mkdir(exist_ok=True)
    shutil.copyfile(lock.path, rec_dir / "lock.toml")
    write_atomic(rec_dir / "install.json", json.dumps(record, sort_keys=True, indent=0))


def install(lock: Lock, root: Path, ctx: Context, *, replace: bool, full: bool = False) -> Check:
    """Install lock's version under root unless a good copy is already there.

    Holds the version's lock; `replace` also replaces an out-of-date or
    modified install (a half-installed one is always replaced); `full`
    re-hashes the installed files when deciding.
    """
    root.mkdir(parents=True, exist_ok=True)
    prefix = prefix_of(root, lock.version)
    with locked(root, lock.version):
        _clean_stale(root, lock.version)
        state = check(prefix, lock, full=full)
        if state.status is Status.OK:
            return state
        if state.status in (Status.OUTDATED, Status.MODIFIED) and not replace:
            return state
        relocatable: bool = getattr(module(lock.provider), "RELOCATABLE", True)
        if relocatable:
            (root / ".tmp").mkdir(exist_ok=True)
            # The prefix is populated one level down so providers can keep
            # their own scratch files beside it, all removed together.
            scratch = Path(tempfile.mkdtemp(prefix=f"{lock.version}@", dir=root / ".tmp"))
            work = scratch / "prefix"
            try:
                work.mkdir(mode=0o755)
                env = _prebuilt_or_populate(lock, work, ctx)
                _write_record(work, lock, env)
                replace_dir(work, prefix)
            finally:
                remove_tree(scratch)
        else:
            # Built for this exact prefix: populate in place; the record,
            # written last, is what makes it count as installed.
            discard_tree(prefix)
            prefix.mkdir()
            try:
                env = _populate(lock, prefix, ctx)
                _write_record(prefix, lock, env)
            except PibError:
                discard_tree(prefix)
                raise
    return check(prefix, lock)


def remove(root: Path, version: str) -> None:
    prefix = prefix_of(root, version)
    if not prefix.exists():
        raise CbeError(f"CBE version {version!r} is not installed under {root}",
                       hint="`pib cbe ls` lists the installed versions")
    with locked(root, version):
        discard_tree(prefix)
        remove_tree(root / ".users" / version)
