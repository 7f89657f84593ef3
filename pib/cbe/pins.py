"""CBE lock files: exactly what one build-environment version contains.

A lock is TOML (see docs/cbe.md). Every error names the lock file and line.
The lock digest (part of every component key) is the SHA-256 of the lock's
canonical content: its parsed value as sorted, compact JSON, so comments and
layout do not change it but any pinned value does. `[apt]` says where pinned
packages may be found, not what they are, so it is left out of the digest.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pib.config.tomlloc import Locator
from pib.config.tomlloc import loads as toml_loads
from pib.config.types import DEFAULT_KEYRING, AptSources
from pib.errors import CbeError, Location
from pib.fsutil import canonical_json

PROVIDERS = ("debian", "pip", "tarball", "pkgsrc")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]*$")
_TOP_KEYS = {"format", "name", "version", "provider", "path", "env", "packages", "files", "tarball", "pkgsrc", "pip",
             "apt"}


@dataclass(frozen=True)
class Package:
    """A pinned package: a .deb (debian), a distribution (pip), a pkgsrc name."""

    name: str
    version: str
    arch: str
    sha256: tuple[str, ...]
    where: Location


@dataclass(frozen=True)
class FileEntry:
    """A small file written into the prefix after the packages (wrappers)."""

    path: str
    mode: int
    content: str
    where: Location


@dataclass(frozen=True)
class TarballPin:
    sha256: str
    size: int
    where: Location


@dataclass(frozen=True)
class PkgsrcPin:
    bootstrap_url: str
    bootstrap_sha256: str
    prefix: str  # the prefix the kit was built for; pkgsrc binaries are not relocatable
    repository: str
    packages: tuple[str, ...]
    where: Location


@dataclass(frozen=True)
class PipOptions:
    index_url: str | None
    find_links: tuple[str, ...]  # absolute (lock-relative entries resolved)
    where: Location


@dataclass(frozen=True)
class Lock:
    path: Path
    name: str
    version: str
    provider: str
    bin_dirs: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    packages: tuple[Package, ...]
    files: tuple[FileEntry, ...]
    tarball: TarballPin | None
    pkgsrc: PkgsrcPin | None
    pip: PipOptions | None
    digest: str
    apt: AptSources | None = None  # where the debian provider's pins come from (not part of the digest)

    def where(self, line: int = 0) -> Location:
        return Location(str(self.path), line)


def canonical_digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(data)).hexdigest()


def load(path: Path) -> Lock:
    """Parse and check a lock file; CbeError naming file:line on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CbeError(
            f"CBE lock file {path} does not exist",
            where=Location(str(path)),
            hint="check [cbe] lock in pib.toml, or create the lock (see docs/cbe.md)",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CbeError(f"cannot read CBE lock file {path}: {exc}", where=Location(str(path))) from None
    return parse(text, path)


def parse(text: str, path: Path) -> Lock:
    loc = Locator(str(path), text)
    data = toml_loads(text, str(path), CbeError, what="CBE lock", hint="fix the TOML syntax")
    return _Parser(path, loc, data).lock()


class _Parser:
    def __init__(self, path: Path, loc: Locator, data: dict[str, Any]) -> None:
        self.path = path
        self.loc = loc
        self.data = data

    def err(self, msg: str, at: tuple[str | int, ...], hint: str = "") -> CbeError:
        return CbeError(msg, where=self.loc.at(at), hint=hint or "fix the lock file (see docs/cbe.md)")

    def string(self, table: dict[str, Any], key: str, at: tuple[str | int, ...], *, required: bool = True) -> str:
        if key not in table:
            if required:
                raise self.err(f"missing required key {key!r}", at, f"add {key} = \"...\"")
            return ""
        value = table[key]
        if not isinstance(value, str) or not value:
            raise self.err(f"{key!r} must be a non-empty string", (*at, key))
        return value

    def strings(self, table: dict[str, Any], key: str, at: tuple[str | int, ...]) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.err(f"{key!r} must be a list of non-empty strings", (*at, key))
        return tuple(value)

    def unknown(self, table: dict[str, Any], allowed: set[str], at: tuple[str | int, ...]) -> None:
        for key in table:
            if key not in allowed:
                raise self.err(f"unknown key {key!r}", (*at, key), f"allowed here: {', '.join(sorted(allowed))}")

    def sha(self, value: object, at: tuple[str | int, ...]) -> str:
        if not isinstance(value, str) or not _SHA256.match(value):
            raise self.err("sha256 must be 64 lowercase hex digits", at)
        return value

    def relpath(self, value: str, at: tuple[str | int, ...]) -> str:
        p = PurePosixPath(value)
        if p.is_absolute() or ".." in p.parts or not p.parts or value.startswith("."):
            raise self.err(f"path {value!r} must be relative to the prefix, without '..'", at)
        return str(p)

    def lock(self) -> Lock:
        d = self.data
        self.unknown(d, _TOP_KEYS, ())
        fmt = d.get("format")
        if fmt != 1:
            raise self.err(f"unsupported lock format {fmt!r}", ("format",), "this pib reads format = 1")
        name = self.string(d, "name", ())
        if not _NAME.match(name):
            raise self.err(f"CBE name {name!r} has characters outside [A-Za-z0-9._+-]", ("name",))
        version = self.string(d, "version", ())
        if not _NAME.match(version):
            raise self.err(f"CBE version {version!r} has characters outside [A-Za-z0-9._+-]", ("version",))
        provider = self.string(d, "provider", ())
        if provider not in PROVIDERS:
            raise self.err(f"unknown provider {provider!r}", ("provider",), f"use one of: {', '.join(PROVIDERS)}")

        path_t = self._table("path")
        self.unknown(path_t, {"bin"}, ("path",))
        bin_dirs = tuple(self.relpath(b, ("path", "bin")) for b in self.strings(path_t, "bin", ("path",)))
        if not bin_dirs:
            bin_dirs = ("bin",)

        env_t = self._table("env")
        env: list[tuple[str, str]] = []
        for k, v in env_t.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) or k == "PATH":
                raise self.err(f"env name {k!r} is not allowed", ("env", k), "PATH comes from [path] bin")
            if not isinstance(v, str):
                raise self.err(f"env value of {k!r} must be a string", ("env", k))
            env.append((k, v))

        packages = self._packages(provider)
        files = self._files()
        tarball = self._tarball() if provider == "tarball" else None
        pkgsrc = self._pkgsrc() if provider == "pkgsrc" else None
        pip = self._pip() if provider == "pip" else None
        apt = self._apt(packages) if "apt" in d else None
        if apt is not None and provider != "debian":
            raise self.err(f"[apt] does not apply to provider {provider!r}", ("apt",))
        for section in ("tarball", "pkgsrc", "pip"):
            if section in d and section != provider:
                raise self.err(f"[{section}] does not apply to provider {provider!r}", (section,))
        if provider in ("debian", "pip") and not packages:
            raise self.err(f"provider {provider!r} needs at least one [[packages]] entry", ("provider",))
        return Lock(
            path=self.path,
            name=name,
            version=version,
            provider=provider,
            bin_dirs=bin_dirs,
            env=tuple(env),
            packages=packages,
            files=files,
            tarball=tarball,
            pkgsrc=pkgsrc,
            pip=pip,
            digest=canonical_digest({k: v for k, v in d.items() if k != "apt"}),
            apt=apt,
        )

    def _table(self, key: str) -> dict[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.err(f"{key!r} must be a table", (key,), f"write it as [{key}]")
        return value

    def _array(self, key: str) -> list[dict[str, Any]]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.err(f"{key!r} must be an array of tables", (key,), f"write each entry as [[{key}]]")
        return value

    def _packages(self, provider: str) -> tuple[Package, ...]:
        out: list[Package] = []
        seen: dict[str, int] = {}
        for i, p in enumerate(self._array("packages")):
            at: tuple[str | int, ...] = ("packages", i)
            self.unknown(p, {"name", "version", "arch", "sha256"}, at)
            name = self.string(p, "name", at)
            version = self.string(p, "version", at)
            arch = self.string(p, "arch", at, required=False)
            raw = p.get("sha256")
            if raw is None:
                raise self.err(f"package {name!r} has no sha256", at, "pin every package by its sha256")
            shas = raw if isinstance(raw, list) else [raw]
            if not shas:
                raise self.err(f"package {name!r} has an empty sha256 list", (*at, "sha256"))
            if provider == "debian" and len(shas) != 1:
                raise self.err("a Debian package has exactly one sha256", (*at, "sha256"))
            checked = tuple(self.sha(s, (*at, "sha256")) for s in shas)
            if name in seen:
                raise self.err(f"package {name!r} is listed twice", at)
            seen[name] = i
            out.append(Package(name, version, arch, checked, self.loc.at(at)))
        return tuple(out)

    def _files(self) -> tuple[FileEntry, ...]:
        out: list[FileEntry] = []
        for i, f in enumerate(self._array("files")):
            at: tuple[str | int, ...] = ("files", i)
            self.unknown(f, {"path", "mode", "content"}, at)
            path = self.relpath(self.string(f, "path", at), (*at, "path"))
            mode_s = f.get("mode", "0644")
            if not isinstance(mode_s, str) or not re.match(r"^0?[0-7]{3}$", mode_s):
                raise self.err(f"mode {mode_s!r} must be an octal string such as \"0755\"", (*at, "mode"))
            content = f.get("content")
            if not isinstance(content, str):
                raise self.err("content must be a string", (*at, "content"))
            out.append(FileEntry(path, int(mode_s, 8), content, self.loc.at(at)))
        return tuple(out)

    def _apt(self, packages: tuple[Package, ...]) -> AptSources:
        t = self._table("apt")
        at: tuple[str | int, ...] = ("apt",)
        self.unknown(t, {"uris", "suites", "components", "signed_by", "trusted"}, at)
        suites = self.strings(t, "suites", at)
        if not suites:
            raise self.err("[apt] needs suites, e.g. suites = [\"bookworm\"]", at,
                           "name the suite the pins were taken from; prefer a release's base suite, whose "
                           "versions are not replaced in place")
        trusted = t.get("trusted", False)
        if not isinstance(trusted, bool):
            raise self.err("trusted must be true or false", (*at, "trusted"))
        arches = {p.arch for p in packages if p.arch}
        return AptSources(
            uris=self.strings(t, "uris", at) or ("http://deb.debian.org/debian",),
            suites=suites,
            components=self.strings(t, "components", at) or ("main",),
            arch=arches.pop() if len(arches) == 1 else "amd64",
            signed_by="" if trusted else (self.string(t, "signed_by", at, required=False) or DEFAULT_KEYRING),
            trusted=trusted,
        )

    def _tarball(self) -> TarballPin:
        t = self._table("tarball")
        if not t:
            raise self.err("provider \"tarball\" needs a [tarball] table", ("provider",), "add [tarball] sha256 = ... size = ...")
        self.unknown(t, {"sha256", "size"}, ("tarball",))
        sha = self.sha(t.get("sha256"), ("tarball", "sha256"))
        size = t.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise self.err("size must be a positive integer (bytes)", ("tarball", "size"))
        return TarballPin(sha, size, self.loc.at(("tarball",)))

    def _pkgsrc(self) -> PkgsrcPin:
        t = self._table("pkgsrc")
        at: tuple[str | int, ...] = ("pkgsrc",)
        if not t:
            raise self.err("provider \"pkgsrc\" needs a [pkgsrc] table", ("provider",))
        self.unknown(t, {"bootstrap_url", "bootstrap_sha256", "prefix", "repository", "packages"}, at)
        prefix = self.string(t, "prefix", at)
        if not prefix.startswith("/"):
            raise self.err("pkgsrc prefix must be absolute (the prefix the kit was built for)", (*at, "prefix"))
        packages = self.strings(t, "packages", at)
        return PkgsrcPin(
            bootstrap_url=self.string(t, "bootstrap_url", at),
            bootstrap_sha256=self.sha(t.get("bootstrap_sha256"), (*at, "bootstrap_sha256")),
            prefix=prefix.rstrip("/"),
            repository=self.string(t, "repository", at),
            packages=packages,
            where=self.loc.at(at),
        )

    def _pip(self) -> PipOptions:
        t = self._table("pip")
        at: tuple[str | int, ...] = ("pip",)
        self.unknown(t, {"index_url", "find_links"}, at)
        index = self.string(t, "index_url", at, required=False) or None
        links = tuple(
            link if "://" in link else str((self.path.parent / link).resolve())
            for link in self.strings(t, "find_links", at)
        )
        return PipOptions(index, links, self.loc.at(at))
