"""The parsed configuration, kept between runs: a 3,000-line pib.toml with the file:line of every value
takes a third of a second to read, its cached form a tenth of that.

The cache is keyed by the bytes of every file the loader parses (not their stat data: an edit in the
same second to the same size, a file replaced by a rename or a clock set back all change the key), by
what the loader reads besides them (the workspace path, HOME, XDG_CACHE_HOME, the CPU count), and by the
source of the configuration code itself, so an edited loader never meets a stale entry. What depends on
the file system (where a proto area resolves to) is checked on every load, cached or not. Only a
configuration that loaded without error is kept.

The entry is a pickle in the workspace's own .pib directory: whoever can write there can edit pib.toml's
build commands too, so it is trusted as much as the workspace.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

from pib.config.types import Config
from pib.fsutil import write_atomic

_FORMAT = b"pib-config-cache 1\n"
_LIMIT = 256 << 20  # a cache, not a record: a larger file is ignored
_CODE: list[bytes] = []  # the digest of the configuration code, taken once per process


def _code_digest() -> bytes:
    if not _CODE:
        import pib.errors

        h = hashlib.sha256()
        here = Path(__file__).parent
        for p in [*sorted(here.glob("*.py")), *sorted(here.glob("*.json")), Path(pib.errors.__file__ or "")]:
            with contextlib.suppress(OSError):
                h.update(f"{p.name}\0".encode() + p.read_bytes() + b"\0")
        _CODE.append(h.digest())
    return _CODE[0]


def key(root: Path, files: Sequence[tuple[Path, bytes]], local: bool) -> bytes:
    """What decides the loaded configuration besides the file system: see the module's docstring."""
    h = hashlib.sha256(_FORMAT)
    h.update(_code_digest())
    env = [sys.version, str(root), str(local), os.path.expanduser("~"), os.environ.get("XDG_CACHE_HOME", "-"),
           str(os.cpu_count())]
    h.update("\0".join(env).encode("utf-8", "surrogateescape") + b"\0")
    for path, raw in files:
        h.update(f"{path}\0{len(raw)}\0".encode("utf-8", "surrogateescape") + raw)
    return h.digest()


def path_for(root: Path) -> Path | None:
    """Where the workspace keeps the entry: its .pib directory, when there is one (never made for this)."""
    state = root / ".pib"
    return state / "config-cache" if state.is_dir() else None


def get(path: Path | None, want: bytes) -> Config | None:
    """The configuration stored under `want`; None when there is none, or it cannot be read."""
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_LIMIT + 1)
        head = len(_FORMAT) + len(want)
        if len(raw) > _LIMIT or raw[:head] != _FORMAT + want:
            return None
        cfg = pickle.loads(raw[head:])
    except Exception:  # a torn or foreign cache is a miss, never an error
        return None
    return cfg if isinstance(cfg, Config) else None


def put(path: Path | None, want: bytes, cfg: Config) -> None:
    if path is None:
        return
    with contextlib.suppress(OSError, pickle.PicklingError, TypeError, AttributeError):
        write_atomic(path, _FORMAT + want + pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL))
