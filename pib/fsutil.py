"""File-system helpers shared by restore, build and image writing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

# shutil is imported where it is used: it pulls in the compression modules,
# a noticeable share of a no-op build's start-up.


def remove_tree(path: Path) -> None:
    """rmtree that ignores errors and absent paths."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def force_rmtree(path: Path) -> None:
    """Remove a tree even when it holds read-only directories."""
    import shutil

    def onexc(func: Callable[..., object], p: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        parent = os.path.dirname(p)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
        with contextlib.suppress(OSError):
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p, onerror=_ignore)
                return
            os.unlink(p)

    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if path.exists():
        shutil.rmtree(path, onerror=lambda f, p, e: onexc(f, p, e[1]))


def _ignore(*_: object) -> None:
    return None


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temporary file beside it, renamed over it."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        with contextlib.suppress(OSError):
            os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
