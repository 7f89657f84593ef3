"""Signed metadata: one canonical JSON document per stored archive.

The document is canonical JSON (sorted keys, compact, UTF-8) with an Ed25519
`signature` over the canonical document without that field; `signer` names
the key. Reading one refuses duplicate fields, verifies the signature against
the trusted keys and checks the format and the exact field set before
anything in it is believed. Component artifacts and CBE prefix tarballs use
this one reader; only their field sets differ.

A component artifact's document says what was built (component, key and key
document), what the archive is (SHA-256 and size), and who built it with what
(builder platform, CBE, pib version, dirty flag), and, in artifacts written
since pib keyed dependents by output, the output digest of the proto area it
holds: the signed equivalence (input key -> output digest) that lets another
machine key the dependents before restoring it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import pib
from pib.artifacts.signing import PublicKey, Signer, verify
from pib.errors import VerifyError
from pib.fsutil import canonical_json

META_FORMAT = 1
_FIELDS = ("format", "component", "key", "key_doc", "archive_sha256", "archive_size", "created",
           "builder_platform", "cbe", "pib_version", "dirty", "signer")


@dataclass(frozen=True)
class CbeInfo:
    name: str
    version: str
    lock_digest: str


class ArtifactInfo(NamedTuple):
    """What a new component artifact's metadata says, besides its archive's hash and size."""

    component: str
    key: str
    key_doc: Mapping[str, Any]
    dirty: bool
    builder_platform: str
    cbe: CbeInfo | None
    output_digest: str | None = None


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
    output_digest: str | None = None  # absent in artifacts written before it was recorded


def timestamp(when: dt.datetime | None = None) -> str:
    return (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign(doc: Mapping[str, Any], signer: Signer) -> bytes:
    """`doc` with its signature, as the canonical bytes to store."""
    return canonical_json({**doc, "signature": signer.sign(canonical_json(doc))})


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise VerifyError(f"metadata has the field {k!r} twice", hint="the artifact metadata is corrupt or hostile")
        out[k] = v
    return out


def read_signed(raw: bytes, trusted_keys: Iterable[PublicKey], *, fields: Collection[str], what: str,
                optional: Collection[str] = ()) -> dict[str, Any]:
    """Parse signed metadata bytes, verify the signature, and check the format and the exact field set.

    `optional` fields may be there or not; no other field may. `what` names the artifact in errors.
    Returns the document without its signature.
    """
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyError(f"metadata of {what} is not valid JSON", hint="the artifact is corrupt") from exc
    if not isinstance(doc, dict):
        raise VerifyError(f"metadata of {what} is not a JSON object", hint="the artifact is corrupt")
    signature = doc.pop("signature", None)
    if not isinstance(signature, str):
        raise VerifyError(f"artifact {what} is not signed",
                          hint="only signed artifacts are restored; publish it again with a signing key")
    verify(canonical_json(doc), signature, trusted_keys)
    if doc.get("format") != META_FORMAT or sorted(k for k in doc if k not in optional) != sorted(fields):
        raise VerifyError(f"metadata of {what} has an unknown format",
                          hint="it was written by another pib version; it will be rebuilt locally")
    return doc


def make_metadata(info: ArtifactInfo, archive_sha256: str, archive_size: int, signer: Signer, *,
                  created: dt.datetime | None = None) -> bytes:
    """The signed metadata document of a component artifact, as the bytes to store."""
    cbe = info.cbe
    extra = {} if info.output_digest is None else {"output_digest": info.output_digest}
    return sign({
        "format": META_FORMAT,
        "component": info.component,
        "key": info.key,
        "key_doc": dict(info.key_doc),
        "archive_sha256": archive_sha256,
        "archive_size": archive_size,
        "created": timestamp(created),
        "builder_platform": info.builder_platform,
        "cbe": None if cbe is None else {"name": cbe.name, "version": cbe.version, "lock_digest": cbe.lock_digest},
        "pib_version": pib.__version__,
        "dirty": bool(info.dirty),
        "signer": signer.key_id,
        **extra,
    }, signer)


def read_metadata(raw: bytes, trusted_keys: Iterable[PublicKey], *, component: str, key: str) -> Metadata:
    """Parse and verify metadata bytes for the artifact (component, key)."""
    doc = read_signed(raw, trusted_keys, fields=_FIELDS, what=f"{component}/{key}", optional=("output_digest",))
    if doc["component"] != component or doc["key"] != key:
        raise VerifyError(
            f"metadata names {doc['component']}/{doc['key']}, not the requested {component}/{key}",
            hint="a signed artifact was stored under the wrong name (replayed); delete it from the store",
        )
    cbe = doc["cbe"]
    out = doc.get("output_digest")
    if out is not None and not isinstance(out, str):
        raise VerifyError(f"metadata of {component}/{key} has malformed fields", hint="the artifact is corrupt")
    try:
        return Metadata(
            component=doc["component"], key=doc["key"], key_doc=doc["key_doc"],
            archive_sha256=str(doc["archive_sha256"]), archive_size=int(doc["archive_size"]),
            created=str(doc["created"]), builder_platform=str(doc["builder_platform"]),
            cbe=None if cbe is None else CbeInfo(str(cbe["name"]), str(cbe["version"]), str(cbe["lock_digest"])),
            pib_version=str(doc["pib_version"]), dirty=bool(doc["dirty"]), signer=str(doc["signer"]),
            output_digest=out,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifyError(f"metadata of {component}/{key} has malformed fields", hint="the artifact is corrupt") from exc
