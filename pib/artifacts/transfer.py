"""Moving signed artifacts between proto areas and stores: restore, publish, fetch.

Fetching trusts nothing it downloads (fetch_verified, used by component
artifacts and CBE prefix tarballs alike): the metadata is read and verified
first, then the archive is downloaded and its size and SHA-256 checked
against the verified metadata, all before anything is extracted. Restoring
a component artifact also requires that the metadata names the requested
component and key (a valid artifact cannot be replayed under another key).
A store that misses is quiet; a store that fails is one problem in the
outcome, and the next store is tried.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pib.artifacts.archive import Limits, pack, unpack
from pib.artifacts.metadata import ArtifactInfo, Metadata, make_metadata, parse_document, read_metadata
from pib.artifacts.signing import PublicKey, Signer
from pib.errors import PibError, Reason, StoreError, VerifyError, local_error
from pib.fsutil import remove_tree, sha256_file
from pib.run import Log
from pib.store import NotFound, Store, check_names

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


def scratch_dir(proto_dir: Path, what: str) -> Path:
    """A private scratch directory beside a proto area (swept by the next build if a run is killed); one
    that cannot be made (no space, no free inode, read-only) is a workspace error naming the place."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{proto_dir.name}.{what}-", dir=proto_dir.parent))
    except OSError as exc:
        raise local_error(proto_dir.parent, exc, f"make a scratch directory ({what}) in") from None


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
                local_store.put(component, key, archive, meta_bytes, metadata.archive_sha256)
        except PibError as exc:
            problems.append(StoreProblem(local_store.name if local_store else "local", exc.reason, f"not cached locally: {exc.message}"))
        finally:
            remove_tree(archive.parent)
        _note(log, f"{store.name}: restored {component}/{key} ({archive_bytes} bytes, {seconds:.2f}s)")
        return RestoreOutcome("hit", store.name, seconds, archive_bytes, metadata, tuple(problems))
    return RestoreOutcome("error" if problems else "miss", problems=tuple(problems))


M = TypeVar("M")


def fetch_verified(store: Store, component: str, key: str, work: Path, *, read: Callable[[bytes], M],
                   pins: Callable[[M], tuple[str, int]], hash_later: bool = False) -> tuple[Path, bytes, M]:
    """Download the entry (component, key) into `work`, verified: (archive, metadata bytes, metadata).

    `read` parses and verifies metadata bytes (raising VerifyError); `pins`
    gives the archive's SHA-256 and size that the verified metadata states.
    The metadata is fetched once and verified before the archive is asked
    for: the archive is the one it names, and no byte beyond the size it
    states is downloaded. With `hash_later` the caller checks the SHA-256
    itself, in the pass that consumes the archive (unpack's `sha256`).
    """
    meta_bytes = store.get_meta(component, key)
    meta = read(meta_bytes)
    want_sha, want_size = pins(meta)
    work.mkdir(parents=True, exist_ok=True)
    archive = work / f"{key}.tar.zst"
    store.get_archive(component, key, want_sha, archive, want_size)
    size = archive.stat().st_size
    if size != want_size:
        raise VerifyError(f"{store.name}: archive of {component}/{key} has {size} bytes, metadata says "
                          f"{want_size}", hint="the store holds a damaged artifact; delete it")
    if not hash_later and sha256_file(archive)[0] != want_sha:
        raise VerifyError(f"{store.name}: archive of {component}/{key} does not match its SHA-256",
                          hint="the store holds a damaged or altered artifact; delete it")
    return archive, meta_bytes, meta


def _restore_from(
    store: Store, component: str, key: str, trusted_keys: Sequence[PublicKey], proto_dir: Path,
    log: Log | None, limits: Limits,
) -> tuple[bytes, int, Metadata, Path]:
    proto_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{proto_dir.name}.fetch-", dir=proto_dir.parent))
    keep = False
    try:
        archive, meta_bytes, metadata = fetch_verified(
            store, component, key, work,
            read=lambda raw: read_metadata(raw, trusted_keys, component=component, key=key),
            pins=lambda m: (m.archive_sha256, m.archive_size), hash_later=True,
        )
        unpack(archive, proto_dir, limits=limits, log=log, sha256=metadata.archive_sha256)
        keep = True
        return meta_bytes, metadata.archive_size, metadata, archive
    finally:
        if not keep:
            remove_tree(work)


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
    # Shared stores that already held this key with other bytes: theirs was kept (first writer wins).
    differing: tuple[StoreProblem, ...] = ()


def publish(
    info: ArtifactInfo,
    proto_dir: Path,
    stores: Sequence[Store],
    signer: Signer | None,
    *,
    remote: bool,
    epoch: int = 0,
    log: Log | None = None,
) -> PublishOutcome:
    """Pack proto_dir, sign its metadata and put it into the stores.

    Local stores always receive it; remote ones only with remote=True, and
    never for a dirty tree. A store that fails is a problem in the outcome.
    """
    component, key = info.component, info.key
    check_names(component, key)
    if signer is None:
        raise PibError(f"cannot publish {component}: no signing key", reason=Reason.PUBLISH,
                       hint="create one with `pib keygen` and configure it, or do not publish")
    if info.dirty and remote:
        raise PibError(f"refusing to publish {component} to a shared store: its source tree has uncommitted changes",
                       reason=Reason.PUBLISH, hint="commit the changes (or publish to the local store only)")
    targets = [s for s in stores if not s.remote or remote]
    if not targets:
        raise PibError(f"cannot publish {component}: no store to publish to", reason=Reason.PUBLISH,
                       hint="configure a local or remote artifact store")
    work = scratch_dir(proto_dir, "publish")
    try:
        try:
            packed = pack(proto_dir, work / f"{key}.tar.zst", epoch=epoch, log=log)
        except OSError as exc:
            raise local_error(work, exc, f"pack {component} in") from None
        meta = make_metadata(info, packed.sha256, packed.size, signer)
        published: list[str] = []
        problems: list[StoreProblem] = []
        differing: list[StoreProblem] = []
        for store in targets:
            try:
                if store.remote:
                    # A key names one artifact for everyone who restores it: the first one published stays.
                    held = _held_sha256(store, component, key)
                    if held is not None:
                        published.append(store.name)
                        if held != packed.sha256:
                            differing.append(StoreProblem(store.name, Reason.PUBLISH, (
                                f"{component}/{key} already published with other bytes (archive sha256 "
                                f"{held[:16]}, this build {packed.sha256[:16]}): the build is not reproducible; "
                                "the published artifact was kept")))
                        _note(log, f"{store.name}: {component}/{key} already there; kept")
                        continue
                store.put(component, key, packed.path, meta, packed.sha256)
                published.append(store.name)
                _note(log, f"{store.name}: published {component}/{key}")
            except PibError as exc:
                problems.append(StoreProblem(store.name, exc.reason, exc.message))
                _note(log, f"{store.name}: publishing failed: {exc.message}")
        return PublishOutcome(meta, packed.sha256, packed.size, tuple(published), tuple(problems),
                              tuple(differing))
    finally:
        remove_tree(work)


def _held_sha256(store: Store, component: str, key: str) -> str | None:
    """The archive SHA-256 the store's entry states (None: no entry). Unverified: only compared, never used."""
    try:
        raw = store.get_meta(component, key)
    except NotFound:
        return None
    try:
        doc = parse_document(raw, f"{component}/{key} in {store.name}")
    except VerifyError:
        return ""
    sha = doc.get("archive_sha256")
    return sha if isinstance(sha, str) else ""


def copy_verified(component: str, key: str, source: Store, targets: Sequence[Store],
                  trusted_keys: Sequence[PublicKey], work: Path) -> PublishOutcome:
    """Copy the entry (component, key) from `source` to `targets` exactly as it is signed, if it
    verifies against `trusted_keys` (those trusted for publishing); never re-signed.

    Raises NotFound, StoreError or VerifyError when `source` has no such entry."""
    check_names(component, key)
    archive, meta_bytes, meta = fetch_verified(
        source, component, key, work,
        read=lambda raw: read_metadata(raw, trusted_keys, component=component, key=key),
        pins=lambda m: (m.archive_sha256, m.archive_size),
    )
    published: list[str] = []
    problems: list[StoreProblem] = []
    for store in targets:
        try:
            store.put(component, key, archive, meta_bytes, meta.archive_sha256)
            published.append(store.name)
        except PibError as exc:
            problems.append(StoreProblem(store.name, exc.reason, exc.message))
    return PublishOutcome(meta_bytes, meta.archive_sha256, meta.archive_size, tuple(published), tuple(problems),
                          ())


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
                doc = parse_document(store.get_meta(component, entry.key), f"{component}/{entry.key}")
            except (StoreError, VerifyError):
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("key_doc"), dict):
                continue
            created = str(doc.get("created", ""))
            if best is None or created > best.created:
                best = NearestArtifact(store.name, entry.key, created, doc["key_doc"])
    return best
