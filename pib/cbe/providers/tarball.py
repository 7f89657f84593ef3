"""The tarball provider: a whole prefix as one signed, hash-pinned archive.

`publish()` packs a directory (tar + zstd, deterministic, pib.artifacts.archive)
into an artifact store under component `cbe-<name>` and key = the archive's
SHA-256, with signed metadata (kind "cbe", name, version, archive hash and
size, signer) written after the archive, as every store entry is.
`populate()` fetches it through the same verified path as component
artifacts (pib.artifacts.transfer.fetch_verified: signature, exact field set,
archive size and SHA-256), checks that the metadata names the archive the
lock pins, and only then unpacks it (pib.artifacts.archive's safe extraction).

Stores are pib.store.Store objects; a plain path means a local directory
store.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pib.artifacts import signing
from pib.artifacts.metadata import META_FORMAT, read_signed, sign, timestamp
from pib.artifacts.tarread import Limits
from pib.artifacts.transfer import fetch_verified
from pib.cbe.pins import Lock
from pib.cbe.providers import Context
from pib.config.types import HttpStoreSpec, LocalStoreSpec, S3StoreSpec
from pib.errors import CbeError, Location, PibError, VerifyError
from pib.fsutil import remove_tree, sha256_file
from pib.store import NotFound, Store
from pib.store.backends import open_store

RELOCATABLE = True
# A toolchain prefix may hold absolute symlinks (Debian's libc6 has one to the host's loader);
# they are kept as links and never followed while unpacking. Everything else is as for proto areas.
CBE_LIMITS = Limits(allow_absolute_links=True)
_FIELDS = ("format", "kind", "component", "key", "name", "version", "archive_sha256", "archive_size",
           "created", "signer")


def component(name: str) -> str:
    return f"cbe-{name}"


def public_key(source: object) -> signing.PublicKey:
    """A trusted key: a pib key file or value, a signing.PublicKey, or an Ed25519PublicKey."""
    if isinstance(source, signing.PublicKey):
        return source
    if isinstance(source, Ed25519PublicKey):
        return signing.PublicKey(source.public_bytes(Encoding.Raw, PublicFormat.Raw))
    if isinstance(source, (str, os.PathLike)):
        try:
            return signing.load_public_key(os.fspath(source))
        except PibError as exc:
            raise CbeError(exc.message, hint=exc.hint) from None
    raise CbeError(f"not a public key: {source!r}", hint="list pib key files (`pib keygen`) in [trust] public_keys")


def signer_of(key: signing.Signer | Ed25519PrivateKey) -> signing.Signer:
    return key if isinstance(key, signing.Signer) else signing.Signer(key)


def store_of(store: object) -> Store:
    """A Store, a store spec (opened here), or a path (a local directory store)."""
    if isinstance(store, (str, os.PathLike)):
        from pib.store.local import LocalStore

        return LocalStore(Path(store))
    if isinstance(store, (LocalStoreSpec, HttpStoreSpec, S3StoreSpec)):
        return open_store(store)
    if isinstance(store, Store):
        return store
    raise CbeError(f"not an artifact store: {store!r}", hint="configure a local, HTTP or S3 store")


# ---------------------------------------------------------------- publish


@dataclass(frozen=True)
class Published:
    name: str
    version: str
    sha256: str
    size: int
    component: str
    bin_dirs: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.sha256

    def lock_text(self) -> str:
        bins = ", ".join(f'"{b}"' for b in self.bin_dirs)
        return (
            f"# CBE {self.name} {self.version}: a prefix tarball, store entry {self.component}/{self.sha256}\n"
            "format = 1\n"
            f'name = "{self.name}"\n'
            f'version = "{self.version}"\n'
            'provider = "tarball"\n\n'
            f"[path]\nbin = [{bins}]\n\n"
            f'[tarball]\nsha256 = "{self.sha256}"\nsize = {self.size}\n'
        )


def publish(
    src: Path,
    name: str,
    version: str,
    store: object,
    key: signing.Signer | Ed25519PrivateKey,
    *,
    bin_dirs: Sequence[str] = ("bin",),
    epoch: int = 0,
) -> Published:
    """Pack src into the store as CBE name/version; returns what the lock must pin."""
    from pib.artifacts.archive import pack

    if not src.is_dir():
        raise CbeError(f"cannot publish {src}: not a directory", hint="give the prefix directory to publish")
    for b in bin_dirs:
        if not (src / b).is_dir():
            raise CbeError(f"{src} has no {b}/ directory for the build PATH",
                           hint="put the tools in bin/ or pass the bin directories")
    signer = signer_of(key)
    target = store_of(store)
    comp = component(name)
    with tempfile.TemporaryDirectory(prefix="pib-cbe-publish-") as tmp:
        res = pack(src, Path(tmp) / "cbe.tar.zst", epoch=epoch)
        meta = sign({
            "format": META_FORMAT,
            "kind": "cbe",
            "component": comp,
            "key": res.sha256,
            "name": name,
            "version": version,
            "archive_sha256": res.sha256,
            "archive_size": res.size,
            "created": timestamp(),
            "signer": signer.key_id,
        }, signer)
        target.put(comp, res.sha256, res.path, meta, res.sha256)
    return Published(name, version, res.sha256, res.size, comp, tuple(bin_dirs))


# --------------------------------------------------------------- populate


def _check_meta(raw: bytes, lock: Lock, keys: list[signing.PublicKey], where: Location) -> dict[str, Any]:
    pin = lock.tarball
    assert pin is not None
    try:
        doc = read_signed(raw, keys, fields=_FIELDS, what=f"CBE tarball {component(lock.name)}/{pin.sha256[:16]}")
    except VerifyError as exc:
        raise CbeError(f"CBE tarball metadata refused: {exc.message}", where=where, hint=exc.hint) from None
    if doc.get("kind") != "cbe" or doc.get("archive_sha256") != pin.sha256 or doc.get("name") != lock.name \
            or doc.get("archive_size") != pin.size:
        raise CbeError("CBE tarball metadata names a different archive than the lock pins", where=where,
                       hint="check that the lock and the store belong together")
    return doc


def _fetch(lock: Lock, stores: Sequence[object], keys: list[signing.PublicKey], scratch: Path, where: Location) -> Path:
    pin = lock.tarball
    assert pin is not None
    comp = component(lock.name)
    problems: list[str] = []
    for spec in stores:
        try:
            store = store_of(spec)
        except (PibError, ImportError) as exc:
            problems.append(f"{getattr(spec, 'name', spec)}: cannot open: {exc}")
            continue
        try:
            archive, _, _ = fetch_verified(
                store, comp, pin.sha256, scratch / "get",
                read=lambda raw: _check_meta(raw, lock, keys, where),
                pins=lambda doc: (str(doc["archive_sha256"]), int(doc["archive_size"])),
            )
        except NotFound:
            continue
        except CbeError:
            raise
        except VerifyError as exc:
            raise CbeError(f"CBE tarball {comp}/{pin.sha256[:16]} is corrupt or tampered: {exc.message}",
                           where=where, hint="republish the CBE, or fix the store it came from") from None
        except PibError as exc:
            problems.append(f"{getattr(store, 'name', store)}: {exc.message}")
            continue
        return archive
    detail = "; ".join(problems)
    raise CbeError(f"CBE tarball {comp}/{pin.sha256[:16]} is in none of the configured stores"
                   + (f" ({detail})" if detail else ""), where=where,
                   hint="publish it with `pib cbe publish DIR --version V`, or add the store")


def populate(lock: Lock, prefix: Path, ctx: Context) -> dict[str, str]:
    from pib.artifacts.archive import unpack

    pin = lock.tarball
    assert pin is not None
    where = pin.where
    if not ctx.trusted_keys:
        raise CbeError("no trusted public keys to check the CBE tarball's signature", where=where,
                       hint="configure [trust] public_keys in pib.toml")
    if not ctx.stores:
        raise CbeError("no artifact store to fetch the CBE tarball from", where=where,
                       hint="configure a store, or publish the CBE with `pib cbe publish`")
    keys = [public_key(k) for k in ctx.trusted_keys]
    cache = ctx.cache / "tarball"
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / f"{pin.sha256}.tar.zst"
    scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        if cached.is_file() and sha256_file(cached)[0] != pin.sha256:  # the cache is shared: check it
            cached.unlink()
        if not cached.is_file():
            os.replace(_fetch(lock, ctx.stores, keys, scratch, where), cached)
        try:
            unpack(cached, prefix, limits=CBE_LIMITS, log=ctx.log)
        except PibError as exc:
            raise CbeError(f"CBE tarball refused: {exc.message}", where=where,
                           hint="republish the CBE from a clean directory") from None
    finally:
        remove_tree(scratch)
    return {}


# ------------------------------------------------- any lock's prefix, prebuilt

# A CBE installed from packages can be published whole, keyed by its lock digest:
# a machine with a store that holds it installs the prefix in one verified unpack
# instead of fetching and unpacking every package (RFD 141: build tools delivered
# in binary form). The signed metadata names the lock digest, so a prefix of
# another lock can never be taken for this one.
PREFIX_KIND = "cbe-prefix"
_PREFIX_FIELDS = ("format", "kind", "component", "key", "name", "version", "provider", "provider_env",
                  "archive_sha256", "archive_size", "created", "signer")


def publish_prefix(prefix: Path, lock: Lock, provider_env: dict[str, str], stores: Sequence[Store],
                   key: signing.Signer | Ed25519PrivateKey) -> tuple[str, ...]:
    """Pack an installed (and verified) prefix into each store under cbe-<name>/<lock digest>."""
    from pib.artifacts.archive import pack

    signer = signer_of(key)
    comp = component(lock.name)
    with tempfile.TemporaryDirectory(prefix="pib-cbe-prefix-") as tmp:
        res = pack(prefix, Path(tmp) / "prefix.tar.zst", epoch=0)
        meta = sign({
            "format": META_FORMAT,
            "kind": PREFIX_KIND,
            "component": comp,
            "key": lock.digest,
            "name": lock.name,
            "version": lock.version,
            "provider": lock.provider,
            "provider_env": dict(provider_env),
            "archive_sha256": res.sha256,
            "archive_size": res.size,
            "created": timestamp(),
            "signer": signer.key_id,
        }, signer)
        for store in stores:
            store.put(comp, lock.digest, res.path, meta, res.sha256)
    return tuple(s.name for s in stores)


def read_prefix_metadata(raw: bytes, keys: Sequence[signing.PublicKey], what: str) -> dict[str, Any]:
    """The signed metadata of a published CBE prefix (signature and exact field set checked)."""
    return read_signed(raw, keys, fields=_PREFIX_FIELDS, what=what)


def _check_prefix_meta(raw: bytes, lock: Lock, keys: list[signing.PublicKey]) -> dict[str, Any]:
    doc = read_prefix_metadata(raw, keys, f"CBE prefix {component(lock.name)}/{lock.digest[:16]}")
    env = doc.get("provider_env")
    if doc.get("kind") != PREFIX_KIND or doc.get("key") != lock.digest or doc.get("name") != lock.name \
            or doc.get("version") != lock.version or doc.get("provider") != lock.provider \
            or not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise VerifyError("CBE prefix metadata names another lock than the one being installed",
                          hint="the store entry does not belong to this lock; delete it")
    return doc


def install_prefix(lock: Lock, dest: Path, ctx: Context) -> tuple[dict[str, str], str] | None:
    """Unpack a signed prebuilt prefix of exactly this lock into dest: (provider env, store name).

    None when no store has one, or none that verifies (then the caller installs from the
    lock's packages as usual; a refused entry is logged, never used).
    """
    from pib.artifacts.archive import unpack

    if not ctx.stores or not ctx.trusted_keys or (ctx.offline and not ctx.stores):
        return None
    keys = [public_key(k) for k in ctx.trusted_keys]
    comp = component(lock.name)
    scratch = Path(tempfile.mkdtemp(prefix=".prefix-", dir=dest.parent))
    try:
        for spec in ctx.stores:
            try:
                store = store_of(spec)
                archive, _, doc = fetch_verified(
                    store, comp, lock.digest, scratch / "get",
                    read=lambda raw: _check_prefix_meta(raw, lock, keys),
                    pins=lambda d: (str(d["archive_sha256"]), int(d["archive_size"])),
                )
                unpack(archive, dest, limits=CBE_LIMITS, log=ctx.log)
            except NotFound:
                continue
            except PibError as exc:
                if ctx.log is not None:
                    ctx.log.line(f"pib: CBE prefix from {getattr(spec, 'name', spec)} not used: {exc.message}")
                remove_tree(dest)
                dest.mkdir(mode=0o755)
                continue
            remove_tree(dest / ".pib")  # the publisher's install record; this install writes its own
            if ctx.log is not None:
                ctx.log.line(f"pib: CBE {lock.name} {lock.version} installed from the prebuilt prefix in "
                             f"{store.name}")
            return {str(k): str(v) for k, v in doc["provider_env"].items()}, store.name
    finally:
        remove_tree(scratch)
    return None
