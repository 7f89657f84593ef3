"""The environment every build runs in, and the only place that makes it.

A build sees nothing of the caller's environment: PATH is the CBE's bin
directories then the allowed system directories (or the minimal host PATH
without a CBE), HOME is private, and the variables are pib's, the CBE's and
the component's own.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pib.config.types import Config, StoreSpec
from pib.errors import local_error
from pib.fsutil import writable_dir
from pib.run import BASE_PATH, Log

if TYPE_CHECKING:
    from pib.build.plan import Plan
    from pib.cbe import InstalledCbe


class BuildEnv(NamedTuple):
    """How builds run: the CBE's PATH and variables, or the minimal host ones."""

    path: str
    env: Mapping[str, str]  # what the CBE exports, PIB_CBE and PIB_CBE_PREFIX included
    key: Mapping[str, str] | None  # the CBE fields of every key (None: no CBE)
    description: str

    @classmethod
    def of(cls, installed: InstalledCbe, system_path: tuple[str, ...] = ()) -> BuildEnv:
        # The host directories on PATH are inputs too: which tools a build finds there changes its output.
        return cls(
            path=installed.path,
            env={"PIB_CBE": f"{installed.name}-{installed.version}", "PIB_CBE_PREFIX": str(installed.prefix),
                 **installed.env},
            key={"name": installed.name, "version": installed.version, "lock": installed.lock_digest,
                 "system_path": ":".join(system_path)},
            description=f"{installed.name} {installed.version} at {installed.prefix}",
        )


HOST = BuildEnv(path=BASE_PATH, env={}, key=None, description="host (no [cbe] configured)")


def build_environment(
    benv: BuildEnv,
    extra: Mapping[str, str] | None = None,
    *,
    home: Path | None = None,
    source_date_epoch: str | None = None,
) -> dict[str, str]:
    """The complete environment of a build: nothing from os.environ.

    PATH is the CBE's bin directories then its allowed system directories;
    HOME is `home` or a private scratch directory; `extra` comes last.
    """
    env = {
        "PATH": benv.path,
        "HOME": str(home if home is not None else _scratch_home()),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        **benv.env,
    }
    if source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = source_date_epoch
    if extra:
        env.update(extra)
    return env


def component_env(cfg: Config, plan: Plan, benv: BuildEnv, destdir: Path, *,
                  sources_dir: Path | None = None) -> dict[str, str]:
    """The environment of one component's build command (what `pib build` runs it with)."""
    c = plan.comp
    build_dir = cfg.workspace.state_dir / "build" / c.name
    # A private HOME: nothing from the user's dotfiles or ~/.local reaches a build.
    home = cfg.workspace.state_dir / "home"
    for place in (build_dir, home):
        try:
            writable_dir(place)  # a read-only mount: said here, not in the middle of a build's log
        except OSError as exc:
            raise local_error(place, exc, f"prepare the build of {c.name} in") from None
    extra = {
        "DESTDIR": str(destdir),
        "PIB_PROTO": str(destdir),
        "PIB_COMPONENT": c.name,
        "PIB_KEY": plan.key,
        "PIB_BUILD_DIR": str(build_dir),
        "PIB_WORKSPACE": str(cfg.workspace.root),
        "MAKEFLAGS": f"-j{max(1, cfg.workspace.jobs)}",
    }
    if sources_dir is not None:
        extra["PIB_SOURCES"] = str(sources_dir)  # the declared sources, verified, by file name
    for d in c.depends:
        extra[f"PIB_DEP_{_env_name(d)}"] = str(cfg.component(d).proto)
    extra.update(c.env)
    # The epoch is in the key (a fixed workspace value, so equal content keeps its key across commits);
    # the caller's SOURCE_DATE_EPOCH, which is not in the key, never reaches a build.
    return build_environment(benv, extra, home=home, source_date_epoch=str(plan.doc["epoch"]))


def _scratch_home() -> Path:
    import tempfile  # not on a build's path: it has its own HOME

    home = Path(tempfile.gettempdir()) / f"pib-home-{os.getuid()}"
    home.mkdir(mode=0o700, exist_ok=True)
    st = home.lstat()
    # Someone else's directory (or a link) in a shared /tmp is not ours to use.
    if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o077:
        return Path(tempfile.mkdtemp(prefix="pib-home-"))
    return home


def _env_name(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).upper()


def ensure_cbe(cfg: Config, *, install: bool, update: bool = False, log: Log | None = None,
               offline: bool = False) -> InstalledCbe:
    """The workspace's CBE, checked against its lock (installed or updated when asked).

    A prefix tarball comes from the workspace's stores, checked against its trusted keys.
    """
    from pib import cbe

    assert cfg.cbe is not None
    stores: list[StoreSpec] = []
    keys: list[Path] = []
    if install or update:  # only an install may need to fetch a prefix tarball
        from pib.artifacts.policy import store_specs

        stores, keys = store_specs(cfg), list(cfg.trust.public_keys)
        if offline:
            stores = [cfg.local_store]
    installed = cbe.ensure(cfg.cbe, install=install, update=update, log=log, stores=stores, trusted_keys=keys,
                           offline=offline)
    cbe.record_user(installed, cfg.workspace.root)
    return installed


def build_env(cfg: Config, *, install: bool, log: Log | None = None, offline: bool = False) -> BuildEnv:
    """The environment every build of this workspace runs in (CBE, or the minimal host one)."""
    if cfg.cbe is None:
        return HOST
    return BuildEnv.of(ensure_cbe(cfg, install=install, log=log, offline=offline), cfg.cbe.system_path)
