"""What each command does, as functions that return data (the CLI renders it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pib import state
from pib.build import (
    Artifacts,
    BuildEnv,
    Builder,
    BuildOptions,
    BuildReport,
    Event,
    Plan,
    default_env,
    parallel_map,
    plan,
    sweep,
)
from pib.config import Config, topo_order
from pib.errors import PibError, Reason
from pib.fsutil import remove_tree
from pib.lock import FileLock
from pib.platform import FloorCheck, check_floor
from pib.workspace import CheckoutReport, clean_checkout, ensure_checkout


def workspace_lock(cfg: Config) -> FileLock:
    return FileLock(cfg.workspace.state_dir / "lock", what=f"workspace {cfg.workspace.root}")


# --------------------------------------------------------------------------
# configure


class ConfigureReport(NamedTuple):
    floor: FloorCheck
    checkouts: tuple[CheckoutReport, ...]
    cbe: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "host": {"kind": self.floor.host.kind, "version": self.floor.host.version,
                     "description": self.floor.host.description},
            "min_version": self.floor.minimum,
            "platform_ok": self.floor.ok,
            "platform_overridden": self.floor.overridden,
            "cbe": self.cbe,
            "components": [
                {"component": c.name, "action": c.action, "branch": c.branch, "head": c.head, "dirty": c.dirty}
                for c in self.checkouts
            ],
            "seconds": round(self.seconds, 3),
        }


def configure(cfg: Config, *, update: bool = False, allow_old: bool = False, install_cbe: bool = True) -> ConfigureReport:
    t0 = time.monotonic()
    floor = check_floor(cfg.platform, allow_old=allow_old)
    log_dir = cfg.workspace.log_dir
    from pib.run import Log

    with Log(log_dir / "configure.log") as log:
        benv = build_env(cfg, install=install_cbe, log=log)
        comps = topo_order(cfg)
        reports = tuple(parallel_map(lambda c: ensure_checkout(c, update=update, log=log), comps, workers=4))
    return ConfigureReport(floor, reports, benv.description, time.monotonic() - t0)


# --------------------------------------------------------------------------
# build environment


def build_env(cfg: Config, *, install: bool, log: Any = None) -> BuildEnv:
    """The environment every build of this workspace runs in (CBE, or the minimal host one)."""
    if cfg.cbe is None:
        return default_env(cfg)
    from pib import cbe as cbe_mod

    stores: list[object] = []
    keys: list[object] = []
    if install:  # only an install may need to fetch a prefix tarball
        stores, keys = cbe_mod.stores_and_keys(cfg)
    installed = cbe_mod.ensure(cfg.cbe, install=install, log=log, stores=stores, trusted_keys=keys)
    cbe_mod.record_user(installed, cfg.workspace.root)
    return BuildEnv(
        path=installed.path,
        env={"PIB_CBE": f"{installed.name}-{installed.version}", "PIB_CBE_PREFIX": str(installed.prefix),
             **installed.env},
        key={"name": installed.name, "version": installed.version, "lock": installed.lock_digest},
        description=f"{installed.name} {installed.version} at {installed.prefix}",
    )


# --------------------------------------------------------------------------
# status


class ComponentStatus(NamedTuple):
    name: str
    up_to_date: bool
    reasons: tuple[str, ...]
    key: str
    dirty: bool
    branch: str | None
    head: str | None
    last_action: str | None
    prebuilt: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.name,
            "state": "up-to-date" if self.up_to_date else "stale",
            "reasons": list(self.reasons),
            "key": self.key,
            "dirty": self.dirty,
            "branch": self.branch,
            "head": self.head,
            "last_action": self.last_action,
            "prebuilt": self.prebuilt,
        }


def status(cfg: Config, names: Sequence[str] | None = None) -> list[ComponentStatus]:
    _require_checkouts(cfg, names)
    benv = build_env(cfg, install=False)
    out: list[ComponentStatus] = []
    for p in plan(cfg, names, benv):
        out.append(ComponentStatus(
            p.comp.name, p.up_to_date, p.reasons, p.key, p.source.dirty, p.source.branch, p.source.head,
            p.record.action if p.record else None, p.comp.prebuilt,
        ))
    return out


def _require_checkouts(cfg: Config, names: Sequence[str] | None) -> None:
    missing = [c.name for c in topo_order(cfg, tuple(names) if names else None) if not (c.checkout / ".git").exists()]
    if missing:
        raise PibError(
            f"not checked out: {', '.join(missing)}",
            reason=Reason.SOURCE,
            hint="run pib configure first",
        )


# --------------------------------------------------------------------------
# build


def build(
    cfg: Config,
    names: Sequence[str] | None,
    opts: BuildOptions,
    *,
    wait_for_lock: bool = False,
    allow_old: bool = False,
    offline: bool = False,
    image: bool = True,
    ci: bool = False,
    on_event: Callable[[Event], None] | None = None,
    on_lock_wait: Callable[[str], None] | None = None,
) -> BuildReport:
    floor = check_floor(cfg.platform, allow_old=allow_old)
    if opts.publish:
        from pib.prebuilt import check_publish_policy, publishing_signer

        check_publish_policy(cfg, floor, ci=ci)
        publishing_signer(cfg)  # fail before building, not after
    with workspace_lock(cfg) as lock:
        lock.acquire(wait=wait_for_lock, on_wait=on_lock_wait)
        _require_checkouts(cfg, names)
        benv = build_env(cfg, install=False)
        plans = plan(cfg, names, benv)
        # The stores are opened only when something may be restored or published.
        needed = opts.publish or any(p.comp.prebuilt and (opts.force or not p.up_to_date) for p in plans)
        artifacts = _artifacts(cfg, offline=offline, floor=floor, benv=benv) if needed else None
        report = Builder(cfg, benv, opts, artifacts=artifacts, on_event=on_event).run(plans)
        if report.ok and image and cfg.image is not None and not names:
            report.image = _image(cfg, plans, report, benv, floor, force=opts.force)
        return report


def _artifacts(cfg: Config, *, offline: bool, floor: FloorCheck, benv: BuildEnv) -> Artifacts | None:
    if not any(c.prebuilt for c in cfg.components):
        return None
    from pib.prebuilt import StoreArtifacts

    return StoreArtifacts(cfg, offline=offline, floor=floor, benv=benv)


def _image(cfg: Config, plans: list[Plan], report: BuildReport, benv: BuildEnv, floor: FloorCheck,
           *, force: bool) -> dict[str, Any]:
    from pib.imaging import make_image

    return make_image(cfg, plans, report, benv, floor, force=force)


# --------------------------------------------------------------------------
# clobber


class ClobberReport(NamedTuple):
    component: str
    removed_proto: bool
    cleaned_checkout: bool


def clobber(cfg: Config, names: Sequence[str], *, wait_for_lock: bool = False) -> list[ClobberReport]:
    out: list[ClobberReport] = []
    with workspace_lock(cfg) as lock:
        lock.acquire(wait=wait_for_lock)
        for name in names:
            c = cfg.component(name)
            had_proto = c.proto.exists()
            sweep(c)
            if had_proto:
                _remove_tree(c.proto)
            state.forget(cfg.workspace.state_dir, c.name)
            remove_tree(cfg.workspace.state_dir / "build" / c.name)
            cleaned = (c.checkout / ".git").exists()
            if cleaned:
                clean_checkout(c)
            out.append(ClobberReport(c.name, had_proto, cleaned))
    return out


def _remove_tree(path: Path) -> None:
    # Rename first so a killed clobber never leaves a half-deleted proto area in place.
    doomed = path.with_name(f".{path.name}.pib-old")
    remove_tree(doomed)
    path.rename(doomed)
    remove_tree(doomed)


# --------------------------------------------------------------------------
# explain


def explain(cfg: Config, name: str) -> dict[str, Any]:
    from pib import keys

    _require_checkouts(cfg, [name])
    benv = build_env(cfg, install=False)
    p = next(x for x in plan(cfg, [name], benv) if x.comp.name == name)
    out: dict[str, Any] = {
        "component": name,
        "key": p.key,
        "document": p.doc,
        "up_to_date": p.up_to_date,
        "reasons": list(p.reasons),
        "dirty": p.source.dirty,
    }
    if p.record is not None:
        out["last_build"] = {
            "key": p.record.key,
            "action": p.record.action,
            "differs": [{"field": f, "was": a, "now": b} for f, a, b in keys.diff(p.record.doc, p.doc)],
        }
    nearest = _nearest_artifact(cfg, name)
    if nearest is not None:
        store_name, doc = nearest
        out["nearest_artifact"] = {
            "store": store_name,
            "key": keys.digest(doc),
            "differs": [{"field": f, "was": a, "now": b} for f, a, b in keys.diff(doc, p.doc)],
        }
    return out


def _nearest_artifact(cfg: Config, name: str) -> tuple[str, dict[str, Any]] | None:
    from pib.prebuilt import nearest_artifact

    return nearest_artifact(cfg, name)


# --------------------------------------------------------------------------
# publish


class Published(NamedTuple):
    component: str
    key: str
    stores: tuple[str, ...]


def publish(cfg: Config, names: Sequence[str] | None, *, wait_for_lock: bool = False, ci: bool = False) -> list[Published]:
    """Upload signed artifacts of up-to-date, clean prebuilt components (all of them, or those named)."""
    from pib.prebuilt import check_publish_policy, publish_one, remote_stores

    floor = check_floor(cfg.platform)
    check_publish_policy(cfg, floor, ci=ci)
    chosen = list(names) if names else [c.name for c in cfg.components if c.prebuilt]
    if not chosen:
        raise PibError("no component is marked prebuilt = true", reason=Reason.PUBLISH,
                       hint="mark the components whose artifacts others should restore")
    with workspace_lock(cfg) as lock:
        lock.acquire(wait=wait_for_lock)
        _require_checkouts(cfg, chosen)
        benv = build_env(cfg, install=False)
        plans = {p.comp.name: p for p in plan(cfg, chosen, benv)}
        for n in chosen:
            p = plans[n]
            if p.source.dirty:
                raise PibError(f"cannot publish {n}: its source tree has uncommitted changes",
                               reason=Reason.PUBLISH, hint="commit them; artifacts of dirty trees stay local")
            if not p.up_to_date:
                raise PibError(f"cannot publish {n}: it is not built for its current inputs "
                               f"({'; '.join(p.reasons)})", reason=Reason.PUBLISH, hint=f"run pib build {n} first")
        remotes = remote_stores(cfg)
        from pib.artifacts import CbeInfo

        info = CbeInfo(benv.key["name"], benv.key["version"], benv.key["lock"]) if benv.key else None
        from pib.run import Log

        out = []
        with Log(cfg.workspace.log_dir / "publish.log") as log:
            for n in chosen:
                p = plans[n]
                stores = publish_one(cfg, p, p.comp.proto, log, remotes, floor, info)
                out.append(Published(n, p.key, stores))
        return out
