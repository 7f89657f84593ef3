"""The build's view of the artifact stores (implements pib.build.runner.Artifacts).

The machine's local store comes first and is shared by every workspace; the
configured remotes follow. Artifacts of local builds enter the local store
signed by a per-user machine key, trusted only on this machine; anything
published to a remote is signed with the configured signing key, and only
when this run built it. An artifact this run did not build (up to date, or
restored) is published only as the entry it is, signed by a key trusted for
publishing (trust.public_keys, never the machine key): the machine key's
trust is never laundered into the publishing key's.

Every artifact's signed metadata carries the output digest of what it holds:
the equivalence the plan uses to key dependents before the artifact is
restored, checked against the restored proto area before it is believed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pib.artifacts import policy, transfer
from pib.artifacts.metadata import ArtifactInfo, CbeInfo, read_metadata
from pib.artifacts.signing import PublicKey, load_public_key
from pib.build import output, state
from pib.errors import PibError, Reason
from pib.fsutil import discard_tree, remove_tree
from pib.parallel import parallel_map
from pib.run import Log
from pib.store import NotFound, Store

if TYPE_CHECKING:
    from pib.build.context import BuildContext
    from pib.build.plan import Lookup, Plan
    from pib.config.types import ComponentConfig, Config


class StoreArtifacts:
    """The build's view of the stores (implements pib.build.runner.Artifacts)."""

    def __init__(self, ctx: BuildContext, *, offline: bool, require_prebuilt: bool = False) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.local = policy.local_store(ctx.cfg)
        self.remotes = [] if offline else policy.remote_stores(ctx.cfg)
        self._signer, machine_pub = policy.machine_signer()
        self.trusted = [*policy.trusted_keys(ctx.cfg, machine=False), machine_pub]
        self.warnings: list[str] = []
        self._known: dict[str, set[tuple[str, str]]] = {}  # remote name -> entries it has
        self._asked: set[tuple[str, str]] = set()  # entries prepare() asked the remotes about
        self._down: set[str] = set()
        self._lock = threading.Lock()
        self._require = require_prebuilt

    def _warn(self, text: str) -> None:
        with self._lock:
            if text not in self.warnings:
                self.warnings.append(text)

    def prepare(self, plans: Sequence[Plan]) -> None:
        """One concurrent existence round for every stale prebuilt component, per remote."""
        wanted = [(p.comp.name, p.key) for p in plans if p.comp.prebuilt and not p.local_only]
        if not wanted or not self.remotes:
            return
        self._asked.update(wanted)

        def ask(store: Store) -> tuple[str, set[tuple[str, str]] | None, str]:
            try:
                return store.name, store.has_many(wanted), ""
            except PibError as exc:
                return store.name, None, exc.message

        for name, found, error in parallel_map(ask, self.remotes):
            if found is None:
                self._down.add(name)
                then = ("what it would have provided is missing (--require-prebuilt)" if self._require
                        else "building locally what it would have provided")
                self._warn(f"store {name} is unavailable ({error}); {then}")
            else:
                self._known[name] = found

    def _candidates(self, plan: Plan) -> list[Store]:
        if plan.local_only:
            return []  # a dirty tree or a networked build never takes a shared artifact, and is never uploaded
        out = []
        for s in self.remotes:
            if s.name in self._down:
                continue
            known = self._known.get(s.name)
            # A key settled after prepare() (it waited for a dependency) was not asked about: try the store.
            if known is not None and (plan.comp.name, plan.key) in self._asked and \
                    (plan.comp.name, plan.key) not in known:
                continue
            out.append(s)
        return out

    def holders(self, plans: Sequence[Plan]) -> dict[str, tuple[str, ...]]:
        """Component -> the stores that hold the artifact of its key (local first), for keys prepare() asked
        about; what restore() would try, without fetching anything."""
        wanted = [(p.comp.name, p.key) for p in plans if p.key and p.comp.prebuilt]
        try:
            local = self.local.has_many(wanted) if wanted else set()
        except PibError as exc:
            self._warn(f"local store: {exc.message}")
            local = set()
        out: dict[str, tuple[str, ...]] = {}
        for p in plans:
            entry = (p.comp.name, p.key)
            if not p.key or not p.comp.prebuilt:
                continue
            found = [self.local.name] if entry in local else []
            found += [s.name for s in self._candidates(p) if entry in self._known.get(s.name, set())]
            out[p.comp.name] = tuple(found)
        return out

    def equivalence(self, comp: ComponentConfig, key: str) -> tuple[str, str] | None:
        """The signed output digest of (comp, key) and where it was found: local store first."""
        return equivalence([self.local, *(s for s in self.remotes if s.name not in self._down)], self.trusted,
                           comp.name, key, warn=self._warn)

    def restore(self, plan: Plan, proto: Path, log: Log) -> tuple[str | None, str, str | None]:
        outcome = transfer.restore(
            plan.comp.name, plan.key, self._candidates(plan), self.trusted, proto, log, local_store=self.local,
        )
        for prob in outcome.problems:
            self._warn(f"store {prob.store}: {plan.comp.name}: {prob.reason.value}: {prob.message}")
        if outcome.hit:
            # The signed equivalence is believed only when the bytes unpacked have that output digest.
            got = output.output_digest(proto)
            said = outcome.metadata.output_digest if outcome.metadata else None
            if output.is_current(said) and said != got:
                discard_tree(proto)
                with contextlib.suppress(PibError):
                    self.local.delete(plan.comp.name, plan.key)
                why = (f"artifact {plan.comp.name}/{plan.key[:12]} from {outcome.store} holds output {got[:15]}, "
                       f"its signed metadata says {str(said)[:15]}: refused")
                self._warn(f"store {outcome.store}: {plan.comp.name}: {Reason.VERIFY.value}: {why}")
                log.line(f"pib: {why}")
                return None, why, None
            return outcome.store, f"{outcome.bytes} bytes in {outcome.seconds:.1f}s", got
        if outcome.status == "error":
            return None, "artifact rejected or store failed: " + "; ".join(
                f"{p.store}: {p.message}" for p in outcome.problems), None
        # Every store asked: those tried now and those whose existence round already said no.
        asked = [] if plan.local_only else [s.name for s in self.remotes if s.name not in self._down]
        down = [] if plan.local_only else [s.name for s in self.remotes if s.name in self._down]
        where = ", ".join([self.local.name, *asked]) + (f" ({', '.join(down)} unavailable)" if down else "")
        return None, f"no artifact for this key in {where}" + (
            " (dirty tree: local store only)" if plan.source.dirty else
            " (network build: local store only)" if plan.local_only else ""), None

    def keep(self, plan: Plan, proto: Path, log: Log, output_digest: str) -> None:
        try:
            out = transfer.publish(artifact_info(self.ctx, plan, output_digest), proto, [self.local], self._signer,
                                   remote=False, log=log)
        except PibError as exc:
            self._warn(f"could not keep {plan.comp.name} in the local store: {exc.message}")
            return
        # A store that refused the entry (e.g. a full disk) reports it in the outcome, not by raising.
        for prob in out.problems:
            self._warn(f"could not keep {plan.comp.name} in the local store: {prob.message}")

    def publish(self, plan: Plan, proto: Path, log: Log, output_digest: str) -> tuple[str, ...]:
        if plan.local_only:
            log.line(f"pib: {plan.comp.name} is built with network access; its artifact stays local")
            return ()
        return publish_one(self.ctx, plan, proto, log, self.remotes, output_digest, warn=self._warn, local=self.local)

    def publish_missing(self, plans: Sequence[Plan], log: Log) -> dict[str, tuple[str, ...]]:
        targets = [s for s in self.remotes if policy.may_publish(self.cfg, s.name)]
        wanted = [(p.comp.name, p.key) for p in plans if not p.local_only]
        if not targets or not wanted:
            return {}
        have = dict(zip([s.name for s in targets], parallel_map(lambda s: s.has_many(wanted), targets), strict=True))
        publishers = policy.trusted_keys(self.cfg, machine=False)
        out: dict[str, tuple[str, ...]] = {}
        for p in plans:
            lacking = [s for s in targets if (p.comp.name, p.key) not in have[s.name]]
            if not lacking or p.source.dirty or p.local_only:
                continue
            names = ", ".join(s.name for s in lacking)
            work = transfer.scratch_dir(p.comp.proto, "publish")
            try:
                copied = transfer.copy_verified(p.comp.name, p.key, self.local, lacking, publishers, work)
            except PibError as exc:
                # Not built by this run, and no entry signed by a publishing key: never re-signed.
                log.line(f"pib: {p.comp.name}: not published to {names}: {exc.message}")
                self._warn(f"{p.comp.name} was not built by this run and the local store has no artifact of it "
                           f"signed by a key trusted for publishing, so it is not published to {names}; "
                           "rebuild it (pib ci --force) to publish it")
                continue
            finally:
                remove_tree(work)
            log.line(f"pib: {p.comp.name}: not in {names}; published the local store's entry as it is signed")
            if copied.problems:
                raise PibError(f"publishing {p.comp.name} failed: " + "; ".join(
                    f"{x.store}: {x.message}" for x in copied.problems), reason=Reason.STORE,
                    hint="check the store and its credentials, then run pib publish again")
            out[p.comp.name] = copied.published
        return out


def equivalence(stores: Sequence[Store], trusted: Sequence[PublicKey], component: str, key: str, *,
                warn: Callable[[str], None] | None = None) -> tuple[str, str] | None:
    """The output digest the signed metadata of (component, key) states in the first store that has one.

    Only the metadata is read (a few hundred bytes). An untrusted, unsigned or older entry (no output
    digest, or one of a retired format) is no equivalence.
    """
    for store in stores:
        try:
            meta = read_metadata(store.get_meta(component, key), trusted, component=component, key=key)
        except NotFound:
            continue
        except PibError as exc:
            if warn is not None:
                warn(f"store {store.name}: {component}: {exc.reason.value}: {exc.message}")
            continue
        if output.is_current(meta.output_digest):
            assert meta.output_digest is not None
            return meta.output_digest, f"equivalence from store {store.name}"
    return None


def lookup_without_building(cfg: Config, *, remotes: bool) -> Lookup:
    """Equivalences for `pib status` (local store only: no network) and `pib explain` (the remotes too)."""
    trusted = policy.trusted_keys(cfg, machine=False)
    public = policy.machine_key_paths()[1]
    if public.exists():
        trusted = [*trusted, load_public_key(public)]
    try:
        stores = [policy.local_store(cfg), *(policy.remote_stores(cfg) if remotes else [])]
    except PibError:
        stores = []

    def lookup(comp: ComponentConfig, key: str) -> tuple[str, str] | None:
        return equivalence(stores, trusted, comp.name, key)

    return lookup


def artifact_info(ctx: BuildContext, plan: Plan, output_digest: str) -> ArtifactInfo:
    """What the metadata of the artifact of `plan`, built here with that output digest, says."""
    k = ctx.benv.key
    return ArtifactInfo(plan.comp.name, plan.key, plan.doc, plan.source.dirty, str(ctx.floor.host),
                        CbeInfo(k["name"], k["version"], k["lock"]) if k else None, output_digest,
                        plan.source.head)


def recorded_output(state_dir: Path, plan: Plan) -> str:
    """The output digest recorded for the up-to-date proto area of `plan` (hashed now if none was recorded)."""
    rec = state.load(state_dir, plan.comp.name)
    if rec is not None and rec.key == plan.key and output.is_current(rec.output):
        assert rec.output is not None
        return rec.output
    return output.output_digest(plan.comp.proto)


def publish_one(ctx: BuildContext, plan: Plan, proto: Path, log: Log | None, remotes: Sequence[Store],
                output_digest: str, *,
                warn: Callable[[str], None] | None = None, local: Store | None = None) -> tuple[str, ...]:
    """Upload the artifact of `plan` to the remotes that take published artifacts; names of those that have it.

    A remote that already holds the key keeps its artifact; other bytes there are reported through `warn`.
    `local`: the local store also gets the published entry, so a later run that does not rebuild the
    component can publish that entry again (it is signed by the publishing key)."""
    targets = [s for s in remotes if policy.may_publish(ctx.cfg, s.name)]
    if not targets:
        raise PibError("no remote store to publish to", reason=Reason.PUBLISH,
                       hint="add a [[store]] (http or s3) to pib.toml or pib.local.toml")
    out = transfer.publish(artifact_info(ctx, plan, output_digest), proto, [*targets, *([local] if local else [])],
                           policy.publishing_signer(ctx.cfg), remote=True, log=log)
    problems = [p for p in out.problems if local is None or p.store != local.name]
    if problems:
        raise PibError(
            f"publishing {plan.comp.name} failed: " + "; ".join(f"{p.store}: {p.message}" for p in problems),
            reason=Reason.STORE,
            hint="check the store and its credentials, then run pib publish again",
        )
    for d in out.differing:
        if warn is not None:
            warn(f"store {d.store}: {d.message}")
    return tuple(n for n in out.published if local is None or n != local.name)
