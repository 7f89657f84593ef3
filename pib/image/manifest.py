"""Manifests in the SmartOS syntax: parse, validate, union, diff.

    f path mode user group     regular file taken from a proto area
    d path mode user group     directory
    s link=target              symbolic link (target kept literally)
    h link=existing            hard link to another entry of the image
    # comment

pib is stricter than SmartOS's builder: every malformed line is an error
naming file:line, and two lines for the same path must agree. With
duplicates = "smartos" ([image] in pib.toml) pib applies SmartOS's own rule
instead: its build pipes the concatenated manifests through tools/sorter,
which keeps the last line given for a path (builder.c, given both, would
also end with the last line's owner and mode); pib warns naming both lines.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pib.errors import Location, ManifestError

MAX_MODE = 0o7777

# How two differing lines for one path are taken: strict (an error) or smartos (the later line wins).
Duplicates = Literal["strict", "smartos"]
DUPLICATES: tuple[Duplicates, ...] = ("strict", "smartos")


class Kind(enum.Enum):
    FILE = "f"
    DIR = "d"
    SYMLINK = "s"
    HARDLINK = "h"


_KINDS = {k.value: k for k in Kind}


@dataclass(frozen=True, slots=True)
class Entry:
    """One manifest line. `where` and `component` are provenance, not identity."""

    kind: Kind
    path: str
    mode: int = 0
    user: str = ""
    group: str = ""
    target: str = ""
    where: Location = field(default=Location("<none>"), compare=False)
    component: str = field(default="", compare=False)

    def to_line(self) -> str:
        if self.kind in (Kind.FILE, Kind.DIR):
            return f"{self.kind.value} {self.path} {self.mode:04o} {self.user} {self.group}"
        return f"{self.kind.value} {self.path}={self.target}"


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: entries in file order, one per path."""

    source: str
    component: str
    entries: tuple[Entry, ...]
    warnings: tuple[str, ...] = ()  # differing duplicates taken by the smartos rule

    def to_text(self) -> str:
        return "".join(e.to_line() + "\n" for e in self.entries)


def _bad(message: str, where: Location, hint: str) -> ManifestError:
    return ManifestError(message, where=where, hint=hint)


def check_path(path: str, where: Location, what: str = "path") -> None:
    """A path inside the image: relative, normalised, no `..`."""
    if not path:
        raise _bad(f"empty {what}", where, "write the path relative to the image root, e.g. etc/motd")
    if path.startswith("/"):
        raise _bad(f"absolute {what} {path!r}", where, f"drop the leading '/': {path.lstrip('/')}")
    parts = path.split("/")
    if ".." in parts:
        raise _bad(f"{what} {path!r} contains '..'", where, "name the file by its path from the image root")
    if "" in parts or "." in parts:
        raise _bad(f"{what} {path!r} is not normalised (empty or '.' component)", where,
                   "remove doubled, trailing or './' slashes")
    if "\0" in path:
        raise _bad(f"{what} contains a NUL byte", where, "remove it")


def _mode(text: str, where: Location) -> int:
    # int(x, 8) alone would also take "0o7", "+7" and "7_7".
    if not text.isdigit() or not text.isascii() or "8" in text or "9" in text:
        raise _bad(f"mode {text!r} is not an octal number", where, "write the mode in octal, e.g. 0644")
    value = int(text, 8)
    if value > MAX_MODE:
        raise _bad(f"mode {text} is above 07777", where, "only permission, setuid, setgid and sticky bits belong here")
    return value


def _name(text: str, what: str, where: Location) -> str:
    if not text or ":" in text or "\0" in text:
        raise _bad(f"bad {what} name {text!r}", where, f"name a {what} of the image's etc/{'passwd' if what == 'user' else 'group'}")
    return text


def parse_line(line: str, where: Location, component: str = "") -> Entry | None:
    """One line to an Entry (None for blank lines and comments)."""
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return None
    kind = _KINDS.get(fields[0])
    if kind is None:
        raise _bad(f"unknown entry type {fields[0]!r}", where, "use f (file), d (directory), s (symlink) or h (hard link)")
    if kind in (Kind.FILE, Kind.DIR):
        if len(fields) != 5:
            raise _bad(f"'{kind.value}' takes 4 fields (path mode user group), found {len(fields) - 1}", where,
                       f"write: {kind.value} path 0644 root root")
        path = fields[1]
        if kind is Kind.DIR and len(path) > 1 and path.endswith("/") and not path.endswith("//"):
            path = path[:-1]  # SmartOS manifests write some directories as "dir/"
        check_path(path, where)
        return Entry(kind, path, _mode(fields[2], where), _name(fields[3], "user", where),
                     _name(fields[4], "group", where), where=where, component=component)
    if len(fields) != 2:
        raise _bad(f"'{kind.value}' takes one field (link=target), found {len(fields) - 1}", where,
                   f"write: {kind.value} path/of/link=target without spaces")
    link, eq, target = fields[1].partition("=")
    if not eq or not target:
        raise _bad(f"'{kind.value}' entry {fields[1]!r} has no '=target'", where, f"write: {kind.value} link=target")
    check_path(link, where, "link path")
    if kind is Kind.HARDLINK:
        # A hard link names another entry of the image; a symlink target is kept literally.
        check_path(target, where, "hard link target")
    elif "\0" in target:
        raise _bad("symlink target contains a NUL byte", where, "remove it")
    return Entry(kind, link, target=target, where=where, component=component)


class _Merger:
    """Adds entries path by path: identical duplicates merge; differing ones fail, or the later wins.

    `by_path` keeps each path where it first appeared, holding the entry that won.
    """

    def __init__(self, duplicates: Duplicates = "strict") -> None:
        self.by_path: dict[str, Entry] = {}
        self.duplicates = duplicates
        self.warnings: list[str] = []

    def add(self, entry: Entry) -> None:
        old = self.by_path.get(entry.path)
        if old is None or old == entry:
            self.by_path.setdefault(entry.path, entry)
            return
        if self.duplicates == "smartos":
            self.warnings.append(
                f"{entry.where}: {entry.path!r} is also given at {old.where}: {entry.to_line()!r} replaces "
                f"{old.to_line()!r} (the later line wins, as in SmartOS's build)"
            )
            self.by_path[entry.path] = entry
            return
        raise ManifestError(
            f"{entry.path!r} conflicts with {old.where}: {old.to_line()!r} vs {entry.to_line()!r}",
            where=entry.where,
            hint='make both lines identical or remove one of them (or, for a SmartOS tree, set [image] '
                 'duplicates = "smartos" in pib.toml: the later line wins)',
        )


def parse_text(text: str, source: str, component: str = "", *,
               errors: list[ManifestError] | None = None, duplicates: Duplicates = "strict") -> Manifest:
    """Parse a manifest; with `errors`, every bad line is appended there and parsing goes on."""
    merger = _Merger(duplicates)
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = parse_line(line, Location(source, number), component)
            if entry is not None:
                merger.add(entry)
        except ManifestError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return Manifest(source, component, tuple(merger.by_path.values()), tuple(merger.warnings))


def parse_file(path: Path, component: str = "", *, errors: list[ManifestError] | None = None,
               duplicates: Duplicates = "strict") -> Manifest:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror}", where=Location(str(path)),
                            hint="check the manifest path in pib.toml") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError("manifest is not UTF-8", where=Location(str(path), line), hint="re-encode it as UTF-8") from exc
    return parse_text(text, str(path), component, errors=errors, duplicates=duplicates)


def union(manifests: Iterable[Manifest], duplicates: Duplicates = "strict",
          warnings: list[str] | None = None) -> tuple[Entry, ...]:
    """The image's manifest: every entry once, where it first appeared; differing duplicates follow
    `duplicates`. The smartos rule's warnings (each file's own, then across files) go to `warnings`."""
    merger = _Merger(duplicates)
    for manifest in manifests:
        if warnings is not None:
            warnings.extend(manifest.warnings)
        for e in manifest.entries:
            merger.add(e)
    if warnings is not None:
        warnings.extend(merger.warnings)
    return tuple(merger.by_path.values())


# --- image manifests (boot_archive.manifest) and diffs ---------------------------------

IMAGE_MANIFEST_HEADER = "# pib boot_archive.manifest 1: path type mode user:group uid:gid size sha256 [target]"


@dataclass(frozen=True, slots=True)
class Record:
    """One entry of an image as built: what `pib manifest diff` compares."""

    path: str
    kind: Kind
    mode: int
    owner: str          # user:group
    ids: str = ""       # uid:gid as written to the archive ("" when unknown)
    size: int | None = None
    sha256: str | None = None
    target: str = ""

    def to_line(self) -> str:
        size = "-" if self.size is None else str(self.size)
        line = f"{self.path} {self.kind.value} {self.mode:04o} {self.owner} {self.ids or '-'} {size} {self.sha256 or '-'}"
        return f"{line} {self.target}" if self.target else line


def records_from_entries(entries: Iterable[Entry]) -> dict[str, Record]:
    """A source manifest seen as records (no sizes or hashes)."""
    out: dict[str, Record] = {}
    for e in entries:
        if e.kind in (Kind.FILE, Kind.DIR):
            out[e.path] = Record(e.path, e.kind, e.mode, f"{e.user}:{e.group}")
        else:
            out[e.path] = Record(e.path, e.kind, 0o777 if e.kind is Kind.SYMLINK else 0, "", target=e.target)
    return out


def format_image_manifest(records: Iterable[Record]) -> str:
    return IMAGE_MANIFEST_HEADER + "\n" + "".join(r.to_line() + "\n" for r in records)


def parse_image_manifest(text: str, source: str) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        f = line.split(" ")
        try:
            if len(f) not in (7, 8) or f[1] not in _KINDS:
                raise ValueError(line)
            out[f[0]] = Record(f[0], _KINDS[f[1]], int(f[2], 8), f[3], "" if f[4] == "-" else f[4],
                               None if f[5] == "-" else int(f[5]), None if f[6] == "-" else f[6],
                               f[7] if len(f) == 8 else "")
        except ValueError as exc:
            raise ManifestError("malformed boot_archive.manifest line", where=Location(source, number),
                                hint="compare manifests written by pib image, or SmartOS-syntax manifests") from exc
    return out


def load_records(path: Path) -> dict[str, Record]:
    """Records from a platform directory, a boot_archive.manifest, or a SmartOS-syntax manifest."""
    if path.is_dir():
        path = path / "boot_archive.manifest"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}", where=Location(str(path)),
                            hint="name a platform directory, its boot_archive.manifest, or a manifest file") from exc
    if text.startswith(IMAGE_MANIFEST_HEADER.split(":")[0]):
        return parse_image_manifest(text, str(path))
    return records_from_entries(parse_text(text, str(path)).entries)


@dataclass(frozen=True)
class Change:
    path: str
    status: str                   # "added", "removed" or "changed"
    fields: tuple[str, ...] = ()  # for "changed": which of type, mode, owner, target, content
    old: Record | None = None
    new: Record | None = None

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "status": self.status, "fields": list(self.fields),
                "old": self.old.to_line() if self.old else None, "new": self.new.to_line() if self.new else None}


def _changed(a: Record, b: Record) -> tuple[str, ...]:
    out: list[str] = []
    if a.kind != b.kind:
        out.append("type")
    if a.mode != b.mode:
        out.append("mode")
    if a.owner != b.owner or (a.ids and b.ids and a.ids != b.ids):
        out.append("owner")
    if a.target != b.target:
        out.append("target")
    # Content compares only where both sides know it (a source manifest has no hashes).
    if (a.sha256 and b.sha256 and a.sha256 != b.sha256) or (
        a.size is not None and b.size is not None and a.size != b.size
    ):
        out.append("content")
    return tuple(out)


def diff_records(old: dict[str, Record], new: dict[str, Record]) -> tuple[Change, ...]:
    changes: list[Change] = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a is None:
            changes.append(Change(path, "added", new=b))
        elif b is None:
            changes.append(Change(path, "removed", old=a))
        else:
            fields = _changed(a, b)
            if fields:
                changes.append(Change(path, "changed", fields, a, b))
    return tuple(changes)


def diff(old: Path, new: Path) -> tuple[Change, ...]:
    """What changed between two images (platform dirs or their manifests)."""
    return diff_records(load_records(old), load_records(new))


def format_diff(changes: Sequence[Change]) -> str:
    mark = {"added": "+", "removed": "-", "changed": "~"}
    lines = []
    for c in changes:
        extra = f" ({', '.join(c.fields)})" if c.fields else ""
        lines.append(f"{mark[c.status]} {c.path}{extra}")
    return "\n".join(lines)




def check(paths: Sequence[Path], duplicates: Duplicates = "strict",
          warnings: list[str] | None = None) -> tuple[Manifest, ...]:
    """`pib manifest check`: parse each manifest, then their union (conflicts across files).

    Every bad line of every file is reported at once: the first names the error, the detail lists them all.
    """
    errors: list[ManifestError] = []
    manifests = tuple(parse_file(p, errors=errors, duplicates=duplicates) for p in paths)
    if errors:
        first = errors[0]
        raise ManifestError(
            f"{len(errors)} bad manifest line(s); the first: {first.message}",
            where=first.where,
            hint=first.hint,
            detail="\n".join(f"{e.where}: {e.message}" for e in errors),
        )
    union(manifests, duplicates, warnings)
    return manifests
