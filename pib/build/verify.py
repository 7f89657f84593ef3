"""`pib verify`: check a platform image against its signed provenance and its SBOM.

1. The provenance's DSSE envelope verifies with a trusted key.
2. Every file of the platform directory (or tarball) and the tarball itself have
   the SHA-256 the statement names, and no file is there that it does not name.
3. Every file of the boot archive is listed in the SBOM (whose digest was just
   checked) exactly once, with its SHA-256, under one component.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

from pib.artifacts.provenance import open_envelope, subjects_of
from pib.artifacts.signing import PublicKey
from pib.errors import VerifyError
from pib.fsutil import READ_SIZE, read_small
from pib.image import cpio
from pib.image.manifest import Kind, parse_image_manifest
from pib.image.sbom import SPDX_FILE, read_spdx_files
from pib.image.write import PROVENANCE_FILE

_UNSIGNED = frozenset({"build.json", PROVENANCE_FILE})
MAX_PROVENANCE = 64 << 20  # a provenance named with --provenance: a document, not a stream


class FileOrigin(NamedTuple):
    path: str
    component: str
    sha256: str
    key: str | None
    commit: str | None
    tree: str | None
    builder: str


class VerifyReport(NamedTuple):
    image: str
    signer: str
    subjects: int
    files: int
    components: Mapping[str, int]  # files of the boot archive per component
    file: FileOrigin | None

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "image": self.image, "signer": self.signer, "subjects": self.subjects,
                "files": self.files, "components": dict(self.components),
                "file": self.file._asdict() if self.file else None}


# No file of an image is larger (a boot archive is a few hundred MiB): a larger one is refused unread.
FILE_LIMIT = 8 << 30
# The files verify reads (the others it only hashes).
_READ = frozenset({"boot_archive", "boot_archive.manifest", SPDX_FILE})


class _Image:
    """The files of a platform directory (regular files only, never a link followed out of it, each read
    at most once and within FILE_LIMIT) or of its tarball (already in memory)."""

    def __init__(self, name: str, root: Path | None, members: dict[str, bytes]) -> None:
        self.name = name
        self.root = root
        self.members = members
        self.names = set(members)
        self._data: dict[str, bytes] = {}
        if root is not None:
            for p in sorted(root.iterdir()):
                _check_regular(p)
                self.names.add(p.name)

    def digest(self, name: str) -> str:
        if self.root is None or name in _READ:
            return hashlib.sha256(self.data(name)).hexdigest()
        h = hashlib.sha256()
        with _open_regular(self.root / name) as fh:
            while chunk := fh.read(READ_SIZE):
                h.update(chunk)
        return h.hexdigest()

    def data(self, name: str) -> bytes:
        if self.root is None:
            return self.members[name]
        if name not in self._data:  # read once: what is hashed is what is parsed
            with _open_regular(self.root / name) as fh:
                self._data[name] = fh.read(FILE_LIMIT + 1)
        return self._data[name]


def _check_regular(path: Path) -> os.stat_result:
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise VerifyError(f"{path} is {kind}; an image holds regular files only",
                          hint="the image was altered after it was made; do not ship it")
    if st.st_size > FILE_LIMIT:
        raise VerifyError(f"{path} is {st.st_size} bytes, larger than any file of an image",
                          hint="the image was altered after it was made; do not ship it")
    return st


def _open_regular(path: Path) -> IO[bytes]:
    """`path` opened for reading if it is still a regular file within FILE_LIMIT: never through a link,
    never blocking on a fifo put in its place."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise VerifyError(f"cannot read {path}: {exc.strerror or exc}",
                          hint="the image was altered after it was made; do not ship it") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > FILE_LIMIT:
        os.close(fd)
        _check_regular(path)
        raise VerifyError(f"{path} changed while it was verified", hint="verify it again when nothing writes it")
    return os.fdopen(fd, "rb")


def _platform_files(target: Path) -> tuple[_Image, bytes | None, Path]:
    """(the image's files, the tarball's bytes if there is one, default provenance path)."""
    target = target.resolve()
    if target.is_dir():
        tgz = target.with_name(target.name + ".tgz")
        raw = None
        if os.path.lexists(tgz):
            with _open_regular(tgz) as fh:
                raw = fh.read(FILE_LIMIT + 1)
        return _Image(target.name, target, {}), raw, target / PROVENANCE_FILE
    if not target.is_file():
        raise VerifyError(f"{target} is neither a platform directory nor a platform tarball",
                          hint="name output/platform-STAMP or output/platform-STAMP.tgz")
    with _open_regular(target) as fh:
        raw = fh.read(FILE_LIMIT + 1)
    name = target.name.removesuffix(".tgz")
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for m in tar:
                total += m.size
                if total > FILE_LIMIT:
                    raise VerifyError(f"{target} holds more than {FILE_LIMIT} bytes",
                                      hint="the tarball is not pib's")
                if m.isfile() and m.name.startswith(f"{name}/") and "/" not in m.name[len(name) + 1:]:
                    member = tar.extractfile(m)
                    assert member is not None
                    files[m.name[len(name) + 1:]] = member.read()
                elif not (m.isdir() and m.name == name):
                    raise VerifyError(f"{target}: unexpected member {m.name!r}", hint="the tarball is not pib's")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise VerifyError(f"{target} is not a readable platform tarball ({exc})",
                          hint="the tarball is damaged") from exc
    return _Image(name, None, files), raw, target.with_name(name) / PROVENANCE_FILE


def verify(target: Path, trusted: Iterable[PublicKey], *, provenance: Path | None = None,
           file: str | None = None) -> VerifyReport:
    image, tarball, default_prov = _platform_files(target)
    name = image.name
    prov_path = provenance or default_prov
    try:
        if provenance is None and prov_path.parent == image.root:
            with _open_regular(prov_path) as fh:
                raw = fh.read(FILE_LIMIT + 1)
        else:
            raw = read_small(prov_path, MAX_PROVENANCE)
    except OSError as exc:
        raise VerifyError(f"cannot read the provenance {prov_path}: {exc.strerror or exc}",
                          hint="it is written beside the image; pass --provenance FILE") from exc
    stmt, signer = open_envelope(raw, trusted, what=str(prov_path))
    subjects = subjects_of(stmt)
    tgz_name = f"{name}.tgz"
    unsigned = sorted(image.names - set(subjects) - _UNSIGNED)
    if unsigned:
        raise VerifyError(f"{name} holds files the provenance does not name: {', '.join(unsigned)}",
                          hint="something was added after the image was made")
    for sname, want in subjects.items():
        if sname == tgz_name:
            if tarball is None:
                continue  # a platform directory whose tarball was not kept: its files are checked one by one
            got = hashlib.sha256(tarball).hexdigest()
        elif sname in image.names:
            got = image.digest(sname)
        else:
            raise VerifyError(f"{sname} is named by the provenance but missing from {name}",
                              hint="the image is incomplete")
        if got != want:
            raise VerifyError(f"{sname} does not match the SHA-256 in the signed provenance",
                              hint="the file was altered after the image was made; do not ship it")
    if tgz_name not in subjects and tarball is not None:
        raise VerifyError(f"the provenance does not name {tgz_name}", hint="the provenance is not this image's")
    for needed in ("boot_archive", SPDX_FILE):
        if needed not in subjects:
            raise VerifyError(f"the provenance does not name {needed}", hint="the provenance is not a pib image's")

    listed, _ = read_spdx_files(image.data(SPDX_FILE))
    manifest = image.data("boot_archive.manifest") if "boot_archive.manifest" in image.names else None
    archive = _archive_files(image.data("boot_archive"), manifest)
    per_component: dict[str, int] = {}
    for path, sha in sorted(archive.items()):
        entries = listed.get(path, [])
        if len(entries) != 1:
            why = "no component" if not entries else f"{len(entries)} components ({', '.join(e.component for e in entries)})"
            raise VerifyError(f"boot archive file {path} is accounted for by {why} in {SPDX_FILE}",
                              hint="the SBOM does not describe this boot archive")
        if entries[0].sha256 != sha:
            raise VerifyError(f"boot archive file {path} does not have the SHA-256 {SPDX_FILE} gives it",
                              hint="the SBOM does not describe this boot archive")
        per_component[entries[0].component] = per_component.get(entries[0].component, 0) + 1
    extra = sorted(set(listed) - set(archive))
    if extra:
        raise VerifyError(f"{SPDX_FILE} lists files the boot archive does not hold: {', '.join(extra[:5])}",
                          hint="the SBOM does not describe this boot archive")
    origin = None
    if file is not None:
        origin = _origin(file.lstrip("/"), listed, stmt, signer)
    return VerifyReport(name, signer.id, len(subjects), len(archive), per_component, origin)


def _archive_files(boot_archive: bytes, manifest: bytes | None) -> dict[str, str]:
    """The regular files of the boot archive (every name of a hard link) with their SHA-256."""
    if boot_archive[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(boot_archive)).read()
    elif boot_archive[:2] == b"\x1f\x8b":
        data = gzip.decompress(boot_archive)
    else:
        # Written by an archive command in its own format: the (signed) manifest lists it.
        if manifest is None:
            raise VerifyError("the boot archive is not a cpio archive pib reads, and there is no manifest",
                              hint="the image is incomplete")
        records = parse_image_manifest(manifest.decode("utf-8"), "boot_archive.manifest")
        return {r.path: r.sha256 or "" for r in records.values() if r.kind in (Kind.FILE, Kind.HARDLINK)}
    out: dict[str, str] = {}
    groups: dict[int, list[str]] = {}
    try:
        for m in cpio.members(data):
            if (m.mode & 0o170000) != 0o100000:
                continue
            if m.nlink > 1:
                groups.setdefault(m.ino, []).append(m.name)
                if m.data:
                    digest = hashlib.sha256(m.data).hexdigest()
                    for n in groups[m.ino]:
                        out[n] = digest
                continue
            out[m.name] = hashlib.sha256(m.data).hexdigest()
    except cpio.FormatError as exc:
        raise VerifyError(f"the boot archive is damaged: {exc}", hint="do not ship it") from exc
    for names in groups.values():
        for n in names:
            out.setdefault(n, hashlib.sha256(b"").hexdigest())
    return out


def _origin(path: str, listed: Mapping[str, list[Any]], stmt: Mapping[str, Any], signer: PublicKey) -> FileOrigin:
    entries = listed.get(path)
    if not entries:
        raise VerifyError(f"{path} is not a file of the boot archive", hint="name a path as the image holds it")
    comp = entries[0].component
    pred = stmt["predicate"]
    ann: Mapping[str, Any] = {}
    for dep in pred["buildDefinition"].get("resolvedDependencies", []):
        if isinstance(dep, dict) and dep.get("name") == f"artifact:{comp}":
            ann = dep.get("annotations") or {}
    internal = pred["buildDefinition"].get("internalParameters") or {}
    builder = f"{pred['runDetails']['builder']['id']} on {internal.get('builder', 'an unknown host')}, " \
              f"signed by key {signer.id}"
    return FileOrigin(path, comp, entries[0].sha256, ann.get("key"), ann.get("commit"), ann.get("tree"), builder)
