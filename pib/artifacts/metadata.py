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
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import pib
from pib.artifacts import provenance
from pib.artifacts.signing import PublicKey, Signer, verify
from pib.errors import VerifyError
from pib.fsutil import canonical_json
from pib.store import MAX_META

META_FORMAT = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_ARCHIVE = 1 << 50  # bytes; anything larger is not an archive pib wrote
OPTIONAL = ("output_digest", "provenance")  # fields newer artifacts have and older ones lack
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
    commit: str | None = None  # the source commit built, for the artifact's provenance


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
    provenance: str | None = None  # the artifact's own DSSE-signed in-toto/SLSA statement (one JSON line)


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


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def parse_document(raw: bytes, what: str) -> dict[str, Any]:
    """The one parse of metadata bytes from a store (untrusted until verified).

    Bounded in size; duplicate fields, NaN/Infinity, numbers out of range,
    integers past Python's digit limit and nesting past the recursion limit
    are all a VerifyError, never a crash.
    """
    if len(raw) > MAX_META:
        raise VerifyError(f"metadata of {what} is {len(raw)} bytes, more than {MAX_META}",
                          hint="the artifact metadata is corrupt or hostile")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_float=_finite,
                         parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError, OverflowError) as exc:
        raise VerifyError(f"metadata of {what} is not valid JSON ({type(exc).__name__})",
                          hint="the artifact is corrupt") from None
    if not isinstance(doc, dict):
        raise VerifyError(f"metadata of {what} is not a JSON object", hint="the artifact is corrupt")
    return doc


def read_signed(raw: bytes, trusted_keys: Iterable[PublicKey], *, fields: Collection[str], what: str,
                optional: Collection[str] = ()) -> dict[str, Any]:
    """Parse signed metadata bytes, verify the signature, and check the format and the exact field set.

    `optional` fields may be there or not; no other field may. `what` names the artifact in errors.
    Returns the document without its signature.
    """
    doc = parse_document(raw, what)
    signature = doc.pop("signature", None)
    if not isinstance(signature, str):
        raise VerifyError(f"artifact {what} is not signed",
                          hint="only signed artifacts are restored; publish it again with a signing key")
    try:
        signed = canonical_json(doc)
    except (ValueError, RecursionError) as exc:
        raise VerifyError(f"metadata of {what} cannot be checked ({type(exc).__name__})",
                          hint="the artifact is corrupt") from None
    verify(signed, signature, trusted_keys)
    if doc.get("format") != META_FORMAT or sorted(k for k in doc if k not in optional) != sorted(fields):
        raise VerifyError(f"metadata of {what} has an unknown format",
                          hint="it was written by another pib version; it will be rebuilt locally")
    return doc


def make_metadata(info: ArtifactInfo, archive_sha256: str, archive_size: int, signer: Signer, *,
                  created: dt.datetime | None = None) -> bytes:
    """The signed metadata document of a component artifact, as the bytes to store."""
    cbe = info.cbe
    extra: dict[str, Any] = {} if info.output_digest is None else {"output_digest": info.output_digest}
    stmt = provenance.component_statement(
        component=info.component, key=info.key, key_doc=info.key_doc, archive_sha256=archive_sha256,
        output_digest=info.output_digest, commit=info.commit, dirty=info.dirty,
        builder_platform=info.builder_platform, builder_version={"pib": pib.__version__})
    extra["provenance"] = provenance.envelope(stmt, signer).decode().rstrip("\n")
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
    doc = read_signed(raw, trusted_keys, fields=_FIELDS, what=f"{component}/{key}", optional=OPTIONAL)
    if doc["component"] != component or doc["key"] != key:
        raise VerifyError(
            f"metadata names {doc['component']}/{doc['key']}, not the requested {component}/{key}",
            hint="a signed artifact was stored under the wrong name (replayed); delete it from the store",
        )
    bad = _bad_fields(doc)
    if bad:
        raise VerifyError(f"metadata of {component}/{key} has malformed fields: {', '.join(bad)}",
                          hint="the artifact is corrupt")
    cbe = doc["cbe"]
    return Metadata(
        component=doc["component"], key=doc["key"], key_doc=doc["key_doc"],
        archive_sha256=doc["archive_sha256"], archive_size=doc["archive_size"],
        created=doc["created"], builder_platform=doc["builder_platform"],
        cbe=None if cbe is None else CbeInfo(cbe["name"], cbe["version"], cbe["lock_digest"]),
        pib_version=doc["pib_version"], dirty=doc["dirty"], signer=doc["signer"],
        output_digest=doc.get("output_digest"), provenance=doc.get("provenance"),
    )


def _bad_fields(doc: Mapping[str, Any]) -> list[str]:
    """Fields of a component artifact's document whose type or range is wrong (a signed document too:
    a compromised key must not crash a build)."""
    bad = [f for f in ("created", "builder_platform", "pib_version", "signer") if not isinstance(doc[f], str)]
    if not isinstance(doc["key_doc"], dict):
        bad.append("key_doc")
    if not isinstance(doc["archive_sha256"], str) or not _SHA256.match(doc["archive_sha256"]):
        bad.append("archive_sha256")
    size = doc["archive_size"]
    if type(size) is not int or not 0 < size <= _MAX_ARCHIVE:
        bad.append("archive_size")
    if type(doc["dirty"]) is not bool:
        bad.append("dirty")
    cbe = doc["cbe"]
    if cbe is not None and not (isinstance(cbe, dict) and sorted(cbe) == ["lock_digest", "name", "version"]
                                and all(isinstance(v, str) for v in cbe.values())):
        bad.append("cbe")
    out = doc.get("output_digest")
    if out is not None and not (isinstance(out, str) and len(out) <= 200):
        bad.append("output_digest")
    prov = doc.get("provenance")
    if prov is not None and not isinstance(prov, str):
        bad.append("provenance")
    return bad
