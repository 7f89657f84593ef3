"""The component graph: plan (keys and staleness), then build, restore or skip.

Keys depend only on inputs (sources, recipe, CBE, baseline, key files and the
keys of dependencies), so the whole plan is known before anything runs: an
up-to-date component is skipped at once, and a stale one is restored from a
store or built in its build environment into a fresh proto area that replaces
the old one only when the build succeeded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from pib import keys, state
from pib.config import ComponentConfig, Config, topo_order
from pib.errors import PibError, Reason
from pib.fsutil import force_rmtree, remove_tree
from pib.run import Cancelled, Log, minimal_env, run
from pib.workspace import SourceState, source_state

if TYPE_CHECKING:
    from concurrent.futures import Future

T = TypeVar("T")
R = TypeVar("R")

# --------------------------------------------------------------------------
# Planning


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int = 8) -> list[R]:
    """fn over items on a few threads, results in order; the first exception is re-raised.

    Plain threads rather than concurrent.futures: its import alone is a
    noticeable part of a no-op build.
    """
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    next_index = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None or errors:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(workers, len(items)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class Plan(NamedTuple):
    comp: ComponentConfig
    source: SourceState
    doc: dict[str, Any]
    key: str
    record: state.Record | None
    reasons: tuple[str, ...]  # empty: up to date

    @property
    def up_to_date(self) -> bool:
        return not self.reasons


class BuildEnv(NamedTuple):
    """How builds run: the CBE's PATH and variables, or the minimal system one."""

    path: str
    env: Mapping[str, str]
    key: Mapping[str, str] | None  # the CBE fields of every key (None: no CBE)
    description: str


def default_env(cfg: Config) -> BuildEnv:
    return BuildEnv(path="/usr/local/bin:/usr/bin:/bin", env={}, key=None, description="host (no [cbe] configured)")


def plan(cfg: Config, names: Sequence[str] | None, benv: BuildEnv) -> list[Plan]:
    comps = topo_order(cfg, tuple(names) if names else None)
    index_dir = cfg.workspace.state_dir / "index"
    sources = dict(zip(
        [c.name for c in comps],
        parallel_map(lambda c: source_state(c.checkout, index_dir / c.name), comps),
        strict=True,
    ))
    plans: dict[str, Plan] = {}
    for c in comps:
        doc = keys.key_document(
            c,
            workspace=cfg.workspace.root,
            tree=sources[c.name].tree,
            cbe=benv.key,
            baseline=cfg.platform.min_version,
            dep_keys={d: plans[d].key for d in c.depends},
        )
        key = keys.digest(doc)
        rec = state.load(cfg.workspace.state_dir, c.name)
        plans[c.name] = Plan(c, sources[c.name], doc, key, rec, _reasons(c, key, doc, rec))
    return [plans[c.name] for c in comps]


def _reasons(c: ComponentConfig, key: str, doc: dict[str, Any], rec: state.Record | None) -> tuple[str, ...]:
    if rec is None:
        return ("never built",)
    out: list[str] = []
    if rec.key != key:
        for path, _old, _new in keys.diff(rec.doc, doc):
            out.append(f"{path} changed")
        if not out:
            out.append("key changed")
    if not rec.proto_intact(c.proto):
        out.append("proto area missing, emptied or replaced")
    return tuple(out)


# --------------------------------------------------------------------------
# Events and outcomes


class Event(NamedTuple):
    component: str
    state: str  # waiting | building | restoring | built | restored | up-to-date | failed | stopped | skipped | publishing
    elapsed: float = 0.0
    detail: str = ""


class Outcome(NamedTuple):
    component: str
    action: str  # up-to-date | built | restored | failed | stopped | skipped
    seconds: float
    key: str
    dirty: bool
    log: str | None = None
    detail: str = ""
    store: str | None = None
    published: tuple[str, ...] = ()
    command_seconds: float = 0.0


class BuildReport:
    """What a build did; filled in as it goes (the one mutable result)."""

    def __init__(self, policy: str = "stop") -> None:
        self.outcomes: list[Outcome] = []
        self.seconds = 0.0
        self.image: dict[str, Any] | None = None
        self.boot: dict[str, Any] | None = None
        self.error: PibError | None = None
        self.policy = policy
        self.warnings: list[str] = []

    @property
    def ok(self) -> bool:
        return self.error is None and all(o.action in ("up-to-date", "built", "restored") for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "on_failure": self.policy,
            "components": [
                {
                    "component": o.component,
                    "action": o.action,
                    "seconds": round(o.seconds, 3),
                    "key": o.key,
                    "dirty": o.dirty,
                    "log": o.log,
                    "detail": o.detail,
                    "store": o.store,
                    "published": list(o.published),
                }
                for o in self.outcomes
            ],
            "image": self.image,
            "boot": self.boot,
            "warnings": list(self.warnings),
            "error": self.error.to_json() if self.error else None,
        }


class Artifacts(Protocol):
    """Restore and publish prebuilt artifacts (implemented over the stores)."""

    warnings: list[str]

    def prepare(self, plans: Sequence[Plan]) -> None:
        """Look up every stale prebuilt component at once, before building starts."""
        ...

    def restore(self, plan: Plan, proto: Path, log: Log) -> tuple[str | None, str]:
        """Restore `plan` into `proto` atomically. (store name, note) on a hit, (None, why) on a miss."""
        ...

    def keep(self, plan: Plan, proto: Path, log: Log) -> None:
        """Put a fresh local build into the machine's local store."""
        ...

    def publish(self, plan: Plan, proto: Path, log: Log) -> tuple[str, ...]:
        """Upload to the remotes allowed to receive it; names of the stores written."""
        ...

    def publish_missing(self, plans: Sequence[Plan], log: Log) -> dict[str, tuple[str, ...]]:
        """Upload artifacts of components that were not built now (up to date or restored) to the
        remotes that lack them, e.g. after an earlier publish was interrupted."""
        ...


class BuildOptions(NamedTuple):
    jobs: int = 1
    keep_going: bool = False
    force: bool = False
    publish: bool = False
    require_prebuilt: bool = False


# --------------------------------------------------------------------------
# Running


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def proto_tmp(proto: Path) -> Path:
    return proto.with_name(f".{proto.name}.pib-new")


def replace_dir(new: Path, dest: Path) -> None:
    """Put `new` at `dest`, removing what was there; never a half tree at `dest`."""
    old = dest.with_name(f".{dest.name}.pib-old")
    remove_tree(old)
    if dest.exists() or dest.is_symlink():
        dest.rename(old)
    new.rename(dest)
    remove_tree(old)


def sweep(comp: ComponentConfig) -> None:
    """Remove leftovers of a killed earlier run beside the proto area."""
    if proto_tmp(comp.proto).exists():
        stop_orphans(proto_tmp(comp.proto))
    for leftover in (proto_tmp(comp.proto), comp.proto.with_name(f".{comp.proto.name}.pib-old")):
        if leftover.exists():
            remove_tree(leftover)
    # Scratch directories of restore and pack (the workspace lock is held, so none is in use).
    for kind in ("fetch", "unpack", "publish"):
        for leftover in comp.proto.parent.glob(f".{comp.proto.name}.{kind}-*"):
            force_rmtree(leftover)


def stop_orphans(destdir: Path) -> None:
    """SIGKILL build commands still writing into `destdir`, orphaned when an earlier pib was killed.

    Build commands run in sessions of their own, so killing pib leaves them running. Every process of
    a build inherits PIB_PROTO=destdir; the workspace lock is held, so none of them belongs to a live
    build. Without /proc (not Linux) there is nothing to find.
    """
    wanted = f"PIB_PROTO={destdir}".encode()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if wanted in environ:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def component_env(cfg: Config, plan: Plan, benv: BuildEnv, destdir: Path) -> dict[str, str]:
    c = plan.comp
    env = minimal_env(path=benv.path)
    build_dir = cfg.workspace.state_dir / "build" / c.name
    build_dir.mkdir(parents=True, exist_ok=True)
    # A private HOME: nothing from the user's dotfiles or ~/.local reaches a build.
    home = cfg.workspace.state_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env.update(benv.env)
    env.update({
        "DESTDIR": str(destdir),
        "PIB_PROTO": str(destdir),
        "PIB_COMPONENT": c.name,
        "PIB_KEY": plan.key,
        "PIB_BUILD_DIR": str(build_dir),
        "PIB_WORKSPACE": str(cfg.workspace.root),
        "PIB_CACHE": str(download_cache()),
        "MAKEFLAGS": f"-j{max(1, cfg.workspace.jobs)}",
    })
    for d in c.depends:
        dep = cfg.component(d)
        env[f"PIB_DEP_{_env_name(d)}"] = str(dep.proto)
    if "SOURCE_DATE_EPOCH" in os.environ:
        env["SOURCE_DATE_EPOCH"] = os.environ["SOURCE_DATE_EPOCH"]
    env.update(dict(c.env))
    return env


def download_cache() -> Path:
    """Where build scripts may keep downloads, shared by every workspace of the user."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pib" / "downloads"


def _env_name(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).upper()


class Builder:
    def __init__(
        self,
        cfg: Config,
        benv: BuildEnv,
        opts: BuildOptions,
        *,
        artifacts: Artifacts | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.benv = benv
        self.opts = opts
        self.artifacts = artifacts
        self.on_event = on_event or (lambda e: None)
        self.cancel = threading.Event()
        self.stamp = _stamp()

    def _emit(self, name: str, st: str, started: float | None = None, detail: str = "") -> None:
        self.on_event(Event(name, st, time.monotonic() - started if started else 0.0, detail))

    def run(self, plans: Sequence[Plan]) -> BuildReport:
        report = BuildReport(policy="keep-going" if self.opts.keep_going else "stop")
        t0 = time.monotonic()
        if self.opts.publish:
            dirty = [p.comp.name for p in plans if p.comp.prebuilt and p.source.dirty]
            if dirty:
                raise PibError(
                    f"cannot publish: {', '.join(dirty)} {'has' if len(dirty) == 1 else 'have'} uncommitted changes",
                    reason=Reason.PUBLISH,
                    hint="commit the changes (artifacts of dirty trees are never published), or build without --publish",
                )
        outcomes: dict[str, Outcome] = {}
        for p in plans:
            self._emit(p.comp.name, "waiting")
        if self.artifacts is not None and not self.opts.force:
            self.artifacts.prepare([p for p in plans if not p.up_to_date])
        for p in plans:
            if p.up_to_date and not self.opts.force and all(
                    outcomes.get(d) is not None for d in p.comp.depends):
                outcomes[p.comp.name] = Outcome(p.comp.name, "up-to-date", 0.0, p.key, p.source.dirty)
                self._emit(p.comp.name, "up-to-date")
        pending = [p for p in plans if p.comp.name not in outcomes]
        if pending:
            self._schedule(pending, outcomes)
        if self.opts.publish and self.artifacts is not None and all(
                o.action in ("up-to-date", "built", "restored") for o in outcomes.values()):
            report.error = self._publish_rest(plans, outcomes)
        report.outcomes = [outcomes[p.comp.name] for p in plans]
        report.seconds = time.monotonic() - t0
        if self.artifacts is not None:
            report.warnings = list(self.artifacts.warnings)
        failed = [o for o in report.outcomes if o.action == "failed"]
        if failed:
            first = failed[0]
            others = [o.component for o in report.outcomes if o.action == "stopped"]
            msg = f"{first.component} failed" + (f"; stopped: {', '.join(others)}" if others else "")
            report.error = PibError(msg, reason=Reason.PREBUILT_MISSING if first.detail.startswith("no prebuilt")
                                    else Reason.BUILD, detail=first.detail)
        return report

    def _publish_rest(self, plans: Sequence[Plan], outcomes: dict[str, Outcome]) -> PibError | None:
        assert self.artifacts is not None
        rest = [p for p in plans if p.comp.prebuilt and outcomes[p.comp.name].action in ("up-to-date", "restored")]
        if not rest:
            return None
        try:
            with Log(self.cfg.workspace.log_dir / f"publish.{self.stamp}.log") as log:
                done = self.artifacts.publish_missing(rest, log)
        except PibError as exc:
            return exc
        for name, stores in done.items():
            o = outcomes[name]
            outcomes[name] = Outcome(o.component, o.action, o.seconds, o.key, o.dirty, o.log, o.detail, o.store,
                                     stores, o.command_seconds)
        return None

    def _schedule(self, pending: list[Plan], outcomes: dict[str, Outcome]) -> None:
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        running: dict[Future[Outcome], Plan] = {}
        stopping = False
        with ThreadPoolExecutor(max_workers=max(1, self.opts.jobs)) as pool:
            try:
                while pending or running:
                    for p in list(pending):
                        deps = [outcomes.get(d) for d in p.comp.depends]
                        if any(o is not None and o.action in ("failed", "stopped", "skipped") for o in deps) or (
                            stopping and not running and not self.opts.keep_going
                        ):
                            pending.remove(p)
                            why = "a dependency failed" if any(deps) else "the build stopped after a failure"
                            outcomes[p.comp.name] = Outcome(p.comp.name, "skipped", 0.0, p.key, p.source.dirty, detail=why)
                            self._emit(p.comp.name, "skipped", detail=why)
                            continue
                        if stopping and not self.opts.keep_going:
                            continue
                        if not all(o is not None for o in deps):
                            continue
                        if p.up_to_date and not self.opts.force:
                            pending.remove(p)
                            outcomes[p.comp.name] = Outcome(p.comp.name, "up-to-date", 0.0, p.key, p.source.dirty)
                            self._emit(p.comp.name, "up-to-date")
                            continue
                        if len(running) >= max(1, self.opts.jobs):
                            continue
                        pending.remove(p)
                        running[pool.submit(self._one, p)] = p
                    if not running:
                        continue
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for fut in done:
                        p = running.pop(fut)
                        o = fut.result()
                        outcomes[p.comp.name] = o
                        if o.action == "failed" and not self.opts.keep_going:
                            stopping = True
                            self.cancel.set()
            except KeyboardInterrupt:
                self.cancel.set()
                for fut in running:
                    fut.cancel()
                wait(list(running))
                raise PibError("interrupted; running builds were stopped, nothing half-built was kept",
                               reason=Reason.INTERRUPTED) from None

    def _one(self, p: Plan) -> Outcome:
        c = p.comp
        start = time.monotonic()
        log_path = self.cfg.workspace.log_dir / f"{c.name}.{self.stamp}.log"
        with Log(log_path) as log:
            _link_latest(log_path, self.cfg.workspace.log_dir / f"{c.name}.log")
            log.line(f"pib: component {c.name}, key {p.key}")
            for r in p.reasons:
                log.line(f"pib: stale: {r}")
            sweep(c)
            try:
                return self._restore_or_build(p, log, start)
            except Cancelled as exc:
                remove_tree(proto_tmp(c.proto))
                self._emit(c.name, "stopped", start)
                log.line(f"pib: stopped: {exc.message}")
                return Outcome(c.name, "stopped", time.monotonic() - start, p.key, p.source.dirty, str(log_path),
                               detail="stopped because another component failed")
            except PibError as exc:
                remove_tree(proto_tmp(c.proto))
                log.line(f"pib: failed: {exc.message}")
                self._emit(c.name, "failed", start, exc.message)
                detail = exc.message + (f"\n{exc.detail}" if exc.detail else "")
                return Outcome(c.name, "failed", time.monotonic() - start, p.key, p.source.dirty, str(log_path),
                               detail=detail)

    def _restore_or_build(self, p: Plan, log: Log, start: float) -> Outcome:
        c = p.comp
        note = ""
        if c.prebuilt and self.artifacts is not None and not self.opts.force:
            self._emit(c.name, "restoring", start)
            store, note = self.artifacts.restore(p, c.proto, log)
            if store is not None:
                self._finish(p, "restored", start, store=store)
                self._emit(c.name, "restored", start, f"from {store}")
                return Outcome(c.name, "restored", time.monotonic() - start, p.key, p.source.dirty, str(log.path),
                               detail=note, store=store)
            log.line(f"pib: no prebuilt artifact: {note}")
            if self.opts.require_prebuilt:
                raise PibError(f"no prebuilt artifact for {c.name} ({note})", reason=Reason.PREBUILT_MISSING,
                               hint="publish one from CI, or build without --require-prebuilt")
        self._emit(c.name, "building", start, note)
        new = proto_tmp(c.proto)
        remove_tree(new)
        try:
            new.mkdir(parents=True)
        except OSError as exc:
            raise PibError(f"cannot create {new}: {exc.strerror or exc}", reason=Reason.BUILD,
                           hint="free space (or fix permissions) where the proto area lives") from exc
        env = component_env(self.cfg, p, self.benv, new)
        res = run(list(c.build), cwd=c.checkout, env=env, log=log, cancel=self.cancel, reason=Reason.BUILD,
                  what=f"build of {c.name}")
        after = source_state(c.checkout, self.cfg.workspace.state_dir / "index" / c.name)
        if after.tree != p.source.tree:
            log.line("pib: warning: the build changed its own source tree (files not in .gitignore?); "
                     "the next build will see a different key")
        replace_dir(new, c.proto)
        published: tuple[str, ...] = ()
        if c.prebuilt and self.artifacts is not None:
            self.artifacts.keep(p, c.proto, log)
            if self.opts.publish:
                self._emit(c.name, "publishing", start)
                published = self.artifacts.publish(p, c.proto, log)
        self._finish(p, "built", start)
        self._emit(c.name, "built", start, note)
        return Outcome(c.name, "built", time.monotonic() - start, p.key, p.source.dirty, str(log.path),
                       detail=note, published=published, command_seconds=res.seconds)

    def _finish(self, p: Plan, action: str, start: float, store: str | None = None) -> None:
        state.save(self.cfg.workspace.state_dir, state.Record(
            component=p.comp.name, key=p.key, doc=p.doc, action=action, finished=state.now(),
            seconds=time.monotonic() - start, proto=state.ProtoFingerprint.of(p.comp.proto),
            dirty=p.source.dirty, store=store,
        ))


def _link_latest(target: Path, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}{threading.get_ident()}")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target.name)
        os.replace(tmp, link)
    except OSError:
        pass
