"""Providers populate a CBE prefix from a lock.

Each provider module has `populate(lock, prefix, ctx) -> dict[str, str]`
(extra variables the CBE exports, `${PREFIX}` allowed) and `RELOCATABLE`:
whether it may populate a temporary directory that is renamed into place
afterwards (pkgsrc binaries are built for one prefix and cannot).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from pib.cbe.pins import Lock
from pib.fetch import Mirror
from pib.run import Log


@dataclass(frozen=True)
class Context:
    """What a provider may use besides the lock and the prefix."""

    root: Path                  # the CBE root (caches live under <root>/.cache)
    log: Log | None
    stores: Sequence[object] = ()       # artifact stores (tarball provider)
    trusted_keys: Sequence[object] = ()  # Ed25519 public keys (tarball provider)
    python: str = ""            # interpreter for the pip provider ("" = the running one)
    extra: dict[str, str] = field(default_factory=dict)
    downloads: Path | None = None  # the shared download cache of pinned files (None: under the root)
    offline: bool = False

    @property
    def cache(self) -> Path:
        return self.root / ".cache"

    def mirrors(self) -> list[Mirror]:
        """The stores as mirrors of pinned files; a store that cannot be opened is skipped."""
        from pib.config.types import HttpStoreSpec, LocalStoreSpec, S3StoreSpec
        from pib.errors import PibError
        from pib.store.backends import open_store

        out: list[Mirror] = []
        for spec in self.stores:
            if isinstance(spec, LocalStoreSpec | HttpStoreSpec | S3StoreSpec):
                try:
                    out.append(open_store(spec))
                except PibError as exc:
                    if self.log is not None:
                        self.log.line(f"store skipped as a mirror: {exc.message}")
        return out


def module(provider: str) -> ModuleType:
    # Imported on demand so a debian host never loads pkgsrc code and vice versa.
    if provider not in ("debian", "pip", "tarball", "pkgsrc"):
        raise ValueError(provider)  # the lock parser already refused it
    return importlib.import_module(f"pib.cbe.providers.{provider}")


def write_files(lock: Lock, prefix: Path) -> None:
    """Write the lock's [[files]] (wrappers) into the prefix."""
    for f in lock.files:
        dest = prefix / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.write_text(f.content, encoding="utf-8")
        os.chmod(dest, f.mode)
