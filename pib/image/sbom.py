"""The image's software bill of materials: SPDX 2.3 JSON and CycloneDX 1.6 JSON.

Both list every component (source repository, commit, tree, key, declared
license), the declared sources with their SHA-256, the build environment and
its packages, and every entry of the boot archive with the component that
supplied it. Their bytes depend only on the image's inputs: the only time in
them is the build stamp, and identifiers are derived from content.

pib.build fills in the facts (it knows the plan, the CBE and its lock); this
module only writes them, and reads back the file table for `pib verify`.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from pib.errors import PibError, Reason
from pib.image.manifest import Kind, Record
from pib.image.resolve import Resolution

SPDX_FILE = "sbom.spdx.json"
CDX_FILE = "sbom.cdx.json"
NOASSERTION = "NOASSERTION"


class SourceFile(NamedTuple):
    """A declared source of a component: the file a build got, by name and SHA-256."""

    name: str
    sha256: str
    origin: str  # its URL, or "apt NAME=VERSION"


class ComponentFacts(NamedTuple):
    name: str
    key: str
    repository: str | None  # where it is cloned from (None: a checkout used in place)
    commit: str | None
    tree: str
    dirty: bool
    license: str | None
    sources: tuple[SourceFile, ...] = ()


class EnvPackage(NamedTuple):
    name: str
    version: str
    arch: str
    sha256: tuple[str, ...]


class BuildEnvFacts(NamedTuple):
    """The CBE components were built in, and its pinned packages."""

    name: str
    version: str
    lock_digest: str
    provider: str
    packages: tuple[EnvPackage, ...]


class Bill(NamedTuple):
    """What pib.build knows about an image's inputs, for the SBOMs and the provenance."""

    workspace: str
    components: tuple[ComponentFacts, ...]
    environment: BuildEnvFacts | None
    builder: str  # the host the build ran on
    pib_version: str


class FileFacts(NamedTuple):
    path: str
    kind: str  # file | dir | symlink | hardlink
    component: str  # the component (or overlay, or "pib" for generated files) that supplied it
    mode: int
    size: int
    sha256: str | None
    sha1: str | None
    target: str | None


def file_facts(resolution: Resolution, records: Sequence[Record]) -> list[FileFacts]:
    """Every entry of the boot archive with its supplier; file contents are read again for SHA-1 (SPDX
    requires it) and must still have the SHA-256 the archive was written with."""
    origin = {r.entry.path: r for r in resolution.entries}
    sha1_of: dict[str, str] = {}
    out: list[FileFacts] = []
    for rec in records:
        r = origin[rec.path]
        sha1 = None
        if rec.kind is Kind.FILE:
            sha1 = sha1_of[rec.path] = _sha1_checked(r.content, r.source, rec)
        elif rec.kind is Kind.HARDLINK:
            sha1 = sha1_of.get(rec.target or "")
        size = (rec.size or 0) if rec.kind in (Kind.FILE, Kind.HARDLINK) else 0
        out.append(FileFacts(rec.path, rec.kind.name.lower(), r.origin, rec.mode, size, rec.sha256, sha1,
                             rec.target or None))
    # Hard links may sort before their target.
    return [f._replace(sha1=sha1_of.get(f.target or "")) if f.kind == "hardlink" else f for f in out]


def _sha1_checked(content: bytes | None, source: str | None, rec: Record) -> str:
    h1, h256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
    if content is not None:
        h1.update(content)
        h256.update(content)
    else:
        assert source is not None
        with open(source, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h1.update(chunk)
                h256.update(chunk)
    if h256.hexdigest() != rec.sha256:
        raise PibError(f"{source or rec.path} changed while the image was written", reason=Reason.IMAGE,
                       hint="do not rebuild components while the image is made")
    return h1.hexdigest()


# --- SPDX 2.3 ---------------------------------------------------------------------------


def _spdx_id(kind: str, *parts: str) -> str:
    text = "-".join(parts)
    clean = re.sub(r"[^A-Za-z0-9.-]", "-", text)
    # Cleaning can make two names equal: a short digest of the original keeps ids unique.
    return f"SPDXRef-{kind}-{clean}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _download(repo: str | None, commit: str | None) -> str:
    if repo and "://" in repo and commit:
        return f"git+{repo}@{commit}"
    return NOASSERTION


def spdx_document(bill: Bill, files: Sequence[FileFacts], *, image: str, epoch: int,
                  boot_archive_sha256: str) -> dict[str, Any]:
    doc_id = "SPDXRef-DOCUMENT"
    image_id = "SPDXRef-Image"
    packages: list[dict[str, Any]] = [{
        "SPDXID": image_id,
        "name": image,
        "versionInfo": image.removeprefix("platform-"),
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "checksums": [{"algorithm": "SHA256", "checksumValue": boot_archive_sha256}],
        "comment": "the boot archive of a platform image made by pib",
    }]
    rels: list[dict[str, str]] = [{"spdxElementId": doc_id, "relationshipType": "DESCRIBES",
                                   "relatedSpdxElement": image_id}]
    by_origin: dict[str, list[FileFacts]] = {}
    for f in files:
        by_origin.setdefault(f.component, []).append(f)
    comp_ids: dict[str, str] = {}
    for c in bill.components:
        cid = comp_ids[c.name] = _spdx_id("Component", c.name)
        packages.append(_spdx_package(cid, c.name, c.commit or c.key, _download(c.repository, c.commit),
                                      by_origin.get(c.name, []), license=c.license, refs=[
                                          ("pib-key", c.key), ("git-tree", c.tree),
                                          *([("git-commit", c.commit)] if c.commit else [])],
                                      info=f"git tree {c.tree}" + (f", commit {c.commit}" if c.commit else "")
                                      + (" (uncommitted changes)" if c.dirty else "")
                                      + (f", from {c.repository}" if c.repository else "")))
        rels.append({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": cid})
        for s in c.sources:
            sid = _spdx_id("Source", c.name, s.name)
            packages.append({
                "SPDXID": sid, "name": s.name, "downloadLocation": s.origin if "://" in s.origin else NOASSERTION,
                "filesAnalyzed": False, "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION,
                "copyrightText": NOASSERTION, "primaryPackagePurpose": "SOURCE", "sourceInfo": s.origin,
                "checksums": [{"algorithm": "SHA256", "checksumValue": s.sha256}],
            })
            rels.append({"spdxElementId": cid, "relationshipType": "GENERATED_FROM", "relatedSpdxElement": sid})
    for origin in sorted(set(by_origin) - set(comp_ids)):  # overlays and pib's own files
        oid = comp_ids[origin] = _spdx_id("Origin", origin)
        packages.append(_spdx_package(oid, origin, None, NOASSERTION, by_origin[origin], license=None, refs=[],
                                      info="an overlay of the workspace" if origin.startswith("overlay:")
                                      else "written by pib"))
        rels.append({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": oid})
    env = bill.environment
    if env is not None:
        eid = _spdx_id("BuildEnvironment", env.name)
        packages.append({
            "SPDXID": eid, "name": env.name, "versionInfo": env.version, "downloadLocation": NOASSERTION,
            "filesAnalyzed": False, "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION,
            "copyrightText": NOASSERTION, "primaryPackagePurpose": "INSTALL",
            "sourceInfo": f"{env.provider} build environment, lock digest {env.lock_digest}",
        })
        for cid in (comp_ids[c.name] for c in bill.components):
            rels.append({"spdxElementId": eid, "relationshipType": "BUILD_TOOL_OF", "relatedSpdxElement": cid})
        for p in env.packages:
            pid = _spdx_id("EnvPackage", p.name, p.version, p.arch)
            pkg: dict[str, Any] = {
                "SPDXID": pid, "name": p.name, "versionInfo": p.version, "downloadLocation": NOASSERTION,
                "filesAnalyzed": False, "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION,
                "copyrightText": NOASSERTION,
            }
            if p.sha256:
                pkg["checksums"] = [{"algorithm": "SHA256", "checksumValue": s} for s in p.sha256]
            packages.append(pkg)
            rels.append({"spdxElementId": eid, "relationshipType": "CONTAINS", "relatedSpdxElement": pid})
    spdx_files = []
    for f in files:
        if f.kind not in ("file", "hardlink"):
            continue
        fid = _spdx_id("File", f.path)
        spdx_files.append({
            "SPDXID": fid, "fileName": f"./{f.path}",
            "checksums": [{"algorithm": "SHA1", "checksumValue": f.sha1},
                          {"algorithm": "SHA256", "checksumValue": f.sha256}],
            "licenseConcluded": NOASSERTION, "copyrightText": NOASSERTION,
            "comment": f"supplied by {f.component}",
        })
        rels.append({"spdxElementId": comp_ids[f.component], "relationshipType": "CONTAINS",
                     "relatedSpdxElement": fid})
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": doc_id,
        "name": image,
        # Unique per content: the same inputs give the same document, other inputs another namespace.
        "documentNamespace": f"https://pib.invalid/spdx/{bill.workspace}/{image}-{boot_archive_sha256}",
        "creationInfo": {"created": _iso(epoch), "creators": [f"Tool: pib-{bill.pib_version}"]},
        "documentDescribes": [image_id],
        "packages": packages,
        "files": spdx_files,
        "relationships": rels,
    }


def _spdx_package(pid: str, name: str, version: str | None, download: str, files: Sequence[FileFacts], *,
                  license: str | None, refs: Sequence[tuple[str, str]], info: str) -> dict[str, Any]:
    sha1s = sorted(f.sha1 for f in files if f.kind in ("file", "hardlink") and f.sha1)
    pkg: dict[str, Any] = {
        "SPDXID": pid, "name": name, "downloadLocation": download,
        "filesAnalyzed": bool(sha1s),
        "licenseConcluded": NOASSERTION, "licenseDeclared": license or NOASSERTION,
        "copyrightText": NOASSERTION, "sourceInfo": info,
    }
    if version:
        pkg["versionInfo"] = version
    if sha1s:
        # SPDX 2.3 section 7.9: SHA-1 of the sorted, concatenated SHA-1s of the package's files.
        pkg["packageVerificationCode"] = {
            "packageVerificationCodeValue": hashlib.sha1("".join(sha1s).encode(), usedforsecurity=False).hexdigest()}
    if refs:
        pkg["externalRefs"] = [{"referenceCategory": "OTHER", "referenceType": t, "referenceLocator": v}
                               for t, v in refs]
    return pkg


# --- CycloneDX 1.6 ----------------------------------------------------------------------


def cyclonedx_json(bill: Bill, files: Sequence[FileFacts], *, image: str, epoch: int,
                   boot_archive_sha256: str) -> str:
    """The CycloneDX 1.6 document, written with cyclonedx-python-lib."""
    from cyclonedx.model import (
        ExternalReference,
        ExternalReferenceType,
        HashAlgorithm,
        HashType,
        Property,
        XsUri,
    )
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.license import LicenseExpression
    from cyclonedx.model.tool import Tool
    from cyclonedx.output.json import JsonV1Dot6

    def sha256(v: str) -> HashType:
        return HashType(alg=HashAlgorithm.SHA_256, content=v)

    by_origin: dict[str, list[FileFacts]] = {}
    for f in files:
        by_origin.setdefault(f.component, []).append(f)

    def file_components(origin: str) -> list[Component]:
        out = []
        for f in by_origin.get(origin, []):
            props = [Property(name="pib:kind", value=f.kind), Property(name="pib:mode", value=f"{f.mode:04o}")]
            if f.target:
                props.append(Property(name="pib:target", value=f.target))
            hashes = [HashType(alg=HashAlgorithm.SHA_1, content=f.sha1), sha256(f.sha256)] if f.sha256 and f.sha1 \
                else []
            out.append(Component(name=f.path, type=ComponentType.FILE, bom_ref=f"file:{f.path}", hashes=hashes,
                                 properties=props))
        return out

    comps = []
    for c in bill.components:
        props = [Property(name="pib:key", value=c.key), Property(name="pib:tree", value=c.tree),
                 Property(name="pib:dirty", value=str(c.dirty).lower())]
        if c.commit:
            props.append(Property(name="pib:commit", value=c.commit))
        refs = []
        if c.repository and "://" in c.repository:
            refs.append(ExternalReference(type=ExternalReferenceType.VCS, url=XsUri(c.repository)))
        nested = [Component(name=s.name, type=ComponentType.FILE, bom_ref=f"source:{c.name}/{s.name}",
                            hashes=[sha256(s.sha256)], properties=[Property(name="pib:origin", value=s.origin)])
                  for s in c.sources]
        comps.append(Component(
            name=c.name, version=c.commit or c.key, type=ComponentType.APPLICATION, bom_ref=f"component:{c.name}",
            licenses=[LicenseExpression(c.license)] if c.license else None, properties=props,
            external_references=refs, components=nested + file_components(c.name)))
    for origin in sorted(set(by_origin) - {c.name for c in bill.components}):
        comps.append(Component(name=origin, type=ComponentType.DATA, bom_ref=f"component:{origin}",
                               components=file_components(origin)))
    env = bill.environment
    if env is not None:
        comps.append(Component(
            name=env.name, version=env.version, type=ComponentType.PLATFORM, bom_ref=f"cbe:{env.name}",
            properties=[Property(name="pib:lock-digest", value=env.lock_digest),
                        Property(name="pib:provider", value=env.provider),
                        Property(name="pib:role", value="build environment")],
            components=[Component(name=p.name, version=p.version, type=ComponentType.LIBRARY,
                                  bom_ref=f"cbe:{env.name}/{p.name}@{p.version}:{p.arch}",
                                  hashes=[sha256(s) for s in p.sha256]) for p in env.packages]))
    root = Component(name=image, version=image.removeprefix("platform-"), type=ComponentType.OPERATING_SYSTEM,
                     bom_ref=f"image:{image}", hashes=[sha256(boot_archive_sha256)])
    meta = BomMetaData(component=root, timestamp=datetime.fromtimestamp(epoch, UTC))
    meta.tools.tools.add(Tool(vendor="pib", name="pib", version=bill.pib_version))
    serial = uuid.UUID(bytes=hashlib.sha256(f"{bill.workspace}/{image}/{boot_archive_sha256}".encode()).digest()[:16],
                       version=5)
    bom = Bom(components=comps, metadata=meta, serial_number=serial)
    for c in bill.components:
        top = next(x for x in comps if x.name == c.name)
        bom.register_dependency(root, [top])
    text: str = JsonV1Dot6(bom).output_as_string(indent=1)
    return text + "\n"


def write_sboms(pdir: Path, bill: Bill, files: Sequence[FileFacts], *, image: str, epoch: int,
                boot_archive_sha256: str) -> tuple[Path, Path]:
    spdx = pdir / SPDX_FILE
    spdx.write_text(json.dumps(spdx_document(bill, files, image=image, epoch=epoch,
                                             boot_archive_sha256=boot_archive_sha256), indent=1, sort_keys=True)
                    + "\n", encoding="utf-8")
    cdx = pdir / CDX_FILE
    cdx.write_text(cyclonedx_json(bill, files, image=image, epoch=epoch, boot_archive_sha256=boot_archive_sha256),
                   encoding="utf-8")
    return spdx, cdx


# --- reading back -------------------------------------------------------------------------


class SbomFile(NamedTuple):
    path: str
    component: str
    sha256: str


def read_spdx_files(raw: bytes) -> tuple[dict[str, list[SbomFile]], Mapping[str, str]]:
    """The SPDX document's files by path (a path listed twice has two entries) and its package names by id."""
    try:
        doc = json.loads(raw)
        names = {p["SPDXID"]: p["name"] for p in doc["packages"]}
        owner: dict[str, list[str]] = {}
        for r in doc["relationships"]:
            if r["relationshipType"] == "CONTAINS" and r["spdxElementId"] in names:
                owner.setdefault(r["relatedSpdxElement"], []).append(names[r["spdxElementId"]])
        out: dict[str, list[SbomFile]] = {}
        for f in doc["files"]:
            sha = next(c["checksumValue"] for c in f["checksums"] if c["algorithm"] == "SHA256")
            path = f["fileName"].removeprefix("./")
            for comp in owner.get(f["SPDXID"], [""]):
                out.setdefault(path, []).append(SbomFile(path, comp, sha))
        return out, names
    except (ValueError, KeyError, TypeError, StopIteration, AttributeError) as exc:
        raise PibError(f"{SPDX_FILE} is not an SPDX document pib wrote ({exc})", reason=Reason.VERIFY,
                       hint="the SBOM is damaged or not pib's") from exc
