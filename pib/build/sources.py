"""Declared sources as a workspace sees them: fetched before a build, staged in PIB_SOURCES.

Lookup order for each pinned file: the user's download cache, the machine's
local store, each remote store (not with `--offline`), then upstream: Debian's
archive through a private apt configured from `[apt]`, or the file's URL.
After a build that publishes, files the remotes lack are uploaded to them,
so the team's stores keep serving pins that upstream has dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from pib.config.types import AptOrigin, Config, Pinned
from pib.errors import PibError
from pib.fetch import Fetched, Fetcher, Mirror, blob_path, download_cache, stage
from pib.fetch.apt import PrivateApt
from pib.fsutil import remove_tree
from pib.parallel import parallel_map
from pib.run import Log


class Uploaded(NamedTuple):
    store: str
    names: tuple[str, ...]


class Sources:
    """Fetches the workspace's pinned files (thread-safe: components build in parallel)."""

    def __init__(self, cfg: Config, *, offline: bool = False, mirrors: Sequence[Mirror] | None = None) -> None:
        self.cfg = cfg
        self.offline = offline
        self.cache = download_cache()
        self._mirrors = list(mirrors) if mirrors is not None else None
        self._apt: PrivateApt | None = None
        self._lock = threading.Lock()
        self.warnings: list[str] = []

    def mirrors(self) -> list[Mirror]:
        """The local store, then the remotes (only those without --offline), opened once."""
        with self._lock:
            if self._mirrors is None:
                from pib.artifacts.policy import local_store, remote_stores

                found: list[Mirror] = [local_store(self.cfg)]
                if not self.offline:
                    try:
                        found += remote_stores(self.cfg)
                    except PibError as exc:
                        self._warn(f"stores not used as mirrors: {exc.message}")
                self._mirrors = found
            return list(self._mirrors)

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def _private_apt(self) -> PrivateApt | None:
        if self.cfg.apt is None:
            return None
        with self._lock:
            if self._apt is None:
                with_source = any(isinstance(p.origin, AptOrigin) and p.origin.source
                                  for c in self.cfg.components for p in c.sources)
                self._apt = PrivateApt(self.cfg.apt, self.cache / "apt", with_source=with_source)
            return self._apt

    def fetch(self, pins: Iterable[Pinned], log: Log | None = None) -> dict[str, Fetched]:
        todo = list(pins)
        if not todo:
            return {}
        warn = log.line if log is not None else None
        fetcher = Fetcher(self.cache, mirrors=self.mirrors(), apt=self._private_apt(), offline=self.offline,
                          log=log, warn=warn)
        got = fetcher.fetch(todo)
        if log is not None:
            for f in got.values():
                log.line(f"pib: source {f.pin.name} (sha256 {f.pin.sha256[:16]}…) from {f.came_from}")
        return got

    def stage(self, name: str, pins: Sequence[Pinned], log: Log | None = None) -> Path:
        """A fresh directory holding exactly the component's pinned files, by name."""
        dest = self.cfg.workspace.state_dir / "sources" / name
        got = self.fetch(pins, log)
        remove_tree(dest)
        return stage(got.values(), dest)

    def upload_missing(self, pins: Sequence[Pinned], targets: Sequence[Mirror], log: Log | None = None) -> list[Uploaded]:
        """Put the pinned files the target stores lack into them (after a fetch, from the cache)."""
        unique = {p.sha256: p for p in pins}
        if not unique or not targets:
            return []

        def one(store: Mirror) -> Uploaded:
            have = store.has_blobs(blob_path(sha) for sha in unique)
            sent: list[str] = []
            for sha, p in unique.items():
                if blob_path(sha) in have:
                    continue
                cached = self.cache / "sha256" / sha
                if not cached.is_file():
                    continue  # not fetched on this machine: nothing verified to offer
                store.put_blob(blob_path(sha), cached)
                sent.append(p.name)
                if log is not None:
                    log.line(f"pib: source {p.name} uploaded to {store.name}")
            return Uploaded(store.name, tuple(sent))

        return parallel_map(one, list(targets))


def all_pins(cfg: Config, names: Sequence[str] | None = None) -> list[Pinned]:
    """Every declared source of the named components (all when None), in config order."""
    wanted = set(names) if names else None
    return [p for c in cfg.components if wanted is None or c.name in wanted for p in c.sources]
