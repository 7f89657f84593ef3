"""Running a plan: skip, restore or build each component, in dependency order.

An up-to-date component is skipped at once; a stale one is restored from a
store or built in its build environment into a fresh proto area that replaces
the old one only when the build succeeded. Each success records the output
digest of its proto area; a dependent's key is settled from the digests its
dependencies really have just before it runs, so a dependency rebuilt into
the same bytes leaves it up to date (early cutoff).
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pib.build import output, state
from pib.build.checkout import changed_files, source_state
from pib.build.env import component_env
from pib.build.plan import Plan, settle
from pib.build.sandbox import Sandbox
from pib.config.types import ComponentConfig
from pib.errors import PibError, Reason
from pib.fsutil import aside, remove_tree, replace_dir, symlink_atomic
from pib.run import Cancelled, Log, Result, run

if TYPE_CHECKING:
    from concurrent.futures import Future

    from pib.build.context import BuildContext
    from pib.build.sources import Sources

# --------------------------------------------------------------------------
# Events and outcomes


class State(enum.StrEnum):
    """A component's state in a build; the values appear in --json output, reports and state records."""

    WAITING = "waiting"
    BUILDING = "building"
    RESTORING = "restoring"
    PUBLISHING = "publishing"
    UP_TO_DATE = "up-to-date"
    BUILT = "built"
    RESTORED = "restored"
    FAILED = "failed"
    STOPPED = "stopped"
    SKIPPED = "skipped"
    STALE = "stale"  # `pib status`: not up to date


DONE = frozenset({State.UP_TO_DATE, State.BUILT, State.RESTORED})  # outcomes of a component that is ready
NOT_DONE = frozenset({State.FAILED, State.STOPPED, State.SKIPPED})  # outcomes that stop its dependents
# After an interrupt, how long running builds get to stop (they are killed at once) before pib stops waiting.
STOP_WAIT = 5.0


class Event(NamedTuple):
    component: str
    state: State
    elapsed: float = 0.0
    detail: str = ""


class Outcome(NamedTuple):
    component: str
    action: State  # one of DONE or NOT_DONE
    seconds: float
    key: str
    dirty: bool
    log: str | None = None
    detail: str = ""
    store: str | None = None
    published: tuple[str, ...] = ()
    command_seconds: float = 0.0
    output: str | None = None  # output digest of the proto area (for a component that is ready)
    reason: Reason = Reason.BUILD  # why a failed one failed (WORKSPACE: pib could not write its own files)


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
        self.sources_uploaded: dict[str, list[str]] = {}  # store -> pinned files it was sent
        self.cbe_published: list[str] = []  # stores the CBE prefix was published to
        # Early cutoff: component rebuilt (or restored) for new inputs into its previous output -> the
        # dependents that stayed up to date because of that.
        self.cutoff: dict[str, list[str]] = {}

    @property
    def ok(self) -> bool:
        return self.error is None and all(o.action in DONE for o in self.outcomes)

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
                    "output": o.output,
                }
                for o in self.outcomes
            ],
            "image": self.image,
            "boot": self.boot,
            "warnings": list(self.warnings),
            "sources_uploaded": self.sources_uploaded,
            "cbe_published": self.cbe_published,
            "cutoff": self.cutoff,
            "error": self.error.to_json() if self.error else None,
        }


class Artifacts(Protocol):
    """Restore and publish prebuilt artifacts (implemented over the stores)."""

    warnings: list[str]

    def prepare(self, plans: Sequence[Plan]) -> None:
        """Look up every stale prebuilt component at once, before building starts."""
        ...

    def restore(self, plan: Plan, proto: Path, log: Log) -> tuple[str | None, str, str | None]:
        """Restore `plan` into `proto` atomically, its output digest checked against the signed one.

        (store name, note, output digest) on a hit, (None, why, None) on a miss.
        """
        ...

    def keep(self, plan: Plan, proto: Path, log: Log, output_digest: str) -> None:
        """Put a fresh local build into the machine's local store."""
        ...

    def publish(self, plan: Plan, proto: Path, log: Log, output_digest: str) -> tuple[str, ...]:
        """Upload to the remotes allowed to receive it; names of the stores written."""
        ...

    def equivalence(self, comp: ComponentConfig, key: str) -> tuple[str, str] | None:
        """The signed output digest of (comp, key) in the stores, and where it was found."""
        ...

    def holders(self, plans: Sequence[Plan]) -> dict[str, tuple[str, ...]]:
        """Component -> the stores holding its key's artifact (after prepare), without fetching it."""
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
    forced: tuple[str, ...] = ()  # with force: only these are rebuilt (empty: all); their dependencies are not
    # A CI job's build: every prebuilt component but `targets` must be up to date or restored, never built
    # on this machine (one that is not prebuilt is in no store: it is built where it is needed).
    deps_from_store: bool = False
    targets: tuple[str, ...] = ()

    def forces(self, name: str) -> bool:
        return self.force and (not self.forced or name in self.forced)


# --------------------------------------------------------------------------
# Running


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def proto_tmp(proto: Path) -> Path:
    return proto.with_name(f".{proto.name}.pib-new")


def sweep(comp: ComponentConfig, siblings: Collection[str] | None = None) -> None:
    """Remove leftovers of a killed earlier run beside the proto area.

    `siblings`: the names in the proto area's directory when the caller listed it already (one listing
    for every component sharing that directory, not one glob per component).
    """
    if siblings is None:
        try:
            siblings = os.listdir(comp.proto.parent)
        except OSError:
            return
    tmp = proto_tmp(comp.proto)
    if tmp.name in siblings:
        stop_orphans(tmp)
    gone = (tmp.name, aside(comp.proto).name)
    # Scratch directories of restore and pack (the workspace lock is held, so none is in use).
    scratch = tuple(f".{comp.proto.name}.{kind}-" for kind in ("fetch", "unpack", "publish"))
    for leftover in siblings:
        if leftover[:1] == "." and (leftover in gone or leftover.startswith(scratch)):
            remove_tree(comp.proto.parent / leftover)


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


class Builder:
    def __init__(
        self,
        ctx: BuildContext,
        opts: BuildOptions,
        *,
        artifacts: Artifacts | None = None,
        sources: Sources | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.sources = sources
        self.cfg = ctx.cfg
        self.opts = opts
        self.artifacts = artifacts
        self.on_event = on_event or (lambda e: None)
        self.cancel = threading.Event()
        self.stamp = _stamp()
        self.sandbox = Sandbox(ctx.cfg)
        self.warnings: list[str] = []
        self.settled: dict[str, Plan] = {}  # plans re-keyed from their dependencies' real outputs

    def _emit(self, name: str, st: State, started: float | None = None, detail: str = "") -> None:
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
            self._emit(p.comp.name, State.WAITING)
        if self.artifacts is not None:
            self.artifacts.prepare([p for p in plans
                                    if p.key and not p.up_to_date and not self.opts.forces(p.comp.name)])
        for p in plans:
            if p.up_to_date and not self.opts.forces(p.comp.name) and all(
                    outcomes.get(d) is not None for d in p.comp.depends):
                outcomes[p.comp.name] = self._up_to_date(p)
        pending = [p for p in plans if p.comp.name not in outcomes]
        if pending:
            self.sandbox.bwrap()  # a sandbox that is required but cannot be made stops the build here
            self._schedule(pending, outcomes)
        plans = [self.settled.get(p.comp.name, p) for p in plans]
        report.cutoff = _cutoffs(plans, outcomes)
        if self.opts.publish and self.artifacts is not None and all(
                o.action in DONE for o in outcomes.values()):
            report.error = self._publish_rest(plans, outcomes)
        report.outcomes = [outcomes[p.comp.name] for p in plans]
        report.seconds = time.monotonic() - t0
        report.warnings = list(self.warnings)
        if self.artifacts is not None:
            report.warnings += self.artifacts.warnings
        report.warnings += self.sandbox.warnings
        failed = [o for o in report.outcomes if o.action == State.FAILED]
        if failed:
            first = failed[0]
            others = [o.component for o in report.outcomes if o.action == State.STOPPED]
            missing = first.detail.startswith("no prebuilt")
            own = first.reason is Reason.WORKSPACE  # pib's own files, not the build: say which
            msg = (first.detail.split("\n")[0] if missing or own else f"{first.component} failed") + (
                f"; stopped: {', '.join(others)}" if others else "")
            reason = Reason.WORKSPACE if first.reason is Reason.WORKSPACE else \
                Reason.PREBUILT_MISSING if missing else Reason.BUILD
            # pib's own files (not the build) were the problem: what to do is the failure's hint.
            hint = first.detail.partition("\n  hint: ")[2].partition("\n")[0] if reason is Reason.WORKSPACE else ""
            report.error = PibError(msg, reason=reason, detail=first.detail, hint=hint)
        return report

    def _publish_rest(self, plans: Sequence[Plan], outcomes: dict[str, Outcome]) -> PibError | None:
        assert self.artifacts is not None
        rest = [p for p in plans if p.comp.prebuilt and outcomes[p.comp.name].action in (State.UP_TO_DATE, State.RESTORED)]
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
        pool = ThreadPoolExecutor(max_workers=max(1, self.opts.jobs))
        interrupted = False
        try:
            try:
                while pending or running:
                    for p in list(pending):
                        deps = [outcomes.get(d) for d in p.comp.depends]
                        if any(o is not None and o.action in NOT_DONE for o in deps) or (
                            stopping and not running and not self.opts.keep_going
                        ):
                            pending.remove(p)
                            why = "a dependency failed" if any(deps) else "the build stopped after a failure"
                            outcomes[p.comp.name] = Outcome(p.comp.name, State.SKIPPED, 0.0, p.key, p.source.dirty, detail=why)
                            self._emit(p.comp.name, State.SKIPPED, detail=why)
                            continue
                        if stopping and not self.opts.keep_going:
                            continue
                        if not all(o is not None for o in deps):
                            continue
                        q = self._settle(p, outcomes)
                        if q.up_to_date and not self.opts.forces(q.comp.name):
                            pending.remove(p)
                            outcomes[q.comp.name] = self._up_to_date(q)
                            continue
                        if len(running) >= max(1, self.opts.jobs):
                            continue
                        pending.remove(p)
                        running[pool.submit(self._one, q)] = q
                    if not running:
                        continue
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for fut in done:
                        p = running.pop(fut)
                        o = fut.result()
                        outcomes[p.comp.name] = o
                        if o.action == State.FAILED and not self.opts.keep_going:
                            stopping = True
                            self.cancel.set()
            except KeyboardInterrupt:
                interrupted = True
                self.cancel.set()
                for fut in running:
                    fut.cancel()
                # Builds end as soon as they see the cancel; a store request that never returns is not waited
                # for past the grace (the command line then ends the process).
                wait(list(running), timeout=STOP_WAIT)
                raise PibError("interrupted; running builds were stopped, nothing half-built was kept",
                               reason=Reason.INTERRUPTED) from None
        finally:
            pool.shutdown(wait=not interrupted, cancel_futures=True)

    def _up_to_date(self, p: Plan) -> Outcome:
        out = p.record.output if p.record is not None else None
        if not output.is_current(out):
            # A record from before output digests: the intact proto area is what the key built.
            out = output.output_digest(p.comp.proto)
            self._finish(p, State(p.record.action) if p.record else State.BUILT, time.monotonic(), out,
                         store=p.record.store if p.record else None)
        self._emit(p.comp.name, State.UP_TO_DATE)
        return Outcome(p.comp.name, State.UP_TO_DATE, 0.0, p.key, p.source.dirty, output=out)

    def _settle(self, p: Plan, outcomes: dict[str, Outcome]) -> Plan:
        """`p` keyed by what its dependencies really hold now that they are done (they all are)."""
        if not p.comp.depends:
            return p
        if p.comp.name in self.settled:
            return self.settled[p.comp.name]
        outs = {d: outcomes[d].output for d in p.comp.depends}
        if not all(output.is_current(o) for o in outs.values()):
            raise PibError(f"{p.comp.name}: a dependency has no output digest", reason=Reason.INTERNAL)
        new = settle(self.cfg, self.ctx.benv, p, {d: o for d, o in outs.items() if o is not None})
        self.settled[p.comp.name] = new
        return new

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
                self._emit(c.name, State.STOPPED, start)
                log.line(f"pib: stopped: {exc.message}")
                return Outcome(c.name, State.STOPPED, time.monotonic() - start, p.key, p.source.dirty, str(log_path),
                               detail="stopped because another component failed")
            except PibError as exc:
                remove_tree(proto_tmp(c.proto))
                log.line(f"pib: failed: {exc.message}")
                self._emit(c.name, State.FAILED, start, exc.message)
                detail = exc.message + (f"\n  hint: {exc.hint}" if exc.hint else "") + \
                    (f"\n{exc.detail}" if exc.detail else "")
                return Outcome(c.name, State.FAILED, time.monotonic() - start, p.key, p.source.dirty, str(log_path),
                               detail=detail, reason=exc.reason)

    def _restore_or_build(self, p: Plan, log: Log, start: float) -> Outcome:
        c = p.comp
        note = ""
        if c.prebuilt and self.artifacts is not None and not self.opts.forces(c.name):
            self._emit(c.name, State.RESTORING, start)
            store, note, restored = self.artifacts.restore(p, c.proto, log)
            if store is not None and restored is not None:
                self._check_reproducible(p, restored, f"restored from {store}")
                self._finish(p, State.RESTORED, start, restored, store=store)
                self._emit(c.name, State.RESTORED, start, f"from {store}")
                return Outcome(c.name, State.RESTORED, time.monotonic() - start, p.key, p.source.dirty, str(log.path),
                               detail=note, store=store, output=restored)
            log.line(f"pib: no prebuilt artifact: {note}")
            if self.opts.require_prebuilt:
                raise PibError(f"no prebuilt artifact for {c.name} ({note})", reason=Reason.PREBUILT_MISSING,
                               hint="publish one from CI, or build without --require-prebuilt")
        # A component that is not prebuilt is never in a store: the job that needs it builds it (the image job).
        if self.opts.deps_from_store and c.prebuilt and c.name not in self.opts.targets:
            raise PibError(f"no prebuilt artifact for dependency {c.name} ({note}); --deps-from-store never builds "
                           "a prebuilt dependency", reason=Reason.PREBUILT_MISSING,
                           hint=f"build and publish {c.name} first (its own CI job), or build without --deps-from-store")
        self._emit(c.name, State.BUILDING, start, note)
        new = proto_tmp(c.proto)
        res = self.build_into(p, new, log, start)
        replace_dir(new, c.proto)
        # Hashed in place, after the build: the very bytes that are recorded, kept and published.
        digest = output.output_digest(c.proto)
        log.line(f"pib: output {digest}")
        self._check_reproducible(p, digest, "rebuilt")
        published: tuple[str, ...] = ()
        if c.prebuilt and self.artifacts is not None:
            self.artifacts.keep(p, c.proto, log, digest)
            if self.opts.publish:
                self._emit(c.name, State.PUBLISHING, start)
                published = self.artifacts.publish(p, c.proto, log, digest)
        self._finish(p, State.BUILT, start, digest)
        self._emit(c.name, State.BUILT, start, note)
        return Outcome(c.name, State.BUILT, time.monotonic() - start, p.key, p.source.dirty, str(log.path),
                       detail=note, published=published, command_seconds=res.seconds, output=digest)

    def build_into(self, p: Plan, dest: Path, log: Log, start: float) -> Result:
        """Run the build of `p` into a fresh directory `dest` (the next proto area, or a scratch one)."""
        c = p.comp
        remove_tree(dest)
        try:
            dest.mkdir(parents=True)
        except OSError as exc:
            raise PibError(f"cannot create {dest}: {exc.strerror or exc}", reason=Reason.BUILD,
                           hint="free space (or fix permissions) where the proto area lives") from exc
        staged = None
        if c.sources:
            if self.sources is None:
                raise PibError(f"{c.name} declares sources but this build fetches none", reason=Reason.INTERNAL)
            self._emit(c.name, State.BUILDING, start, "fetching sources")
            staged = self.sources.stage(c.name, c.sources, log)
        env = component_env(self.cfg, p, self.ctx.benv, dest, sources_dir=staged)
        with self.sandbox.source_copy(c) as copy:
            argv, env = self.sandbox.wrap(p, c.build, env, destdir=dest, source=copy)
            res = run(argv, cwd=c.checkout, env=env, log=log, cancel=self.cancel, reason=Reason.BUILD,
                      what=f"build of {c.name}")
        # The key names the content the build was planned for; if that is not what it read, nothing is kept.
        after = source_state(c.checkout, self.cfg.workspace.state_dir / "index" / c.name)
        if after.tree != p.source.tree or after.head != p.source.head:
            changed = changed_files(c.checkout, p.source.tree, after.tree)
            listed = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise PibError(
                f"the sources of {c.name} changed during its build ({listed or 'HEAD moved'}); "
                "the build was not recorded, kept or published",
                reason=Reason.SOURCE,
                hint="put build products in .gitignore, and do not change a checkout while it builds; "
                     "then build again",
            )
        # What a restore would refuse is not kept either: it would reach the image, the stores and
        # dependents, and steps outside the sandbox would follow a link out of the tree.
        refused = output.refusals(dest)
        if refused:
            remove_tree(dest)
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            raise PibError(
                f"the build of {c.name} left {refused[0]}{more}; nothing was put in place, kept or published",
                reason=Reason.BUILD, detail="\n".join(refused),
                hint="a proto area holds only directories, regular files and symlinks that stay inside it: "
                     "set modes and owners in the manifest (the image takes them from there) and make links "
                     "relative, within the proto area")
        return res

    def _check_reproducible(self, p: Plan, digest: str, how: str) -> None:
        """Say loudly when one input key gave two outputs: the component is not reproducible."""
        rec = p.record
        if rec is not None and rec.key == p.key and output.is_current(rec.output) and rec.output != digest:
            self.warnings.append(
                f"{p.comp.name} is not reproducible: key {p.key[:12]} gave output {str(rec.output)[:15]} before, "
                f"{digest[:15]} now ({how}); its dependents follow the new output")

    def _finish(self, p: Plan, action: State, start: float, digest: str, store: str | None = None) -> None:
        state.save(self.cfg.workspace.state_dir, state.Record(
            component=p.comp.name, key=p.key, doc=p.doc, action=action, finished=state.now(),
            seconds=time.monotonic() - start, proto=state.ProtoFingerprint.of(p.comp.proto),
            dirty=p.source.dirty, store=store, files=state.scan(p.comp.proto), output=digest,
            head=p.source.head,
        ))


def _cutoffs(plans: Sequence[Plan], outcomes: dict[str, Outcome]) -> dict[str, list[str]]:
    """Components rebuilt or restored for new inputs into their previous output, and the dependents
    that stayed up to date because of that."""
    out: dict[str, list[str]] = {}
    for p in plans:
        o = outcomes.get(p.comp.name)
        rec = p.record
        if (o is None or o.action not in (State.BUILT, State.RESTORED) or rec is None or rec.key == p.key
                or rec.output != o.output):
            continue
        kept = [q.comp.name for q in plans if p.comp.name in q.comp.depends
                and (qo := outcomes.get(q.comp.name)) is not None and qo.action == State.UP_TO_DATE]
        if kept:
            out[p.comp.name] = kept
    return out


def _link_latest(target: Path, link: Path) -> None:
    with contextlib.suppress(OSError):
        symlink_atomic(target.name, link)
