"""What each command does, as functions that return data (the CLI renders it).

One `pib build`: check the host, take the workspace lock, plan every key
(pib.build.plan), restore or build what is stale (pib.build.runner, with the
stores through pib.build.prebuilt), record each result (pib.build.state),
then make the image from the keys just planned (pib.image.step).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pib.build import state
from pib.build.checkout import CheckoutReport, clean_checkout, ensure_checkout
from pib.build.context import BuildContext
from pib.build.env import build_env
from pib.build.plan import Plan, plan
from pib.build.runner import Artifacts, Builder, BuildOptions, BuildReport, Event, State, sweep
from pib.config.loader import topo_order
from pib.config.types import ComponentConfig, Config, Pinned
from pib.errors import PibError, Reason
from pib.flock import FileLock
from pib.fsutil import discard_tree, remove_stale, remove_tree
from pib.host import FloorCheck, check_floor
from pib.parallel import parallel_map

if TYPE_CHECKING:
    from pib.build.ci import PlanReport
    from pib.build.sources import Sources
    from pib.fetch import Fetched
    from pib.store import Store


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
                {"component": c.name, "action": c.action, "branch": c.branch, "head": c.head, "dirty": c.dirty,
                 "note": c.note}
                for c in self.checkouts
            ],
            "seconds": round(self.seconds, 3),
        }


def configure(cfg: Config, *, update: bool = False, allow_old: bool = False, install_cbe: bool = True,
              offline: bool = False, wait_for_lock: bool = False) -> ConfigureReport:
    t0 = time.monotonic()
    floor = check_floor(cfg.platform, allow_old=allow_old)
    log_dir = cfg.workspace.log_dir
    from pib.artifacts.policy import trusted_keys
    from pib.run import Log

    trusted_keys(cfg, machine=False)  # a missing or unreadable key file is a configure-time error
    # A checkout must not move under a running build (its key was computed from the old content).
    with workspace_lock(cfg) as lock, Log(log_dir / "configure.log") as log:
        lock.acquire(wait=wait_for_lock)
        benv = build_env(cfg, install=install_cbe, log=log, offline=offline)
        comps = topo_order(cfg)
        reports = tuple(parallel_map(lambda c: ensure_checkout(c, update=update, log=log, sources=cfg.sources),
                                     comps, workers=4))
        _check_manifests(cfg)
    return ConfigureReport(floor, reports, benv.description, time.monotonic() - t0)


def _check_manifests(cfg: Config) -> None:
    """Every component manifest is a file of its checkout (an overlay's is checked by the image step)."""
    for c in cfg.components:
        if c.manifest is not None and not (c.checkout / c.manifest).is_file():
            raise PibError(
                f"component {c.name!r}: manifest {c.manifest} is not in its checkout {c.checkout}",
                reason=Reason.MANIFEST,
                where=cfg.sources.get(f"components.{c.name}.manifest", c.where),
                hint="commit the manifest to the component's repository, or fix manifest in pib.toml",
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
    next: str = ""  # what a build would do: "" (nothing), "build", "restore from STORE", "build, unless ..."
    depends: Mapping[str, str] = {}  # dependency -> how its output digest is known (pib.build.plan)

    @property
    def pending(self) -> bool:
        return not self.key

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.name,
            "state": State.UP_TO_DATE if self.up_to_date else State.STALE,
            "reasons": list(self.reasons),
            "key": self.key,
            "dirty": self.dirty,
            "branch": self.branch,
            "head": self.head,
            "last_action": self.last_action,
            "prebuilt": self.prebuilt,
            "next": self.next,
            "key_pending": self.pending,
            "depends": dict(self.depends),
        }


def status(cfg: Config, names: Sequence[str] | None = None, *, remote: bool = False) -> list[ComponentStatus]:
    """Each component: up to date or stale and why, and what a build would do.

    remote: also ask the remote stores (network) which stale prebuilt components they hold."""
    _require_checkouts(cfg, names)
    benv = build_env(cfg, install=False)
    from pib.build.prebuilt import lookup_without_building

    plans = plan(cfg, names, benv, lookup=lookup_without_building(cfg, remotes=remote))
    hits = _local_hits(cfg, plans)
    if remote:
        hits = {**_remote_hits(cfg, plans, set(hits)), **hits}  # the local store is tried first
    out: list[ComponentStatus] = []
    for p in plans:
        out.append(ComponentStatus(
            p.comp.name, p.up_to_date, p.reasons, p.key, p.source.dirty, p.source.branch, p.source.head,
            p.record.action if p.record else None, p.comp.prebuilt, _next(cfg, p, hits, remote=remote),
            dict(p.via),
        ))
    return out


def _restorable(plans: Sequence[Plan]) -> list[tuple[str, str]]:
    return [(p.comp.name, p.key) for p in plans if p.comp.prebuilt and not p.up_to_date and p.key]


def _remote_hits(cfg: Config, plans: Sequence[Plan], known: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Which stale prebuilt components each remote store holds, first store in config order (as a build asks)."""
    wanted = [w for w in _restorable(plans) if w not in known]
    if not wanted or not cfg.stores:
        return {}
    from pib.artifacts.policy import remote_stores

    def ask(store: Store) -> set[tuple[str, str]]:
        try:
            return set(store.has_many(wanted))
        except (PibError, OSError):
            return set()  # a store that does not answer holds nothing a build could restore now

    try:
        stores = remote_stores(cfg)
    except PibError:
        return {}
    out: dict[tuple[str, str], str] = {}
    for store, have in zip(stores, parallel_map(ask, stores), strict=True):
        for item in have:
            out.setdefault(item, store.name)
    return out


def _local_hits(cfg: Config, plans: Sequence[Plan]) -> dict[tuple[str, str], str]:
    """Which stale prebuilt components the machine's local store holds (no network: a status stays cheap)."""
    wanted = _restorable(plans)
    if not wanted:
        return {}
    from pib.artifacts.policy import local_store

    try:
        return dict.fromkeys(local_store(cfg).has_many(wanted), cfg.local_store.name)
    except PibError:
        return {}


def _next(cfg: Config, p: Plan, hits: Mapping[tuple[str, str], str], *, remote: bool) -> str:
    if p.up_to_date:
        return ""
    store = hits.get((p.comp.name, p.key))
    if store is not None:
        return f"restore from {store}"
    if p.comp.prebuilt and cfg.stores and not p.source.dirty and not remote:
        return "build, unless a remote store has it"
    return "build"


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
    if opts.force and names and not opts.forced:
        opts = opts._replace(forced=tuple(names))  # --force NAME rebuilds NAME, not what it depends on
    if opts.deps_from_store:
        opts = opts._replace(targets=tuple(names or ()))  # only the named components may be built
    if opts.publish:
        from pib.artifacts.policy import check_publish_policy, publishing_signer

        check_publish_policy(cfg, floor, ci=ci)
        publishing_signer(cfg)  # fail before building, not after
    with workspace_lock(cfg) as lock:
        lock.acquire(wait=wait_for_lock, on_wait=on_lock_wait)
        _sweep_leftovers(cfg)
        _require_checkouts(cfg, names)
        ctx = BuildContext(cfg, build_env(cfg, install=False), floor)
        plans, artifacts = _plan_build(ctx, names, opts, offline=offline)
        nothing_published = _check_publishing(cfg, plans) if opts.publish else None
        set_aside = state.set_aside_corrupt(cfg.workspace.state_dir)  # before the rebuilds record afresh
        report = Builder(ctx, opts, artifacts=artifacts, sources=_sources(ctx, plans, opts, offline=offline),
                         on_event=on_event).run(plans)
        if nothing_published:
            report.warnings.append(nothing_published)
        report.warnings[:0] = set_aside
        if floor.overridden:
            report.warnings.insert(0, f"host platform {floor.host.version} is older than the oldest supported "
                                      f"{floor.minimum} (--allow-old-platform): builds may not run on supported "
                                      "platforms and are never published")
        if opts.publish and report.ok:
            _publish_sources(ctx, plans, report, offline=offline)
            if not offline:
                _publish_cbe(ctx, report)
        if report.ok and image and cfg.image is not None and not names:
            report.image = _image(ctx, plans, report, force=opts.force)
            report.warnings.extend(report.image.get("warnings") or ())
            report.warnings += report.image.pop("set_aside", [])
            if cfg.media is not None and cfg.media.make:
                report.image["media"] = _media(cfg, report.image, force=opts.force)
        return report


def _plan_build(ctx: BuildContext, names: Sequence[str] | None, opts: BuildOptions, *, offline: bool,
                always_open: bool = False) -> tuple[list[Plan], Artifacts | None]:
    """The plan of a build and the stores it would use: what `pib build` runs and `pib plan` reports."""
    cfg = ctx.cfg
    opened: list[Artifacts | None] = []

    def stores() -> Artifacts | None:
        if not opened:
            opened.append(_artifacts(ctx, offline=offline, require_prebuilt=opts.require_prebuilt))
        return opened[0]

    def lookup(comp: ComponentConfig, key: str) -> tuple[str, str] | None:
        # Asked only for a stale prebuilt dependency, which opens the stores anyway.
        found = stores()
        return found.equivalence(comp, key) if found is not None else None

    plans = plan(cfg, names, ctx.benv, lookup=lookup)
    # The stores are opened only when something may be restored or published.
    needed = always_open or opts.publish or any(
        p.comp.prebuilt and (opts.forces(p.comp.name) or not p.up_to_date) for p in plans)
    return plans, stores() if needed or opened else None


def plan_only(cfg: Config, names: Sequence[str] | None, *, offline: bool = False,
              allow_old: bool = False) -> PlanReport:
    """`pib plan`: what `pib build` would do with each component, and why, without doing it.

    The same planning as a build (keys, equivalences, one existence round per store); nothing is fetched,
    built or recorded, and the workspace lock is not taken (like `pib status`).
    """
    from pib.build.ci import BUILD, RESTORABLE, UP_TO_DATE, PlanReport, Step

    t0 = time.monotonic()
    floor = check_floor(cfg.platform, allow_old=allow_old)
    _require_checkouts(cfg, names)
    ctx = BuildContext(cfg, build_env(cfg, install=False), floor)
    plans, artifacts = _plan_build(ctx, names, BuildOptions(), offline=offline, always_open=True)
    holders: dict[str, tuple[str, ...]] = {}
    if artifacts is not None:
        artifacts.prepare([p for p in plans if p.key])
        holders = artifacts.holders(plans)
    steps = []
    for p in plans:
        where = holders.get(p.comp.name, ())
        action = UP_TO_DATE if p.up_to_date else RESTORABLE if where else BUILD
        steps.append(Step(p.comp.name, action, p.key, p.comp.depends, where, p.reasons, dict(p.via),
                          p.comp.prebuilt, p.local_only))
    return PlanReport(tuple(steps), time.monotonic() - t0,
                      tuple(artifacts.warnings) if artifacts is not None else ())


class FetchedFile(NamedTuple):
    owner: str      # component name, or "cbe"
    name: str
    sha256: str
    size: int
    came_from: str  # cache, store NAME, upstream


class FetchReport(NamedTuple):
    files: tuple[FetchedFile, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3),
                "files": [f._asdict() for f in self.files]}


def fetch(cfg: Config, names: Sequence[str] | None, *, cbe: bool = True, offline: bool = False) -> FetchReport:
    """Fetch every pinned file the named components (all by default) and the CBE need."""
    from pib.build.sources import Sources, all_pins
    from pib.run import Log

    t0 = time.monotonic()
    for n in names or ():
        cfg.component(n)  # unknown names are an error before anything is fetched
    src = Sources(cfg, offline=offline)
    files: list[FetchedFile] = []
    with Log(cfg.workspace.log_dir / "fetch.log") as log:
        got = src.fetch(all_pins(cfg, names), log)
        for c in cfg.components:
            files += [_fetched(c.name, got[p.sha256]) for p in c.sources if p.sha256 in got]
        if cbe and cfg.cbe is not None:
            from pib.cbe.pins import load
            from pib.cbe.providers import debian
            from pib.fetch import download_cache

            lock = load(cfg.cbe.lock)
            if lock.provider == "debian":  # the other providers fetch at install time
                debs = debian.fetch(lock.packages, download_cache(), log, apt=lock.apt, mirrors=src.mirrors(),
                                    offline=offline, lock_path=lock.path)
                files += [_fetched("cbe", f) for f in debs.values()]
    return FetchReport(tuple(files), time.monotonic() - t0)


def _fetched(owner: str, f: Fetched) -> FetchedFile:
    return FetchedFile(owner, f.pin.name, f.pin.sha256, f.path.stat().st_size, f.came_from)


def _sources(ctx: BuildContext, plans: list[Plan], opts: BuildOptions, *, offline: bool) -> Sources | None:
    """The fetcher of declared sources, when a component that declares some may be built."""
    if not any(p.comp.sources and (opts.forces(p.comp.name) or not p.up_to_date) for p in plans):
        return None
    from pib.build.sources import Sources

    return Sources(ctx.cfg, offline=offline)


def _publish_sources(ctx: BuildContext, plans: list[Plan], report: BuildReport, *, offline: bool) -> None:
    """Mirror every pinned file of this build (declared sources, CBE packages) into the remotes that lack it."""
    if offline:
        return
    from pib.artifacts.policy import may_publish, remote_stores
    from pib.build.sources import Sources

    pins = [pin for p in plans for pin in p.comp.sources] + _cbe_pins(ctx.cfg)
    if not pins:
        return
    try:
        targets = [s for s in remote_stores(ctx.cfg) if may_publish(ctx.cfg, s.name)]
        for up in Sources(ctx.cfg).upload_missing(pins, targets):
            if up.names:
                report.sources_uploaded[up.store] = list(up.names)
    except PibError as exc:
        report.warnings.append(f"could not mirror pinned sources to the stores: {exc.message}")


def _publish_cbe(ctx: BuildContext, report: BuildReport) -> None:
    """Publish the installed CBE prefix, keyed by its lock digest, to the remotes that lack it."""
    cfg = ctx.cfg
    if cfg.cbe is None:
        return
    from pib import cbe
    from pib.artifacts.policy import may_publish, publishing_signer, remote_stores
    from pib.cbe.install import read_record
    from pib.cbe.pins import load
    from pib.cbe.providers.tarball import component, publish_prefix

    try:
        lock = load(cfg.cbe.lock)
        if lock.provider == "tarball":
            return  # already published as what it is
        targets = [s for s in remote_stores(cfg) if may_publish(cfg, s.name)]
        lacking = [s for s in targets if not s.has(component(lock.name), lock.digest)]
        if not lacking:
            return
        installed = cbe.verify_full(cfg.cbe)  # every file hashed: only an untouched prefix is published
        record = read_record(installed.prefix) or {}
        env = record.get("provider_env")
        report.cbe_published = list(publish_prefix(installed.prefix, lock, dict(env) if isinstance(env, dict) else {},
                                                   lacking, publishing_signer(cfg)))
    except PibError as exc:
        report.warnings.append(f"could not publish the CBE prefix: {exc.message}")


def _cbe_pins(cfg: Config) -> list[Pinned]:
    if cfg.cbe is None:
        return []
    from pib.cbe.pins import load
    from pib.cbe.providers.debian import pins

    lock = load(cfg.cbe.lock)
    return pins(lock.packages) if lock.provider == "debian" else []


def _sweep_leftovers(cfg: Config) -> None:
    """What killed runs left (half-built proto areas, scratch directories, image temporaries), whether or
    not this run builds those components; the workspace lock is held, so none of it is in use."""
    listed: dict[Path, set[str]] = {}
    for c in cfg.components:
        parent = c.proto.parent
        if parent not in listed:
            try:
                listed[parent] = {n for n in os.listdir(parent) if n.startswith(".")}  # leftovers are hidden
            except OSError:
                listed[parent] = set()
        sweep(c, listed[parent])
    remove_stale(cfg.workspace.output_dir)


def _check_publishing(cfg: Config, plans: Sequence[Plan]) -> str | None:
    """Before building: a publishing run (pib ci, --publish) fails if its artifacts have nowhere to go, and says
    so when it has nothing to publish, instead of succeeding as if it had published."""
    from pib.artifacts.policy import may_publish

    publishable = [p.comp.name for p in plans if p.comp.prebuilt and not p.local_only]
    if not publishable:
        return ("nothing is published: no component of this build is prebuilt "
                "(set prebuilt = true on the components CI should publish)")
    if not any(may_publish(cfg, s.name) for s in cfg.stores):
        raise PibError(
            f"nowhere to publish {', '.join(publishable)}: no remote store takes published artifacts",
            reason=Reason.PUBLISH,
            hint="add a [[store]] (http or s3) to pib.toml or pib.local.toml",
        )
    return None


def _artifacts(ctx: BuildContext, *, offline: bool, require_prebuilt: bool = False) -> Artifacts | None:
    if not any(c.prebuilt for c in ctx.cfg.components):
        return None
    from pib.build.prebuilt import StoreArtifacts

    return StoreArtifacts(ctx, offline=offline, require_prebuilt=require_prebuilt)


def _image(ctx: BuildContext, plans: list[Plan], report: BuildReport, *, force: bool) -> dict[str, Any]:
    """The image of the keys just planned, with what this build did for build.json."""
    from pib.build.trace import Built, image_trace
    from pib.image.step import make_image

    done = {o.component: o for o in report.outcomes}
    built = [Built(p.comp, p.key, p.source.tree, p.source.head, p.source.dirty) for p in plans]
    image, made = make_image(ctx.cfg, {n: o.key for n, o in done.items()}, lambda: _build_info(ctx, plans, report),
                             outputs={n: o.output or "" for n, o in done.items()}, force=force,
                             trace=lambda: image_trace(ctx.cfg, built, str(ctx.floor.host), ctx.benv.key))
    return {**image, "action": State.BUILT if made else State.UP_TO_DATE}


def _media(cfg: Config, image: dict[str, Any], *, force: bool) -> dict[str, Any]:
    """[media] make: the media of the image, made again only when the image or [media] changed."""
    from pathlib import Path

    from pib.image import media

    assert cfg.media is not None
    out: dict[str, Any] = {}
    for kind in cfg.media.make:
        entry = None if force else media.current(Path(image["dir"]), kind, cfg.media)
        if entry is not None:
            out[kind] = {"path": str(Path(image["dir"]) / entry["file"]), "sha256": entry["sha256"],
                         "size": entry["size"], "action": State.UP_TO_DATE}
            continue
        m = media.make(cfg, kind, image["buildstamp"])
        out[kind] = {"path": str(m.path), "sha256": m.sha256, "size": m.size, "seconds": round(m.seconds, 3),
                     "action": State.BUILT}
    return out


def _build_info(ctx: BuildContext, plans: list[Plan], report: BuildReport) -> dict[str, Any]:
    import os
    import platform

    floor, benv = ctx.floor, ctx.benv
    by_name = {o.component: o for o in report.outcomes}
    info: dict[str, Any] = {
        "workspace": ctx.cfg.workspace.name,
        "components": [
            {
                "name": p.comp.name,
                "key": by_name[p.comp.name].key if p.comp.name in by_name else p.key,
                "output": by_name[p.comp.name].output if p.comp.name in by_name else None,
                "action": by_name[p.comp.name].action if p.comp.name in by_name else State.UP_TO_DATE,
                "seconds": round(by_name[p.comp.name].seconds, 3) if p.comp.name in by_name else 0.0,
                "dirty": p.source.dirty,
                "head": p.source.head,
                "store": by_name[p.comp.name].store if p.comp.name in by_name else None,
            }
            for p in plans
        ],
        "cbe": dict(benv.key) if benv.key else None,
        "cbe_description": benv.description,
        "host": {
            "platform": floor.host.version,
            "kind": floor.host.kind,
            "description": floor.host.description,
            "machine": platform.machine(),
            "oldest_supported": floor.minimum,
        },
        "build_seconds": round(report.seconds, 3),
    }
    if "SOURCE_DATE_EPOCH" not in os.environ:
        info["note"] = "SOURCE_DATE_EPOCH unset: the build stamp is the current time"
    return info


# --------------------------------------------------------------------------
# clobber


class ClobberReport(NamedTuple):
    component: str
    removed_proto: bool
    cleaned_checkout: bool
    removed_untracked: tuple[str, ...] = ()


def clobber(cfg: Config, names: Sequence[str], *, wait_for_lock: bool = False, force: bool = False) -> list[ClobberReport]:
    """Remove proto areas, build records and build products; untracked work is kept unless `force`."""
    from pib.build.checkout import untracked_files

    out: list[ClobberReport] = []
    with workspace_lock(cfg) as lock:
        lock.acquire(wait=wait_for_lock)
        untracked = {n: untracked_files(cfg.component(n).checkout) for n in names
                     if (cfg.component(n).checkout / ".git").exists()}
        at_risk = [f"{n}: {f}" for n, files in untracked.items() for f in files]
        if at_risk and not force:
            shown = at_risk[:20] + ([f"... and {len(at_risk) - 20} more"] if len(at_risk) > 20 else [])
            raise PibError(
                "clobber would delete untracked files that no .gitignore ignores (uncommitted work?)",
                reason=Reason.SOURCE,
                detail="\n".join(shown),
                hint="commit or move them, add build products to .gitignore, or pass --force to delete them",
            )
        for name in names:
            c = cfg.component(name)
            had_proto = c.proto.exists()
            sweep(c)
            # The record first: a stop between the two leaves a proto area the next build replaces, never a
            # record of a build whose proto area is gone.
            state.forget(cfg.workspace.state_dir, c.name)
            if had_proto:
                discard_tree(c.proto)  # never a half-deleted proto area in place
            remove_tree(cfg.workspace.state_dir / "build" / c.name)
            remove_tree(cfg.workspace.state_dir / "source" / c.name)  # a writable_source copy a kill left
            cleaned = (c.checkout / ".git").exists()
            if cleaned:
                clean_checkout(c)
            out.append(ClobberReport(c.name, had_proto, cleaned, tuple(untracked.get(c.name, ()))))
    return out


# --------------------------------------------------------------------------
# explain


def explain(cfg: Config, name: str) -> dict[str, Any]:
    from pib import keys

    _require_checkouts(cfg, [name])
    benv = build_env(cfg, install=False)
    from pib.build.prebuilt import lookup_without_building

    p = next(x for x in plan(cfg, [name], benv, lookup=lookup_without_building(cfg, remotes=True))
             if x.comp.name == name)
    out: dict[str, Any] = {
        "component": name,
        "key": p.key,
        "key_pending": not p.key,
        "depends": dict(p.via),
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
        was = (p.record.doc.get("source") or {}).get("tree")
        if isinstance(was, str) and was != p.source.tree:
            from pib.build.checkout import changed_files

            out["last_build"]["changed_files"] = changed_files(p.comp.checkout, was, p.source.tree)
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
    from pib.artifacts.policy import nearest_artifact

    return nearest_artifact(cfg, name)


# --------------------------------------------------------------------------
# publish


class Published(NamedTuple):
    component: str
    key: str
    stores: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def publish(cfg: Config, names: Sequence[str] | None, *, wait_for_lock: bool = False, ci: bool = False) -> list[Published]:
    """Upload signed artifacts of up-to-date, clean prebuilt components (all of them, or those named)."""
    from pib.artifacts.policy import check_publish_policy, remote_stores
    from pib.build.prebuilt import publish_one, recorded_output
    from pib.run import Log

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
            if p.comp.network:
                raise PibError(f"cannot publish {n}: it is built with network access (network = true), so its "
                               "key does not cover everything it read", reason=Reason.PUBLISH,
                               hint="fetch its inputs as declared sources and drop network = true")
            if not p.up_to_date:
                raise PibError(f"cannot publish {n}: it is not built for its current inputs "
                               f"({'; '.join(p.reasons)})", reason=Reason.PUBLISH, hint=f"run pib build {n} first")
        remotes = remote_stores(cfg)
        ctx = BuildContext(cfg, benv, floor)
        out = []
        with Log(cfg.workspace.log_dir / "publish.log") as log:
            for n in chosen:
                p = plans[n]
                warnings: list[str] = []
                stores = publish_one(ctx, p, p.comp.proto, log, remotes,
                                     recorded_output(cfg.workspace.state_dir, p), warn=warnings.append)
                out.append(Published(n, p.key, stores, tuple(warnings)))
        return out


# --------------------------------------------------------------------------
# rebuild --check


class RebuildCheck(NamedTuple):
    component: str
    key: str
    compared_with: str  # "store NAME" or "proto area"
    differences: tuple[tuple[str, str], ...]  # (path, what differs), in path order; empty: identical
    files: int

    @property
    def identical(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "key": self.key, "compared_with": self.compared_with,
                "identical": self.identical, "files": self.files,
                "differences": [{"path": p, "what": w} for p, w in self.differences]}


def rebuild_check(cfg: Config, name: str, *, wait_for_lock: bool = False, offline: bool = False) -> RebuildCheck:
    """Build `name` again into a scratch proto area and compare it, byte for byte, with what its key made:
    the stored artifact of that key (local store, then the remotes), else the proto area the last build of
    that key left."""
    from pib.artifacts import policy, transfer
    from pib.build.runner import proto_tmp
    from pib.fsutil import tree_differences, tree_entries
    from pib.run import Log

    comp = cfg.component(name)
    floor = check_floor(cfg.platform, allow_old=True)
    with workspace_lock(cfg) as lock:
        lock.acquire(wait=wait_for_lock)
        _require_checkouts(cfg, [name])
        ctx = BuildContext(cfg, build_env(cfg, install=False), floor)
        plans = plan(cfg, [name], ctx.benv)
        stale = [p.comp.name for p in plans if p.comp.name != name and not p.up_to_date]
        if stale:
            raise PibError(f"dependencies of {name} are not built for their current inputs: {', '.join(stale)}",
                           reason=Reason.BUILD, hint=f"run pib build {' '.join(stale)} first")
        p = next(x for x in plans if x.comp.name == name)
        ref = comp.proto.with_name(f".{comp.proto.name}.check-ref")
        scratch = proto_tmp(comp.proto)
        sweep(comp)
        remove_tree(ref)
        try:
            with Log(cfg.workspace.log_dir / f"{name}.rebuild-check.log") as log:
                stores = [] if offline else policy.remote_stores(cfg)
                keys = [*policy.trusted_keys(cfg, machine=False), policy.machine_signer()[1]]
                got = transfer.restore(name, p.key, stores, keys, ref, log, local_store=policy.local_store(cfg))
                if got.hit:
                    reference, against = ref, f"store {got.store}"
                elif p.record is not None and p.record.key == p.key and p.record.proto_changes(comp.proto) == []:
                    reference, against = comp.proto, "proto area"
                else:
                    raise PibError(f"nothing built under {name}'s key {p.key[:12]} to compare with",
                                   reason=Reason.BUILD, hint=f"run pib build {name} first")
                sources = None
                if comp.sources:
                    from pib.build.sources import Sources

                    sources = Sources(cfg, offline=offline)
                Builder(ctx, BuildOptions(), sources=sources).build_into(p, scratch, log, time.monotonic())
                diffs = tree_differences(reference, scratch)
                files = len(tree_entries(scratch))
        finally:
            remove_tree(ref)
            remove_tree(scratch)
        return RebuildCheck(name, p.key, against, tuple(diffs), files)
