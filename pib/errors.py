"""The one exception root of pib.

Every error a user can meet is a PibError with a machine-readable reason.
Only pib.cli catches it; the reason picks the exit code.
"""

from __future__ import annotations

import enum
import errno
from pathlib import Path
from typing import NamedTuple


class Reason(enum.Enum):
    CONFIG = "config"                # pib.toml / override file is wrong
    MANIFEST = "manifest"            # a manifest line is wrong or a file is missing
    PLATFORM = "platform"            # host platform older than the floor
    SOURCE = "source"                # git checkout/clone/fetch problems
    CBE = "cbe"                      # build environment missing, corrupt, out of date
    BUILD = "build"                  # a component build command failed
    STORE = "store"                  # artifact store unreachable or misbehaving
    VERIFY = "verify"                # signature/checksum/hostile archive
    PUBLISH = "publish"              # publishing refused (dirty tree, no key...)
    PREBUILT_MISSING = "prebuilt-missing"  # --require-prebuilt and a miss
    IMAGE = "image"                  # image assembly failed (size budget, ...)
    BOOT = "boot"                    # QEMU boot did not reach the marker
    LOCKED = "locked"                # another pib holds the workspace lock
    WORKSPACE = "workspace"          # the workspace's own files (.pib, log, output) unusable: type, room, read-only
    INTERRUPTED = "interrupted"      # SIGINT/SIGTERM
    USAGE = "usage"                  # bad command line
    INTERNAL = "internal"            # a bug in pib


EXIT_CODES: dict[Reason, int] = {
    Reason.USAGE: 2,
    Reason.CONFIG: 3,
    Reason.MANIFEST: 4,
    Reason.PLATFORM: 5,
    Reason.SOURCE: 6,
    Reason.CBE: 7,
    Reason.BUILD: 10,
    Reason.STORE: 11,
    Reason.VERIFY: 12,
    Reason.PUBLISH: 13,
    Reason.PREBUILT_MISSING: 14,
    Reason.IMAGE: 15,
    Reason.BOOT: 16,
    Reason.LOCKED: 17,
    Reason.WORKSPACE: 18,
    Reason.INTERRUPTED: 130,
    Reason.INTERNAL: 70,
}


class Location(NamedTuple):
    """Where a user-supplied value came from: file and 1-based line."""

    path: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


class PibError(Exception):
    """Root of every error pib raises on purpose.

    `message` says what is wrong, `hint` what to do about it, `where` the
    file:line it came from (if a user wrote it).
    """

    reason: Reason = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        hint: str = "",
        where: Location | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.message = message
        self.hint = hint
        self.where = where
        self.detail = detail  # e.g. a log tail; shown after the message

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.reason]

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "reason": self.reason.value,
            "message": self.message,
            "hint": self.hint,
            "where": str(self.where) if self.where else None,
        }


class ConfigError(PibError):
    reason = Reason.CONFIG


class ManifestError(PibError):
    reason = Reason.MANIFEST


class StoreError(PibError):
    reason = Reason.STORE


class VerifyError(PibError):
    reason = Reason.VERIFY


class CbeError(PibError):
    reason = Reason.CBE


class WorkspaceError(PibError):
    reason = Reason.WORKSPACE


def local_error(path: Path, exc: OSError, what: str) -> WorkspaceError:
    """An OSError on one of the workspace's own files, as the error a user can act on."""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # something that is not a directory where one must be
        for d in path.parents:
            if d.exists() and not d.is_dir():
                return WorkspaceError(f"cannot {what} {path}: {d} is not a directory",
                                      hint=f"remove or move {d} (pib makes it again), then run pib again")
    name = exc.filename2 or exc.filename  # of a copy: where it was going
    if name and str(name) != str(path):
        why += f" ({name})"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free space (or inodes) on that file system, then run pib again"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "make it writable (it is on a read-only file system, or not yours), or point pib.toml elsewhere"
    else:
        hint = "remove or fix it (pib makes it again), then run pib again"
    return WorkspaceError(f"cannot {what} {path}: {why}", hint=hint)
