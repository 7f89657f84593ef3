"""A workspace's artifact policy: which stores, which keys are trusted, which
key signs, and the publishing rules.

The machine's local store comes first and is shared by every workspace; the
configured stores follow. Artifacts of local builds enter the local store
signed by a per-user machine key, trusted only on this machine; anything
published to a shared store is signed with the configured signing key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pib.artifacts import transfer
from pib.artifacts.signing import PublicKey, Signer, generate_keypair, load_public_key, load_signer
from pib.config.types import Config, StoreSpec
from pib.errors import PibError, Reason
from pib.store import Store
from pib.store.backends import open_store

if TYPE_CHECKING:
    from pib.host import FloorCheck


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


def store_specs(cfg: Config) -> list[StoreSpec]:
    """The machine's local store, then the configured ones, in lookup order."""
    return [cfg.local_store, *cfg.stores]


def local_store(cfg: Config) -> Store:
    return open_store(cfg.local_store)


def remote_stores(cfg: Config) -> list[Store]:
    return [open_store(s) for s in cfg.stores]


def trusted_keys(cfg: Config, *, machine: bool = True) -> list[PublicKey]:
    keys: list[PublicKey] = []
    for path in cfg.trust.public_keys:
        try:
            keys.append(load_public_key(path))
        except PibError as exc:
            raise PibError(f"cannot load trusted public key {path}: {exc.message}", reason=Reason.CONFIG,
                           where=cfg.sources.get("trust.public_keys"),
                           hint="fix trust.public_keys in pib.toml (paths are relative to the workspace)") from exc
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


def may_publish(cfg: Config, name: str) -> bool:
    """Whether the configured store `name` takes published artifacts (its `publish` setting)."""
    return any(s.name == name and s.publish for s in cfg.stores)


def nearest_artifact(cfg: Config, name: str) -> tuple[str, dict[str, Any]] | None:
    """The newest artifact of a component in the local store or the remotes (for pib explain)."""
    try:
        stores = [local_store(cfg), *remote_stores(cfg)]
    except PibError:
        return None
    found = transfer.explain_nearest(name, stores)
    if found is None:
        return None
    return found.store, dict(found.key_doc)
