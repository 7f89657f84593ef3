"""Prebuilt component artifacts: signed metadata, restore and publish.

Metadata is one canonical JSON document per artifact (sorted keys, compact,
UTF-8): what was built (component, key and key document), what the archive
is (SHA-256 and size), who built it and with what (builder platform, CBE,
pib version, dirty flag), and an Ed25519 `signature` over the canonical
document without the signature field; `signer` names the key.

Restoring trusts nothing it downloads: the signature must verify against a
trusted key, the metadata must name the requested component and key (a
valid artifact cannot be replayed under another key), and the archive's
size and SHA-256 must match, all before anything is extracted. A store that
misses is quiet; a store that fails is one problem in the outcome, and the
next store is tried.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pib
from pib.archive import Limits, pack, sha256_file, unpack
from pib.errors import PibError, Reason, StoreError, VerifyError
from pib.fsutil import force_rmtree
from pib.run import Log
from pib.signing import PublicKey, Signer, verify
from pib.store import NotFound, Store, check_names

META_FORMAT = 1
_FIELDS = ("format", "component", "key", "key_doc", "archive_sha256", "archive_size", "created",
           "builder_platform", "cbe", "pib_version", "dirty", "signer")


@dataclass(frozen=True)
class CbeInfo:
    name: str
    version: str
    lock_digest: str


@dataclass(frozen=True)
class Metadata:
    component: str
    key: str
    key_doc: Mapping[str, Any]
    archive_sha256: str
    archive_size: int
    created: str
    builder_platform: str
    cbe: CbeInfo | None
    pib_version: str
    dirty: bool
    signer: str


def canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def make_metadata(
    component: str,
    key: str,
    key_doc: Mapping[str, Any],
    archive_sha256: str,
    archive_size: int,
    signer: Signer,
    *,
    builder_platform: str,
    cbe_info: CbeInfo | None,
    dirty: bool,
    created: dt.datetime | None = None,
) -> bytes:
    """The signed metadata document, as the bytes to store."""
    when = (created or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    doc: dict[str, Any] = {
        "format": META_FORMAT,
        "component": component,
        "key": key,
        "key_doc": dict(key_doc),
        "archive_sha256": archive_sha256,
        "archive_size": archive_size,
        "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "builder_platform": builder_platform,
        "cbe": None if cbe_info is None else {"name": cbe_info.name, "version": cbe_info.version,
                                              "lock_digest": cbe_info.lock_digest},
        "pib_version": pib.__version__,
        "dirty": bool(dirty),
        "signer": signer.key_id,
    }
    doc["signature"] = signer.sign(canonical(doc))
    return canonical(doc)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise VerifyError(f"metadata has the field {k!r} twice", hint="the artifact metadata is corrupt or hostile")
        out[k] = v
    return out


def read_metadata(raw: bytes, trusted_keys: Iterable[PublicKey], *, component: str, key: str) -> Metadata:
    """Parse and verify metadata bytes for the artifact (component, key)."""
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyError(f"metadata of {component}/{key} is not valid JSON", hint="the artifact is corrupt") from exc
    if not isinstance(doc, dict):
        raise VerifyError(f"metadata of {component}/{key} is not a JSON object", hint="the artifact is corrupt")
    signature = doc.pop("signature", None)
    if not isinstance(signature, str):
        raise VerifyError(f"artifact {component}/{key} is not signed",
                          hint="only signed artifacts are restored; publish it again with a signing key")
    verify(canonical(doc), signature, trusted_keys)
    if doc.get("format") != META_FORMAT or sorted(doc) != sorted(_FIELDS):
        raise VerifyError(f"metadata of {component}/{key} has an unknown format",
                          hint="it was written by another pib version; it will be rebuilt locally")
    if doc["component"] != component or doc["key"] != key:
        raise VerifyError(
            f"metadata names {doc['component']}/{doc['key']}, not the requested {component}/{key}",
            hint="a signed artifact was stored under the wrong name (replayed); delete it from the store",
        )
    cbe = doc["cbe"]
    try:
        return Metadata(
            component=doc["component"], key=doc["key"], key_doc=doc["key_doc"],
            archive_sha256=str(doc["archive_sha256"]), archive_size=int(doc["archive_size"]),
            created=str(doc["created"]), builder_platform=str(doc["builder_platform"]),
            cbe=None if cbe is None else CbeInfo(str(cbe["name"]), str(cbe["version"]), str(cbe["lock_digest"])),
            pib_version=str(doc["pib_version"]), dirty=bool(doc["dirty"]), signer=str(doc["signer"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifyError(f"metadata of {component}/{key} has malformed fields", hint="the artifact is corrupt") from exc


# ------------------------------------------------------------------ restore


@dataclass(frozen=True)
class StoreProblem:
    store: str
    reason: Reason
    message: str


@dataclass(frozen=True)
class RestoreOutcome:
    status: Literal["hit", "miss", "error"]
    store: str | None = None
    seconds: float = 0.0
    bytes: int = 0
    metadata: Metadata | None = None
    problems: tuple[StoreProblem, ...] = field(default_factory=tuple)

    @property
    def hit(self) -> bool:
        return self.status == "hit"


def restore(
    component: str,
    key: str,
    stores: Sequence[Store],
    trusted_keys: Sequence[PublicKey],
    proto_dir: Path,
    log: Log | None,
    *,
    local_store: Store | None,
    limits: Limits | None = None,
) -> RestoreOutcome:
    """Restore the artifact (component, key) into proto_dir from the first store that has a valid one.

    Never raises for store or verification problems: they are returned, one
    per failing store, and the caller builds locally.
    """
    check_names(component, key)
    limits = limits or Limits()
    order: list[Store] = [local_store] if local_store is not None else []
    order += [s for s in stores if s is not local_store]
    problems: list[StoreProblem] = []
    for store in order:
        start = time.monotonic()
        try:
            hit = _restore_from(store, component, key, trusted_keys, proto_dir, log, limits)
        except NotFound:
            _note(log, f"{store.name}: no artifact {component}/{key}")
            continue
        except PibError as exc:
            problems.append(StoreProblem(store.name, exc.reason, exc.message))
            _note(log, f"{store.name}: {exc.reason.value}: {exc.message}")
            continue
        except OSError as exc:
            # No room (or no permission) beside the proto area: a problem, and the caller builds locally.
            message = f"cannot restore into {proto_dir.parent}: {exc.strerror or exc}"
            problems.append(StoreProblem(store.name, Reason.STORE, message))
            _note(log, f"{store.name}: {message}")
            continue
        meta_bytes, archive_bytes, metadata, archive = hit
        seconds = time.monotonic() - start
        try:
            if local_store is not None and store is not local_store:
                local_store.put(component, key, archive, meta_bytes)
        except PibError as exc:
            problems.append(StoreProblem(local_store.name if local_store else "local", exc.reason, f"not cached locally: {exc.message}"))
        finally:
            force_rmtree(archive.parent)
        _note(log, f"{store.name}: restored {component}/{key} ({archive_bytes} bytes, {seconds:.2f}s)")
        return RestoreOutcome("hit", store.name, seconds, archive_bytes, metadata, tuple(problems))
    return RestoreOutcome("error" if problems else "miss", problems=tuple(problems))


def _restore_from(
    store: Store, component: str, key: str, trusted_keys: Sequence[PublicKey], proto_dir: Path,
    log: Log | None, limits: Limits,
) -> tuple[bytes, int, Metadata, Path]:
    # Metadata first: a bad signature costs a few hundred bytes, not an archive download.
    metadata = read_metadata(store.get_meta(component, key), trusted_keys, component=component, key=key)
    proto_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{proto_dir.name}.fetch-", dir=proto_dir.parent))
    keep = False
    try:
        archive, meta_path = store.get(component, key, work)
        meta_bytes = meta_path.read_bytes()
        metadata = read_metadata(meta_bytes, trusted_keys, component=component, key=key)
        size = archive.stat().st_size
        if size != metadata.archive_size:
            raise VerifyError(f"{store.name}: archive of {component}/{key} has {size} bytes, metadata says "
                              f"{metadata.archive_size}", hint="the store holds a damaged artifact; delete it")
        sha, _ = sha256_file(archive)
        if sha != metadata.archive_sha256:
            raise VerifyError(f"{store.name}: archive of {component}/{key} does not match its SHA-256",
                              hint="the store holds a damaged or altered artifact; delete it")
        unpack(archive, proto_dir, limits=limits, log=log)
        keep = True
        return meta_bytes, size, metadata, archive
    finally:
        if not keep:
            force_rmtree(work)


def _note(log: Log | None, text: str) -> None:
    if log is not None:
        log.line(text)


# ------------------------------------------------------------------ publish


@dataclass(frozen=True)
class PublishOutcome:
    metadata: bytes
    archive_sha256: str
    archive_size: int
    published: tuple[str, ...]
    problems: tuple[StoreProblem, ...]


def publish(
    component: str,
    key: str,
    key_doc: Mapping[str, Any],
    proto_dir: Path,
    stores: Sequence[Store],
    signer: Signer | None,
    *,
    dirty: bool,
    builder_platform: str,
    cbe_info: CbeInfo | None,
    remote: bool,
    epoch: int = 0,
    log: Log | None = None,
) -> PublishOutcome:
    """Pack proto_dir, sign its metadata and put it into the stores.

    Local stores always receive it; remote ones only with remote=True, and
    never for a dirty tree. A store that fails is a problem in the outcome.
    """
    check_names(component, key)
    if signer is None:
        raise PibError(f"cannot publish {component}: no signing key", reason=Reason.PUBLISH,
                       hint="create one with `pib keygen` and configure it, or do not publish")
    if dirty and remote:
        raise PibError(f"refusing to publish {component} to a shared store: its source tree has uncommitted changes",
                       reason=Reason.PUBLISH, hint="commit the changes (or publish to the local store only)")
    targets = [s for s in stores if not s.remote or remote]
    if not targets:
        raise PibError(f"cannot publish {component}: no store to publish to", reason=Reason.PUBLISH,
                       hint="configure a local or remote artifact store")
    work = Path(tempfile.mkdtemp(prefix=f".{proto_dir.name}.publish-", dir=proto_dir.parent))
    try:
        packed = pack(proto_dir, work / f"{key}.tar.zst", epoch=epoch, log=log)
        meta = make_metadata(component, key, key_doc, packed.sha256, packed.size, signer,
                             builder_platform=builder_platform, cbe_info=cbe_info, dirty=dirty)
        published: list[str] = []
        problems: list[StoreProblem] = []
        for store in targets:
            try:
                store.put(component, key, packed.path, meta)
                published.append(store.name)
                _note(log, f"{store.name}: published {component}/{key}")
            except PibError as exc:
                problems.append(StoreProblem(store.name, exc.reason, exc.message))
                _note(log, f"{store.name}: publishing failed: {exc.message}")
        return PublishOutcome(meta, packed.sha256, packed.size, tuple(published), tuple(problems))
    finally:
        force_rmtree(work)


# ------------------------------------------------------------------ explain


@dataclass(frozen=True)
class NearestArtifact:
    store: str
    key: str
    created: str
    key_doc: Mapping[str, Any]


def explain_nearest(component: str, stores: Sequence[Store], *, candidates: int = 20) -> NearestArtifact | None:
    """The newest artifact of a component across the stores (for `pib explain`).

    Unverified on purpose: it only shows what a key document looked like.
    Stores that fail are skipped.
    """
    best: NearestArtifact | None = None
    for store in stores:
        try:
            entries = sorted(store.list(component), key=lambda e: e.modified, reverse=True)[:candidates]
        except StoreError:
            continue
        for entry in entries:
            try:
                doc = json.loads(store.get_meta(component, entry.key))
            except (StoreError, ValueError):
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("key_doc"), dict):
                continue
            created = str(doc.get("created", ""))
            if best is None or created > best.created:
                best = NearestArtifact(store.name, entry.key, created, doc["key_doc"])
    return best
