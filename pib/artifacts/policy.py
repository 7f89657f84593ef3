"""Prebuilt artifacts for the build: which stores, which keys are trusted, and
the publishing rules of the workspace.

The machine's local store comes first and is shared by every workspace; the
configured remotes follow. Artifacts of local builds enter the local store
signed by a per-user machine key, trusted only on this machine; anything
published to a remote is signed with the configured signing key.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pib import artifacts
from pib.build import parallel_map
from pib.config import Config, StoreConfig
from pib.errors import PibError, Reason
from pib.run import Log
from pib.signing import PublicKey, Signer, generate_keypair, load_public_key, load_signer
from pib.store import HttpStoreSpec, LocalStoreSpec, S3StoreSpec, Store, StoreSpec, open_store

if TYPE_CHECKING:
    from pib.build import BuildEnv, Plan
    from pib.platform import FloorCheck


def machine_key_paths() -> tuple[Path, Path]:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "pib"
    return base / "machine.key", base / "machine.pub"


def machine_signer() -> tuple[Signer, PublicKey]:
    """This user's machine key, made on first use: it vouches for local builds in the local store."""
    private, public = machine_key_paths()
    if not private.exists() or not public.exists():
        private.parent.mkdir(parents=True, exist_ok=True)
        generate_keypair(private, public)
    return load_signer(private), load_public_key(public)


def store_spec(s: StoreConfig) -> StoreSpec:
    if s.type == "local":
        assert s.path is not None
        return LocalStoreSpec(s.path, None, s.name)
    if s.type == "http":
        assert s.url is not None
        return HttpStoreSpec(s.name, s.url, s.token_env, s.user_env, s.password_env, s.timeout, s.retries)
    assert s.bucket is not None
    return S3StoreSpec(s.name, s.bucket, s.prefix, s.endpoint_url, s.region, s.profile, s.timeout, s.retries)


def store_specs(cfg: Config) -> list[StoreSpec]:
    """The machine's local store, then the configured ones, in lookup order."""
    return [LocalStoreSpec(cfg.local_store.path, cfg.local_store.quota, "local"),
            *(store_spec(s) for s in cfg.stores)]


def local_store(cfg: Config) -> Store:
    return open_store(LocalStoreSpec(cfg.local_store.path, cfg.local_store.quota, "local"))


def remote_stores(cfg: Config) -> list[Store]:
    return [open_store(store_spec(s)) for s in cfg.stores]


def trusted_keys(cfg: Config, *, machine: bool = True) -> list[PublicKey]:
    keys: list[PublicKey] = []
    for path in cfg.trust.public_keys:
        try:
            keys.append(load_public_key(path))
        except PibError as exc:
            raise PibError(f"cannot load trusted public key {path}: {exc.message}", reason=Reason.CONFIG,
                           hint="fix trust.public_keys in pib.toml") from exc
    if machine:
        keys.append(machine_signer()[1])
    return keys


def publishing_signer(cfg: Config) -> Signer:
    """The key that signs artifacts for shared stores: trust.signing_key, or the variable trust.signing_key_env."""
    if cfg.trust.signing_key is not None:
        return load_signer(cfg.trust.signing_key)
    env = cfg.trust.signing_key_env
    if env and os.environ.get(env):
        return load_signer(os.environ[env])
    raise PibError(
        "publishing needs a signing key, and none is configured",
        reason=Reason.PUBLISH,
        hint=f"make one with `pib keygen`, then set {env or 'PIB_SIGNING_KEY'} to the private key file "
             "(or trust.signing_key), and add the public key to trust.public_keys",
    )


def check_publish_policy(cfg: Config, floor: FloorCheck, *, ci: bool = False) -> None:
    """The workspace's publishing rules (trust.publish, trust.require_oldest_platform).

    ci: the caller is `pib ci`, which is CI by definition.
    """
    policy = cfg.trust.publish
    if policy == "never":
        raise PibError("publishing is disabled for this workspace (trust.publish = \"never\")",
                       reason=Reason.PUBLISH, hint="build without --publish")
    if policy == "ci" and not ci and not os.environ.get("CI"):
        raise PibError(
            "publishing is reserved for CI in this workspace (trust.publish = \"ci\") and CI is not set",
            reason=Reason.PUBLISH,
            hint="publish from CI (pib ci), or set trust.publish = \"always\" in pib.local.toml",
        )
    if floor.overridden:
        raise PibError("this host is older than the oldest supported platform: its artifacts are never published",
                       reason=Reason.PUBLISH)
    if cfg.trust.require_oldest_platform and cfg.platform.min_version and floor.host.version != cfg.platform.min_version:
        raise PibError(
            f"published artifacts must be built on the oldest supported platform {cfg.platform.min_version}; "
            f"this host runs {floor.host.version}",
            reason=Reason.PUBLISH,
            hint="publish from a build machine running the oldest supported platform",
        )


class StoreArtifacts:
    """The build's view of the stores (implements pib.build.Artifacts)."""

    def __init__(self, cfg: Config, *, offline: bool, floor: FloorCheck, benv: BuildEnv) -> None:
        self.cfg = cfg
        self.local = local_store(cfg)
        self.remotes = [] if offline else remote_stores(cfg)
        self.floor = floor
        self.benv = benv
        self._signer, machine_pub = machine_signer()
        self.trusted = [*trusted_keys(cfg, machine=False), machine_pub]
        self.warnings: list[str] = []
        self._known: dict[str, set[tuple[str, str]]] = {}  # remote name -> entries it has
        self._down: set[str] = set()
        self._lock = threading.Lock()

    @property
    def cbe_info(self) -> artifacts.CbeInfo | None:
        k = self.benv.key
        return artifacts.CbeInfo(k["name"], k["version"], k["lock"]) if k else None

    def _warn(self, text: str) -> None:
        with self._lock:
            if text not in self.warnings:
                self.warnings.append(text)

    def prepare(self, plans: Sequence[Plan]) -> None:
        """One concurrent existence round for every stale prebuilt component, per remote."""
        wanted = [(p.comp.name, p.key) for p in plans if p.comp.prebuilt and not p.source.dirty]
        if not wanted or not self.remotes:
            return

        def ask(store: Store) -> tuple[str, set[tuple[str, str]] | None, str]:
            try:
                return store.name, store.has_many(wanted), ""
            except PibError as exc:
                return store.name, None, exc.message

        for name, found, error in parallel_map(ask, self.remotes):
            if found is None:
                self._down.add(name)
                self._warn(f"store {name} is unavailable ({error}); building locally what it would have provided")
            else:
                self._known[name] = found

    def _candidates(self, plan: Plan) -> list[Store]:
        if plan.source.dirty:
            return []  # a dirty tree never takes a shared artifact, and is never uploaded
        out = []
        for s in self.remotes:
            if s.name in self._down:
                continue
            known = self._known.get(s.name)
            if known is not None and (plan.comp.name, plan.key) not in known:
                continue
            out.append(s)
        return out

    def restore(self, plan: Plan, proto: Path, log: Log) -> tuple[str | None, str]:
        outcome = artifacts.restore(
            plan.comp.name, plan.key, self._candidates(plan), self.trusted, proto, log, local_store=self.local,
        )
        for prob in outcome.problems:
            self._warn(f"store {prob.store}: {plan.comp.name}: {prob.reason.value}: {prob.message}")
        if outcome.hit:
            return outcome.store, f"{outcome.bytes} bytes in {outcome.seconds:.1f}s"
        if outcome.status == "error":
            return None, "artifact rejected or store failed: " + "; ".join(
                f"{p.store}: {p.message}" for p in outcome.problems)
        where = ", ".join(["local", *(s.name for s in self._candidates(plan))])
        return None, f"no artifact for this key in {where}" + (" (dirty tree: local store only)"
                                                                if plan.source.dirty else "")

    def keep(self, plan: Plan, proto: Path, log: Log) -> None:
        try:
            out = artifacts.publish(
                plan.comp.name, plan.key, plan.doc, proto, [self.local], self._signer,
                dirty=plan.source.dirty, builder_platform=str(self.floor.host), cbe_info=self.cbe_info,
                remote=False, log=log,
            )
        except PibError as exc:
            self._warn(f"could not keep {plan.comp.name} in the local store: {exc.message}")
            return
        # A store that refused the entry (e.g. a full disk) reports it in the outcome, not by raising.
        for prob in out.problems:
            self._warn(f"could not keep {plan.comp.name} in the local store: {prob.message}")

    def publish(self, plan: Plan, proto: Path, log: Log) -> tuple[str, ...]:
        return publish_one(self.cfg, plan, proto, log, self.remotes, self.floor, self.cbe_info)

    def publish_missing(self, plans: Sequence[Plan], log: Log) -> dict[str, tuple[str, ...]]:
        targets = [s for s in self.remotes if _may_publish(self.cfg, s.name)]
        wanted = [(p.comp.name, p.key) for p in plans if not p.source.dirty]
        if not targets or not wanted:
            return {}
        have = dict(zip([s.name for s in targets], parallel_map(lambda s: s.has_many(wanted), targets), strict=True))
        out: dict[str, tuple[str, ...]] = {}
        for p in plans:
            lacking = [s for s in targets if (p.comp.name, p.key) not in have[s.name]]
            if lacking and not p.source.dirty:
                log.line(f"pib: {p.comp.name}: not in {', '.join(s.name for s in lacking)}; publishing")
                out[p.comp.name] = publish_one(self.cfg, p, p.comp.proto, log, lacking, self.floor, self.cbe_info)
        return out


def publish_one(
    cfg: Config, plan: Plan, proto: Path, log: Log | None, remotes: Sequence[Store], floor: FloorCheck,
    cbe_info: artifacts.CbeInfo | None,
) -> tuple[str, ...]:
    targets = [s for s in remotes if _may_publish(cfg, s.name)]
    if not targets:
        raise PibError("no remote store to publish to", reason=Reason.PUBLISH,
                       hint="add a [[store]] (http or s3) to pib.toml or pib.local.toml")
    out = artifacts.publish(
        plan.comp.name, plan.key, plan.doc, proto, targets, publishing_signer(cfg),
        dirty=plan.source.dirty, builder_platform=str(floor.host), cbe_info=cbe_info, remote=True, log=log,
    )
    if out.problems:
        raise PibError(
            f"publishing {plan.comp.name} failed: " + "; ".join(f"{p.store}: {p.message}" for p in out.problems),
            reason=Reason.STORE,
            hint="check the store and its credentials, then run pib publish again",
        )
    return out.published


def _may_publish(cfg: Config, name: str) -> bool:
    return any(s.name == name and s.publish for s in cfg.stores)


def nearest_artifact(cfg: Config, name: str) -> tuple[str, dict[str, Any]] | None:
    """The newest artifact of a component in the local store or the remotes (for pib explain)."""
    try:
        stores = [local_store(cfg), *remote_stores(cfg)]
    except PibError:
        return None
    found = artifacts.explain_nearest(name, stores)
    if found is None:
        return None
    return found.store, dict(found.key_doc)
