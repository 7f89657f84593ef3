"""The tarball provider: a whole prefix as one signed, hash-pinned archive.

`publish()` packs a directory (tar + zstd, deterministic) into a store under
component `cbe-<name>`, key `<version>-<sha256[:16]>`: `<key>.tar.zst` and
then `<key>.json`, the metadata with an Ed25519 signature, written last so a
reader never sees half an entry. `populate()` fetches the metadata, checks
its signature against a trusted key and that it names the archive the lock
pins, fetches the archive, checks size and SHA-256, and only then unpacks it
(pib.archive's safe extraction).

A store here is a local directory with that layout, or any object with
`get_file(relpath, dest) -> bool` and `put_file(relpath, src)`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pib.cbe.lock import Lock
from pib.cbe.providers import Context, sha256_file
from pib.errors import CbeError, Location, PibError

RELOCATABLE = True
META_FORMAT = 1


@runtime_checkable
class FileStore(Protocol):
    def get_file(self, relpath: str, dest: Path) -> bool: ...
    def put_file(self, relpath: str, src: Path) -> None: ...


def component(name: str) -> str:
    return f"cbe-{name}"


def key(version: str, sha256: str) -> str:
    return f"{version}-{sha256[:16]}"


def _canonical(meta: dict[str, Any]) -> bytes:
    body = {k: v for k, v in meta.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


# ------------------------------------------------------------------ keys


def load_public_key(source: object) -> Ed25519PublicKey:
    """A trusted key: an Ed25519PublicKey, raw 32 bytes, or a file (PEM, raw, base64)."""
    if isinstance(source, Ed25519PublicKey):
        return source
    data = source if isinstance(source, bytes) else Path(str(source)).read_bytes()
    if data.startswith(b"-----BEGIN"):
        key_obj = serialization.load_pem_public_key(data)
        if not isinstance(key_obj, Ed25519PublicKey):
            raise CbeError(f"{source}: not an Ed25519 public key", hint="use an Ed25519 key pair")
        return key_obj
    if len(data) != 32:
        try:
            data = base64.b64decode(data.strip(), validate=True)
        except ValueError:
            data = b""
    if len(data) != 32:
        raise CbeError(f"{source}: not an Ed25519 public key (PEM, raw or base64)",
                       hint="use an Ed25519 key pair")
    return Ed25519PublicKey.from_public_bytes(data)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CbeError(f"cannot read signing key {path}: {exc.strerror}", hint="check the key path") from None
    return private_key_from_pem(data, str(path))


def private_key_from_pem(data: bytes, what: str = "signing key") -> Ed25519PrivateKey:
    try:
        key_obj = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key_obj = None
    if not isinstance(key_obj, Ed25519PrivateKey):
        raise CbeError(f"{what}: not an Ed25519 private key", hint="use an Ed25519 key pair (PEM, unencrypted)")
    return key_obj


# ------------------------------------------------------------- store I/O


def _get(store: object, relpath: str, dest: Path) -> bool:
    if isinstance(store, (str, os.PathLike)):
        src = Path(store) / relpath
        if not src.is_file():
            return False
        shutil.copyfile(src, dest)
        return True
    if isinstance(store, FileStore):
        return store.get_file(relpath, dest)
    raise CbeError(f"cannot fetch CBE tarballs from {store!r}", hint="configure a local or HTTP/S3 store")


def _put(store: object, relpath: str, src: Path) -> None:
    if isinstance(store, (str, os.PathLike)):
        dest = Path(store) / relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    if isinstance(store, FileStore):
        store.put_file(relpath, src)
        return
    raise CbeError(f"cannot publish CBE tarballs to {store!r}", hint="configure a local or HTTP/S3 store")


# ---------------------------------------------------------------- publish


@dataclass(frozen=True)
class Published:
    name: str
    version: str
    sha256: str
    size: int
    component: str
    key: str
    bin_dirs: tuple[str, ...]

    def lock_text(self) -> str:
        bins = ", ".join(f'"{b}"' for b in self.bin_dirs)
        return (
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
    signer: Ed25519PrivateKey,
    *,
    bin_dirs: Sequence[str] = ("bin",),
    epoch: int = 0,
) -> Published:
    """Pack src into the store as CBE name/version; returns what the lock must pin."""
    from pib.archive import pack

    if not src.is_dir():
        raise CbeError(f"cannot publish {src}: not a directory", hint="give the prefix directory to publish")
    for b in bin_dirs:
        if not (src / b).is_dir():
            raise CbeError(f"{src} has no {b}/ directory for the build PATH",
                           hint="put the tools in bin/ or pass the bin directories")
    with tempfile.TemporaryDirectory(prefix="pib-cbe-publish-") as tmp:
        archive = Path(tmp) / "cbe.tar.zst"
        res = pack(src, archive, epoch=epoch)
        k = key(version, res.sha256)
        meta: dict[str, Any] = {
            "format": META_FORMAT,
            "kind": "cbe",
            "name": name,
            "version": version,
            "sha256": res.sha256,
            "size": res.size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        meta["signature"] = base64.b64encode(signer.sign(_canonical(meta))).decode("ascii")
        meta_file = Path(tmp) / "cbe.json"
        meta_file.write_text(json.dumps(meta, sort_keys=True, indent=2) + "\n", encoding="utf-8")
        _put(store, f"{component(name)}/{k}.tar.zst", archive)
        _put(store, f"{component(name)}/{k}.json", meta_file)  # last: readers never see half an entry
    return Published(name, version, res.sha256, res.size, component(name), k, tuple(bin_dirs))


# --------------------------------------------------------------- populate


def _verify_meta(meta_file: Path, lock: Lock, trusted: list[Ed25519PublicKey], where: Location) -> None:
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        sig = base64.b64decode(meta["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise CbeError("CBE tarball metadata is unreadable", where=where,
                       hint="republish the CBE with `pib cbe publish`") from None
    for pub in trusted:
        try:
            pub.verify(sig, _canonical(meta))
            break
        except InvalidSignature:
            continue
    else:
        raise CbeError("CBE tarball metadata is not signed by a trusted key", where=where,
                       hint="add the publisher's public key to [trust] public_keys, or republish with a trusted key")
    assert lock.tarball is not None
    if meta.get("sha256") != lock.tarball.sha256 or meta.get("name") != lock.name:
        raise CbeError("CBE tarball metadata names a different archive than the lock pins", where=where,
                       hint="check that the lock and the store belong together")


def populate(lock: Lock, prefix: Path, ctx: Context) -> dict[str, str]:
    from pib.archive import unpack

    pin = lock.tarball
    assert pin is not None
    where = pin.where
    if not ctx.trusted_keys:
        raise CbeError("no trusted public keys to check the CBE tarball's signature", where=where,
                       hint="configure [trust] public_keys in pib.toml")
    if not ctx.stores:
        raise CbeError("no artifact store to fetch the CBE tarball from", where=where,
                       hint="configure a store, or publish the CBE with `pib cbe publish`")
    trusted = [load_public_key(k) for k in ctx.trusted_keys]
    comp, k = component(lock.name), key(lock.version, pin.sha256)
    cache = ctx.cache / "tarball"
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / f"{pin.sha256}.tar.zst"
    scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        archive = cached
        if not cached.is_file():
            for store in ctx.stores:
                meta_file, part = scratch / "meta.json", scratch / "archive.tar.zst"
                if not _get(store, f"{comp}/{k}.json", meta_file):
                    continue
                _verify_meta(meta_file, lock, trusted, where)
                if not _get(store, f"{comp}/{k}.tar.zst", part):
                    continue
                got, size = sha256_file(part), part.stat().st_size
                if size != pin.size or got != pin.sha256:
                    raise CbeError(
                        f"CBE tarball {comp}/{k} is corrupt or tampered: sha256 {got} size {size}, "
                        f"the lock pins {pin.sha256} size {pin.size}",
                        where=where, hint="republish the CBE, or fix the store it came from")
                os.replace(part, cached)
                break
            else:
                raise CbeError(f"CBE tarball {comp}/{k} is in none of the configured stores", where=where,
                               hint="publish it with `pib cbe publish DIR --version V`, or add the store")
        elif sha256_file(cached) != pin.sha256:  # the cache is shared: check before trusting it
            cached.unlink()
            raise CbeError("cached CBE tarball was corrupt and has been removed", where=where,
                           hint="run the command again to fetch it afresh")
        try:
            unpack(archive, prefix, log=ctx.log)
        except PibError as exc:
            raise CbeError(f"CBE tarball refused: {exc.message}", where=where,
                           hint="republish the CBE from a clean directory") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {}
