"""Build provenance: an in-toto v1 Statement with a SLSA provenance v1 predicate, in a DSSE envelope.

The envelope is signed with Ed25519 (pib.artifacts.signing) over DSSE's
pre-authentication encoding, PAE(type, body) =
"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, with LEN the length in
bytes as ASCII decimal. The file holds one envelope per line (.jsonl), as
in-toto bundles do. Reading one verifies the signature against the trusted
keys before anything in the statement is believed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pib.artifacts.signing import PublicKey, Signer, verify
from pib.errors import VerifyError
from pib.fsutil import canonical_json

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
IMAGE_BUILD_TYPE = "https://pib.invalid/build-types/platform-image/v1"
COMPONENT_BUILD_TYPE = "https://pib.invalid/build-types/component/v1"
BUILDER_ID = "https://pib.invalid/builder/pib"


class Subject(NamedTuple):
    name: str
    sha256: str


class Dependency(NamedTuple):
    """A SLSA ResourceDescriptor of a resolved dependency."""

    name: str
    uri: str | None
    digest: Mapping[str, str]
    annotations: Mapping[str, Any] = {}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "digest": dict(self.digest)}
        if self.uri:
            out["uri"] = self.uri
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


def component_statement(*, component: str, key: str, key_doc: Mapping[str, Any], archive_sha256: str,
                        output_digest: str | None, commit: str | None, dirty: bool, builder_platform: str,
                        builder_version: Mapping[str, str]) -> dict[str, Any]:
    """The provenance of one component artifact: its archive (and output digest) made from its key's inputs.

    Only what the signed key document says goes in, so the statement of a key is the same on every
    builder that made the same bytes; who signed it says which builder vouches for it.
    """
    source = key_doc.get("source")
    tree = source.get("tree") if isinstance(source, Mapping) else None
    deps: list[Dependency] = []
    if isinstance(tree, str) and tree:
        digest = {"gitTree": tree, **({"gitCommit": commit} if commit else {})}
        deps.append(Dependency(f"source:{component}", None, digest, {"dirty": dirty}))
    declared = key_doc.get("sources")
    if isinstance(declared, Mapping):
        for name, sha in sorted(declared.items()):
            deps.append(Dependency(f"source:{component}/{name}", None, {"sha256": str(sha)}))
    depends = key_doc.get("depends")
    if isinstance(depends, Mapping):
        for name, out in sorted(depends.items()):
            deps.append(Dependency(f"output:{name}", None, {"pibOutput": str(out)}))
    cbe = key_doc.get("cbe")
    if isinstance(cbe, Mapping) and cbe:
        deps.append(Dependency(f"cbe:{cbe.get('name')}/{cbe.get('version')}", None,
                               {"pibLock": str(cbe.get("lock", ""))}))
    digest_set = {"sha256": archive_sha256, **({"pibOutput": output_digest} if output_digest else {})}
    stmt = statement([Subject(f"pib:artifact/{component}/{key}", archive_sha256)], build_type=COMPONENT_BUILD_TYPE,
                     external={"component": component, "key": key},
                     internal={"keyDocument": dict(key_doc), "builderPlatform": builder_platform},
                     dependencies=deps, builder_version=builder_version, invocation_id=f"{component}/{key}")
    stmt["subject"][0]["digest"] = digest_set
    return stmt


def pae(payload_type: str, body: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def statement(subjects: Sequence[Subject], *, build_type: str, external: Mapping[str, Any],
              internal: Mapping[str, Any], dependencies: Sequence[Dependency], builder_version: Mapping[str, str],
              invocation_id: str) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": s.name, "digest": {"sha256": s.sha256}} for s in subjects],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": build_type,
                "externalParameters": dict(external),
                "internalParameters": dict(internal),
                "resolvedDependencies": [d.to_json() for d in dependencies],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": dict(builder_version)},
                "metadata": {"invocationId": invocation_id},
            },
        },
    }


def envelope(stmt: Mapping[str, Any], signer: Signer) -> bytes:
    """The signed DSSE envelope of `stmt`, one line of JSON."""
    body = canonical_json(stmt)
    env = {
        "payload": base64.b64encode(body).decode(),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [{"keyid": signer.key_id, "sig": signer.sign(pae(PAYLOAD_TYPE, body))}],
    }
    return canonical_json(env) + b"\n"


class Verified(NamedTuple):
    statement: dict[str, Any]
    signer: PublicKey


def open_envelope(raw: bytes, trusted: Iterable[PublicKey], *, what: str) -> Verified:
    """Verify one DSSE envelope (the first line of `raw`) and return its in-toto statement.

    Every signature is tried against every trusted key; one that verifies is enough.
    """
    keys = list(trusted)
    try:
        env = json.loads(raw.decode("utf-8").split("\n", 1)[0])
        body = base64.b64decode(env["payload"], validate=True)
        payload_type = env["payloadType"]
        sigs = [s["sig"] for s in env["signatures"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise VerifyError(f"{what} is not a DSSE envelope", hint="the provenance is damaged") from exc
    if payload_type != PAYLOAD_TYPE:
        raise VerifyError(f"{what} holds {payload_type!r}, not an in-toto statement", hint="the provenance is not pib's")
    signer: PublicKey | None = None
    last: VerifyError | None = None
    for sig in sigs:
        try:
            signer = verify(pae(payload_type, body), str(sig), keys)
            break
        except VerifyError as exc:
            last = exc
    if signer is None:
        raise VerifyError(f"{what}: the signature does not verify with any trusted key",
                          hint="it was signed by an untrusted key or altered; trust the builder's public key "
                               "([trust] public_keys, or --key)") from last
    try:
        stmt = json.loads(body)
    except ValueError as exc:
        raise VerifyError(f"{what}: the signed statement is not JSON", hint="the provenance is not pib's") from exc
    check_statement(stmt, what=what)
    return Verified(stmt, signer)


def check_statement(stmt: Any, *, what: str) -> None:
    """The fields an in-toto v1 Statement with a SLSA v1 predicate must have."""
    ok = (isinstance(stmt, dict) and stmt.get("_type") == STATEMENT_TYPE
          and stmt.get("predicateType") == SLSA_PROVENANCE
          and isinstance(stmt.get("subject"), list) and stmt["subject"]
          and all(isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("digest"), dict)
                  and s["digest"] for s in stmt["subject"]))
    pred = stmt.get("predicate") if isinstance(stmt, dict) else None
    bd = pred.get("buildDefinition") if isinstance(pred, dict) else None
    rd = pred.get("runDetails") if isinstance(pred, dict) else None
    ok = ok and isinstance(bd, dict) and isinstance(bd.get("buildType"), str) \
        and isinstance(bd.get("externalParameters"), dict) \
        and isinstance(rd, dict) and isinstance(rd.get("builder"), dict) and isinstance(rd["builder"].get("id"), str)
    if not ok:
        raise VerifyError(f"{what} is not an in-toto v1 statement with SLSA v1 provenance",
                          hint="the provenance is not pib's")


def subjects_of(stmt: Mapping[str, Any]) -> dict[str, str]:
    """Subject name -> SHA-256."""
    return {s["name"]: s["digest"].get("sha256", "") for s in stmt["subject"]}
