"""Resolve the image's manifests against the ordered proto areas.

The image's manifest is the union of the components' (and overlays')
manifests. Every file is looked up in the search path (overlays first, then
the proto areas in config order); parents, hard links, symlinks and owners are
checked; every problem is reported at once with the manifest line it came from.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pib.config.types import ImageSpec
from pib.errors import Location, ManifestError, PibError, Reason
from pib.fsutil import human_size
from pib.image.manifest import Entry, Kind, Manifest, check_path, parse_file, union

GENERATED = "pib"  # origin name of files pib writes itself (the release file)


# --- inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtoArea:
    name: str
    path: Path
    manifest: Path | None = None


# --- resolution -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolved:
    entry: Entry
    origin: str = ""            # proto area / overlay that supplied the bytes
    source: str | None = None   # for files: where the bytes are read from
    size: int = 0
    uid: int = 0
    gid: int = 0
    content: bytes | None = None  # generated files


@dataclass(frozen=True)
class Problem:
    kind: str  # missing | outside | parent | hardlink | user | group | passwd | release
    path: str
    where: Location
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ImageManifestError(ManifestError):
    """Every problem found while resolving the image's manifest, reported at once."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        kinds = sorted({p.kind for p in problems})
        super().__init__(
            f"{len(problems)} problem(s) in the image manifest ({', '.join(kinds)}); first: {problems[0].message}",
            where=problems[0].where,
            hint="fix the manifest lines listed, or build the components that should provide the missing files",
            detail="\n".join(str(p) for p in problems),
        )


@dataclass(frozen=True)
class Resolution:
    entries: tuple[Resolved, ...]  # sorted by path: parents before children
    warnings: tuple[str, ...]
    search: tuple[tuple[str, Path], ...]
    problems: tuple[Problem, ...] = ()  # only with strict=False


def search_path(spec: ImageSpec, areas: Sequence[ProtoArea]) -> tuple[tuple[str, Path], ...]:
    """Overlays first, then the components' proto areas, in config order."""
    return tuple((o.name, o.path) for o in spec.overlays) + tuple((a.name, a.path) for a in areas)


def load_manifests(spec: ImageSpec, areas: Sequence[ProtoArea]) -> tuple[Manifest, ...]:
    sources = [(o.name, o.manifest) for o in spec.overlays] + [(a.name, a.manifest) for a in areas]
    return tuple(parse_file(path, name, duplicates=spec.duplicates) for name, path in sources if path is not None)


def release_text(buildstamp: str, component_keys: Mapping[str, str]) -> bytes:
    lines = [f"PIB_BUILDSTAMP={buildstamp}"]
    for name in sorted(component_keys):
        var = re.sub(r"[^A-Z0-9]", "_", name.upper())
        lines.append(f"PIB_KEY_{var}={component_keys[name]}")
    return ("\n".join(lines) + "\n").encode()


def _within(path: str, by_path: Mapping[str, Entry]) -> Entry | None:
    """The entry a path reaches inside the image, following the image's own symlinks."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        cur = "/".join([*done, part])
        entry = by_path.get(cur)
        if entry is None:
            return None
        if entry.kind is Kind.SYMLINK:
            hops += 1
            if hops > 40:
                return None
            target = entry.target
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return by_path.get("/".join(done)) if done else None


def _real(path: str, area: int, parent: str, base: str, real_dirs: dict[tuple[int, str], str]) -> str:
    """Where `path` (the file `base` in directory `parent` of an area) really is, symlinks resolved; one
    realpath per directory, one lstat per file."""
    if os.path.islink(path):
        return os.path.realpath(path)
    d = real_dirs.get((area, parent))
    if d is None:
        d = real_dirs[(area, parent)] = os.path.realpath(os.path.dirname(path))
    return f"{d}/{base}"


def _read_db(source: str, where: Location, id_field: int, problems: list[Problem]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(source, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        problems.append(Problem("passwd", source, where, f"cannot read {source}: {exc.strerror}"))
        return out
    for line in text.splitlines():
        f = line.split(":")
        if len(f) > id_field and f[0] and not f[0].startswith("#") and f[id_field].isdigit():
            out.setdefault(f[0], int(f[id_field]))
    return out


def _ids(
    name: str, db: Mapping[str, int] | None, what: str, where: Location, problems: list[Problem], seen: set[str]
) -> int:
    if db is not None and name in db:
        return db[name]
    if name.isdigit():
        return int(name)  # a numeric id needs no lookup
    if name not in seen:
        seen.add(name)
        src = "etc/passwd" if what == "user" else "etc/group"
        msg = (f"unknown {what} {name!r}: not in the image's {src}" if db is not None
               else f"{what} {name!r} cannot be resolved: the image has no {src}")
        problems.append(Problem(what, name, where, msg))
    return 0


def resolve(
    spec: ImageSpec,
    areas: Sequence[ProtoArea],
    *,
    buildstamp: str = "",
    component_keys: Mapping[str, str] | None = None,
    strict: bool = True,
) -> Resolution:
    """Union the manifests, find every file, check links, parents and owners; all problems at once.

    strict=False returns the problems in the Resolution instead of raising (for reports).
    """
    manifests = load_manifests(spec, areas)
    warnings: list[str] = []
    entries = list(union(manifests, spec.duplicates, warnings))
    problems: list[Problem] = []
    release: Entry | None = None
    if spec.release_file:
        rel_where = spec.where or Location("<image>")
        check_path(spec.release_file, rel_where, "image.release_file")
        release = Entry(Kind.FILE, spec.release_file, 0o444, "root", "root", where=rel_where, component=GENERATED)
        clash = next((e for e in entries if e.path == spec.release_file), None)
        if clash is not None:
            problems.append(Problem("release", clash.path, clash.where,
                                    f"{clash.path} is the generated release file; the manifest must not list it"))
        else:
            entries.append(release)
    by_path = {e.path: e for e in entries}
    search = search_path(spec, areas)
    found: dict[str, tuple[str, str, int]] = {}
    # One listing per (area, directory) instead of a failed stat per area per file.
    roots = [(name, os.fspath(root)) for name, root in search]
    listings: dict[tuple[int, str], set[str]] = {}
    n_overlays = len(spec.overlays)
    real_dirs: dict[tuple[int, str], str] = {}  # (area, directory) -> where it really is

    for e in entries:
        parent = e.path.rpartition("/")[0]
        if parent and (p := by_path.get(parent)) is not None and p.kind is not Kind.DIR:
            problems.append(Problem("parent", e.path, e.where, f"parent {parent!r} of {e.path!r} is not a directory ({p.where})"))
        elif parent and p is None:
            problems.append(Problem("parent", e.path, e.where, f"parent directory {parent!r} of {e.path!r} is not in any manifest"))
        if e.kind is Kind.FILE and e is not release and e.path != spec.release_file:
            base = e.path.rpartition("/")[2]
            for i, (name, root) in enumerate(roots):
                names = listings.get((i, parent))
                if names is None:
                    try:
                        names = set(os.listdir(f"{root}/{parent}" if parent else root))
                    except OSError:
                        names = set()
                    listings[(i, parent)] = names
                if base not in names:
                    continue
                candidate = f"{root}/{e.path}"
                try:
                    st = os.stat(candidate)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    if i >= n_overlays:
                        # A component's file is read where it really is, and only inside its proto area: a
                        # link out of it (a build's doing) must not put a host file into the image.
                        real = _real(candidate, i, parent, base, real_dirs)
                        top = real_dirs.get((i, "")) or real_dirs.setdefault((i, ""), os.path.realpath(root))
                        if not real.startswith(top + "/"):
                            problems.append(Problem("outside", e.path, e.where,
                                                    f"file {e.path!r} of {name} leads outside its proto area "
                                                    f"(to {real}); build the component again"))
                            break
                        candidate = real
                    found[e.path] = (name, candidate, st.st_size)
                    break
            else:
                places = ", ".join(f"{n}:{r}" for n, r in search) or "(no proto areas)"
                problems.append(Problem("missing", e.path, e.where, f"file {e.path!r} not found; searched {places}"))
        elif e.kind is Kind.HARDLINK:
            t = by_path.get(e.target)
            if t is None or t.kind is not Kind.FILE:
                why = "is not in the image" if t is None else f"is a {t.kind.name.lower()}, not a file ({t.where})"
                problems.append(Problem("hardlink", e.path, e.where, f"hard link {e.path!r}: target {e.target!r} {why}"))
        elif e.kind is Kind.SYMLINK:
            base = "" if e.target.startswith("/") else posixpath.dirname(e.path)
            if _within(posixpath.join(base, e.target), by_path) is None:
                warnings.append(f"{e.where}: symlink {e.path} -> {e.target} points at nothing in the image")

    # Owners resolve through the image's own databases (uid and gid are both the third field).
    dbs: dict[str, dict[str, int] | None] = {}
    for dbname in ("etc/passwd", "etc/group"):
        entry = _within(dbname, by_path)
        if entry is not None and entry.kind is Kind.HARDLINK:
            entry = by_path.get(entry.target)
        dbs[dbname] = None
        if entry is not None and entry.path in found:
            dbs[dbname] = _read_db(found[entry.path][1], entry.where, 2, problems)
    users, groups = dbs["etc/passwd"], dbs["etc/group"]
    unknown_users: set[str] = set()
    unknown_groups: set[str] = set()
    out: list[Resolved] = []
    rel_content = release_text(buildstamp, component_keys or {})
    for e in sorted(entries, key=lambda x: x.path.encode()):
        if e.kind in (Kind.FILE, Kind.DIR):
            if e is release:
                out.append(Resolved(e, GENERATED, None, len(rel_content), 0, 0, rel_content))
                continue
            uid = _ids(e.user, users, "user", e.where, problems, unknown_users)
            gid = _ids(e.group, groups, "group", e.where, problems, unknown_groups)
            if e.kind is Kind.FILE and e.path in found:
                origin, source, size = found[e.path]
                out.append(Resolved(e, origin, source, size, uid, gid))
            else:
                out.append(Resolved(e, e.component, None, 0, uid, gid))
        else:
            out.append(Resolved(e, e.component))
    problems.sort(key=lambda p: (p.where.path, p.where.line))
    if problems and strict:
        raise ImageManifestError(problems)
    return Resolution(tuple(out), tuple(warnings), search, tuple(problems))


# --- sizes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentSize:
    name: str
    bytes: int
    files: int
    largest: tuple[tuple[str, int], ...]  # (path, bytes), largest first


@dataclass(frozen=True)
class SizeReport:
    total: int
    components: tuple[ComponentSize, ...]  # largest first
    archive_size: int | None = None
    max_size: int | None = None
    missing: tuple[str, ...] = ()  # files the manifests name that no proto area has (yet)

    def format(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"not counted: {len(self.missing)} file(s) not built yet, e.g. {self.missing[0]}")
        if self.archive_size is not None:
            budget = f" (budget {human_size(self.max_size)})" if self.max_size is not None else ""
            lines.append(f"boot archive: {human_size(self.archive_size)}{budget}")
        lines.append(f"files: {human_size(self.total)} uncompressed")
        for c in self.components:
            share = 100.0 * c.bytes / self.total if self.total else 0.0
            lines.append(f"  {c.name}: {human_size(c.bytes)} in {c.files} files ({share:.1f}%)")
            lines.extend(f"      {human_size(size):>10}  {path}" for path, size in c.largest)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total, "archive_size": self.archive_size, "max_size": self.max_size,
            "missing": list(self.missing),
            "components": [{"name": c.name, "bytes": c.bytes, "files": c.files,
                            "largest": [{"path": p, "bytes": s} for p, s in c.largest]} for c in self.components],
        }


def sizes_of(resolution: Resolution, top: int = 5, archive_size: int | None = None,
             max_size: int | None = None) -> SizeReport:
    """Bytes per supplying component (overlay or proto area), with each one's largest files."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for r in resolution.entries:
        if r.entry.kind is Kind.FILE:
            groups.setdefault(r.origin, []).append((r.entry.path, r.size))
    comps = []
    for name, files in groups.items():
        files.sort(key=lambda f: (-f[1], f[0]))
        comps.append(ComponentSize(name, sum(s for _, s in files), len(files), tuple(files[:top])))
    comps.sort(key=lambda c: (-c.bytes, c.name))
    return SizeReport(sum(c.bytes for c in comps), tuple(comps), archive_size, max_size)


def size_report(spec: ImageSpec, areas: Sequence[ProtoArea], top: int = 5,
                component_keys: Mapping[str, str] | None = None) -> SizeReport:
    """`pib image --sizes`: what the image would contain, by component, without writing anything.

    Works at any time: files not built yet are listed as missing; malformed
    manifests still raise. The release file is counted as written: a buildstamp
    of the real length and the keys of the components (`component_keys`).
    """
    res = resolve(spec, areas, strict=False, buildstamp="00000000T000000Z", component_keys=component_keys)
    report = sizes_of(res, top, None, spec.max_size)
    missing = tuple(p.path for p in res.problems if p.kind == "missing")
    return dataclasses.replace(report, missing=missing)


class SizeBudgetError(PibError):
    reason = Reason.IMAGE

    def __init__(self, report: SizeReport) -> None:
        self.report = report
        super().__init__(
            f"boot archive is {report.archive_size} bytes, above max_size {report.max_size}",
            hint="remove files from the manifests, or raise image.max_size in pib.toml",
            detail=report.format(),
        )
