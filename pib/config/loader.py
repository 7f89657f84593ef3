"""pib.toml (+ the uncommitted pib.local.toml) -> frozen configuration.

One load step builds every value of pib.config.types, including the specs
the other layers take as they are (stores, CBE, image); nothing changes them
afterwards. Every value remembers the file and line it came from, so errors
(and `pib config show`) can name them.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pib.config import cache
from pib.config.tomlloc import Locator
from pib.config.tomlloc import loads as toml_loads
from pib.config.types import (
    CONFIG_NAME,
    DEFAULT_KEYRING,
    MEDIA_KINDS,
    AptOrigin,
    AptSources,
    BootConfig,
    CbeSpec,
    ComponentConfig,
    Config,
    HttpStoreSpec,
    ImageSpec,
    KernelSpec,
    LocalStoreSpec,
    MediaSpec,
    Overlay,
    Pinned,
    PlatformConfig,
    S3StoreSpec,
    SandboxSpec,
    StoreSpec,
    TrustConfig,
    UrlOrigin,
    WorkspaceConfig,
)
from pib.errors import ConfigError, Location
from pib.fsutil import real_path

LOCAL_NAME = "pib.local.toml"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_+%~][A-Za-z0-9._+%~:-]{0,254}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)

# The range of every numeric setting (README.md, "Configuration"): a value outside is a config error at
# file:line, so no setting can ask for a million retries, a time-out of inf or an exabyte.
MAX_JOBS = 1024
MAX_EPOCH = (1 << 32) - 1
MAX_TIMEOUT = 86400.0            # seconds: store requests, boot
MAX_RETRIES = 20
MAX_SIZE = 1 << 50               # bytes: quotas, image budgets, declared source sizes
MAX_BOOT_MEMORY = 1 << 20        # MiB
MAX_MENU_TIMEOUT = 3600          # seconds


# --------------------------------------------------------------------------
# Loading


def find_workspace(start: Path) -> Path:
    """The nearest directory at or above `start` holding pib.toml."""
    here = start.resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_NAME).is_file():
            return d
    raise ConfigError(
        f"no {CONFIG_NAME} in {here} or any parent directory",
        hint="run pib inside a workspace, or pass -C DIR",
    )


class _Doc:
    """The merged document plus where each key came from."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.locators: list[tuple[Locator, dict[str, Any]]] = []

    def add(self, path: Path, raw: bytes) -> None:
        """`raw`: the bytes of `path` as _read gave them (the cache is keyed by the same bytes)."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                "not UTF-8 text",
                where=Location(str(path), raw[: exc.start].count(b"\n") + 1),
                hint="save the file as UTF-8",
            ) from exc
        data = toml_loads(text, str(path), ConfigError, what=path.name,
                          hint="fix the syntax; see the config reference in README.md")
        # Later files win, so search them first.
        self.locators.insert(0, (Locator(str(path), text), data))
        _merge(self.data, data)

    def where(self, keypath: tuple[str | int, ...]) -> Location:
        for locator, data in self.locators:
            if _has(data, keypath):
                return locator.at(keypath)
        # Not set anywhere: point at the nearest enclosing table.
        for locator, _ in self.locators:
            line = locator.line_of(keypath)
            if line:
                return Location(locator.path, line)
        return Location(self.locators[-1][0].path if self.locators else CONFIG_NAME)


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _has(data: Any, keypath: tuple[str | int, ...]) -> bool:
    cur = data
    for k in keypath:
        if isinstance(k, int):
            if not isinstance(cur, list) or k >= len(cur):
                return False
        elif not isinstance(cur, dict) or k not in cur:
            return False
        cur = cur[k]
    return True


class _Section:
    """Typed access to one table; remembers which keys were read."""

    def __init__(self, doc: _Doc, path: tuple[str | int, ...], data: Any, sources: dict[str, Location]) -> None:
        self.doc = doc
        self.path = path
        self.sources = sources
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{_dotted(path)} must be a table",
                where=doc.where(path),
                hint=f"write it as [{_dotted(path)}]",
            )
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def where(self, key: str | None = None) -> Location:
        return self.doc.where(self.path + ((key,) if key else ()))

    def _get(self, key: str) -> Any:
        self.used.add(key)
        if key in self.data:
            self.sources[_dotted((*self.path, key))] = self.where(key)
        return self.data.get(key)

    def _type_error(self, key: str, want: str) -> ConfigError:
        value = self.data[key]
        return ConfigError(
            f"{_dotted((*self.path, key))} must be {want}, not {type(value).__name__} {_short(value)}",
            where=self.where(key),
            hint="see the config reference in README.md",
        )

    def text(self, key: str, default: str | None = None) -> str | None:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self._type_error(key, "a string")
        return v

    def req_str(self, key: str) -> str:
        v = self.text(key)
        if v is None or v == "":
            raise ConfigError(
                f"{_dotted((*self.path, key))} is required",
                where=self.where(),
                hint=f"add {key} = \"...\" to [{_dotted(self.path)}]",
            )
        return v

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        """An integer in [minimum, maximum]: every numeric setting has a documented range (README.md)."""
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._type_error(key, "an integer")
        if not minimum <= v <= maximum:
            raise self._range_error(key, v, minimum, maximum)
        return v

    def number(self, key: str, default: float, minimum: float, maximum: float) -> float:
        """A finite number in (minimum, maximum] (a time-out of 0, inf or nan is no time-out at all)."""
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self._type_error(key, "a number")
        if not (isinstance(v, int) or math.isfinite(v)) or not minimum < v <= maximum:
            raise self._range_error(key, v, minimum, maximum, above=True)
        return float(v)

    def _range_error(self, key: str, v: float, minimum: float, maximum: float, *, above: bool = False) -> ConfigError:
        low = f"more than {minimum:g}" if above else f"at least {minimum:g}"
        return ConfigError(
            f"{_dotted((*self.path, key))} must be {low} and at most {maximum:g}, not {_short(v)}",
            where=self.where(key),
            hint=f"set {key} to a value in that range (see the config reference in README.md)",
        )

    def flag(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._type_error(key, "true or false")
        return v

    def strs(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._type_error(key, "a list of strings")
        return tuple(v)

    def argv(self, key: str) -> tuple[str, ...] | None:
        """A command: a list of strings (argv), or one string naming a script."""
        v = self._get(key)
        if v is None:
            return None
        if isinstance(v, str):
            if not v.strip():
                raise ConfigError(f"{_dotted((*self.path, key))} is empty", where=self.where(key))
            return (v,)
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return tuple(v)
        raise self._type_error(key, "an argv list of strings or a script path")

    def size(self, key: str) -> int | None:
        v = self._get(key)
        if v is None:
            return None
        n: float | None = None
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            n = v
        elif isinstance(v, str) and len(v) <= 40:
            m = _SIZE_RE.match(v)
            if m:
                unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
                mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
                n = float(m.group(1)) * mult
        if n is None:
            raise self._type_error(key, 'a size such as 64M, 2G or a number of bytes')
        if not 0 < n <= MAX_SIZE:
            raise self._range_error(key, n, 0, MAX_SIZE, above=True)
        return int(n)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        v = self.text(key, default)
        assert v is not None
        if v not in choices:
            raise ConfigError(
                f"{_dotted((*self.path, key))} = {v!r} is not one of: {', '.join(choices)}",
                where=self.where(key),
                hint=f"use one of: {', '.join(choices)}",
            )
        return v

    def env_table(self, key: str) -> tuple[tuple[str, str], ...]:
        v = self._get(key)
        if v is None:
            return ()
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise self._type_error(key, "a table of string values")
        for name in v:
            if not _ENV_RE.match(name):
                raise ConfigError(
                    f"{name!r} is not a valid environment variable name",
                    where=self.where(key),
                )
        return tuple(sorted(v.items()))

    def sub(self, key: str) -> _Section:
        v = self._get(key)
        return _Section(self.doc, (*self.path, key), v, self.sources)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            key = unknown[0]
            import difflib  # only for this message

            near = difflib.get_close_matches(key, sorted(self.used), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(sorted(self.used))}"
            raise ConfigError(
                f"unknown key {_dotted((*self.path, key))!r}",
                where=self.where(key),
                hint=hint,
            )


def _short(value: Any) -> str:
    """A value for a message: a 4,300-digit integer or a deep array is cut, not printed whole."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 40:
        return f"(an integer of {len(str(abs(value)))} digits)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "(top level)"


def load(root: Path, *, local: bool = True) -> Config:
    """Load <root>/pib.toml and, if present, <root>/pib.local.toml over it."""
    root = root.resolve()
    main = root / CONFIG_NAME
    if not main.is_file():
        raise ConfigError(f"no {CONFIG_NAME} in {root}", hint="run pib inside a workspace, or pass -C DIR")
    read = [(main, _read(main))]
    override = root / LOCAL_NAME
    if local and override.is_file():
        read.append((override, _read(override)))
    where = cache.path_for(root)
    want = cache.key(root, read, local)
    cfg = cache.get(where, want)
    if cfg is None:
        doc = _Doc()
        for path, raw in read:
            doc.add(path, raw)
        sources: dict[str, Location] = {}
        top = _Section(doc, (), doc.data, sources)
        cfg = _build(root, top, doc, tuple(path for path, _ in read), sources)
        _check_paths(cfg)
        cache.put(where, want, cfg)
    else:
        _check_paths(cfg)
        # The SPDX list comes from an installed package, not from the files read: checked again.
        for c in cfg.components:
            if c.license is not None:
                key = f"components.{c.name}.license"
                _check_license(c.license, key, cfg.sources.get(key) or c.where)
    return cfg


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _check_paths(cfg: Config) -> None:
    """What depends on the file system, not on the files read (symbolic links on the way to a proto area
    or a read-only path): checked on every load, the cached configuration's too."""
    root = cfg.workspace.root
    for c in cfg.components:
        if _may_contain(c.proto, root):
            raise ConfigError(f"component {c.name!r}: proto {c.proto} would contain the workspace",
                              where=_proto_where(cfg, c))
    _check_protos(list(cfg.components), {c.name: _proto_where(cfg, c) for c in cfg.components})
    for p in cfg.sandbox.ro_paths:
        if p.resolve() == Path("/"):
            raise ConfigError("sandbox.ro_paths cannot hold / (a build would see everything)",
                              where=cfg.sources.get("sandbox.ro_paths", cfg.sandbox.where),
                              hint="name the directories a build needs")


def _proto_where(cfg: Config, c: ComponentConfig) -> Location:
    return cfg.sources.get(f"components.{c.name}.proto") or c.where


def _rel(root: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else root / p


def _build(root: Path, top: _Section, doc: _Doc, files: tuple[Path, ...], sources: dict[str, Location]) -> Config:
    ws = top.sub("workspace")
    workspace = WorkspaceConfig(
        name=ws.text("name", root.name) or root.name,
        root=root,
        projects_dir=_rel(root, ws.text("projects_dir", "projects") or "projects"),
        log_dir=_rel(root, ws.text("log_dir", "log") or "log"),
        output_dir=_rel(root, ws.text("output_dir", "output") or "output"),
        state_dir=_rel(root, ws.text("state_dir", ".pib") or ".pib"),
        jobs=ws.integer("jobs", max(1, os.cpu_count() or 1), minimum=1, maximum=MAX_JOBS),
        source_date_epoch=ws.integer("source_date_epoch", 315532800, minimum=0, maximum=MAX_EPOCH),
    )
    ws.done()

    pl = top.sub("platform")
    platform = PlatformConfig(
        min_version=pl.text("min_version"),
        detector=pl.choice("detector", ("auto", "smartos", "os-release", "command"), "auto"),
        command=pl.strs("command"),
        where=pl.where(),
    )
    if platform.detector == "command" and not platform.command:
        raise ConfigError(
            "platform.detector = \"command\" needs platform.command",
            where=pl.where("detector"),
            hint='add command = ["/path/to/print-version"]',
        )
    pl.done()

    cbe: CbeSpec | None = None
    if "cbe" in top.data:
        cb = top.sub("cbe")
        name = cb.req_str("name")
        root_s = cb.text("root")
        cbe = CbeSpec(
            name=name,
            version=cb.req_str("version"),
            root=_rel(root, root_s) if root_s else None,
            lock=_rel(root, cb.req_str("lock")),
            system_path=cb.strs("system_path", ("/usr/bin", "/bin")),
            where=cb.where(),
        )
        for d in cbe.system_path:
            if not d.startswith("/"):
                raise ConfigError(f"cbe.system_path entry {d!r} must be absolute", where=cb.where("system_path"))
        cb.done()
    else:
        top.used.add("cbe")

    components = _components(root, top, workspace)

    ls = top.sub("local_store")
    default_store = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pib" / "store"
    local_store = LocalStoreSpec(
        path=_rel(root, ls.text("path") or str(default_store)),
        quota_bytes=ls.size("quota"),
        where=ls.where(),
    )
    ls.done()

    stores = _stores(root, top, doc)

    tr = top.sub("trust")
    key_env = tr.text("signing_key_env", "PIB_SIGNING_KEY")
    if key_env is not None and not _ENV_RE.match(key_env):
        raise ConfigError(f"trust.signing_key_env {key_env!r} is not a variable name", where=tr.where("signing_key_env"))
    signing = tr.text("signing_key")
    trust = TrustConfig(
        public_keys=tuple(_rel(root, p) for p in tr.strs("public_keys")),
        signing_key=_rel(root, signing) if signing else None,
        signing_key_env=key_env,
        publish=tr.choice("publish", ("ci", "always", "never"), "ci"),
        require_oldest_platform=tr.flag("require_oldest_platform", False),
    )
    tr.done()

    image = _image(root, top, {c.name for c in components})
    sandbox = _sandbox(root, top)

    bt = top.sub("boot")
    boot = BootConfig(
        memory=bt.integer("memory", 256, minimum=32, maximum=MAX_BOOT_MEMORY),
        timeout=bt.number("timeout", 120.0, minimum=0, maximum=MAX_TIMEOUT),
        marker=bt.text("marker", "PIB-BOOT-OK") or "PIB-BOOT-OK",
        append=bt.text("append", "console=ttyS0") or "console=ttyS0",
        qemu=bt.text("qemu", "qemu-system-x86_64") or "qemu-system-x86_64",
        ovmf=bt.text("ovmf", "") or "",
    )
    bt.done()
    media = _media(top, {c.name for c in components}, boot.append)

    apt = _apt(top)
    if apt is None:
        for c in components:
            for pin in c.sources:
                if isinstance(pin.origin, AptOrigin):
                    raise ConfigError(f"component {c.name!r} declares a Debian source but pib.toml has no [apt]",
                                      where=pin.where,
                                      hint='add [apt] uris = ["http://deb.debian.org/debian"] and suites = ["bookworm"]')
    top.done()
    return Config(
        workspace=workspace,
        platform=platform,
        cbe=cbe,
        components=components,
        local_store=local_store,
        stores=stores,
        trust=trust,
        image=image,
        boot=boot,
        apt=apt,
        files=files,
        sources=sources,
        data=doc.data,
        sandbox=sandbox,
        media=media,
    )


def _sandbox(root: Path, top: _Section) -> SandboxSpec:
    sb = top.sub("sandbox")
    mode = sb.choice("mode", ("bwrap", "none", "required"), "bwrap")
    spec = SandboxSpec(
        mode="none" if mode == "none" else "required" if mode == "required" else "bwrap",
        ro_paths=tuple(_rel(root, p) for p in sb.strs("ro_paths")),
        bwrap=sb.text("bwrap", "bwrap") or "bwrap",
        where=sb.where("mode") if "mode" in sb.data else sb.where(),
    )
    sb.done()
    return spec


def _components(root: Path, top: _Section, workspace: WorkspaceConfig) -> tuple[ComponentConfig, ...]:
    table = top.sub("components")
    out: list[ComponentConfig] = []
    for name in list(table.data):
        sec = table.sub(name)
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"component name {name!r} is not allowed",
                where=sec.where(),
                hint="use lower-case letters, digits, '-', '_' and '.', starting with a letter or digit",
            )
        source = sec.text("source")
        path_s = sec.text("path")
        if (source is None) == (path_s is None):
            raise ConfigError(
                f"component {name!r} needs exactly one of source (a git URL or repository to clone) "
                "or path (an existing checkout used in place)",
                where=sec.where(),
                hint=f"add source = \"https://...\" to [components.{name}]",
            )
        build = sec.argv("build")
        if build is None:
            raise ConfigError(
                f"component {name!r} has no build command",
                where=sec.where(),
                hint='add build = ["make", "install"] (an argv list) or build = "./build.sh"',
            )
        branch = sec.text("branch")
        ref = sec.text("ref")
        if branch is not None and ref is not None:
            raise ConfigError(
                f"component {name!r} sets both branch and ref",
                where=sec.where("ref"),
                hint="a ref (commit, tag or PR-<n>) pins the checkout; drop one of them",
            )
        if source is not None and "://" not in source and not source.startswith(("git@", "/")):
            # A relative path to a local repository: relative to the workspace.
            source = str(_rel(root, source))
        checkout = _rel(root, path_s) if path_s else workspace.projects_dir / name
        dir_s = sec.text("dir")
        if dir_s is not None:
            checkout = _rel(root, dir_s)
        proto = _rel(root, sec.text("proto", f"proto.{name}") or f"proto.{name}")
        manifest = sec.text("manifest")
        if manifest is not None and (manifest.startswith("/") or ".." in Path(manifest).parts):
            raise ConfigError(
                f"component {name!r}: manifest must be a path inside the checkout",
                where=sec.where("manifest"),
            )
        comp = ComponentConfig(
            name=name,
            source=source,
            path=_rel(root, path_s) if path_s else None,
            branch=branch,
            ref=ref,
            build=build,
            checkout=checkout,
            proto=proto,
            manifest=manifest,
            depends=sec.strs("depends"),
            key_files=tuple(_rel(root, p) for p in sec.strs("key_files")),
            env=_component_env(sec),
            prebuilt=sec.flag("prebuilt", False),
            where=sec.where(),
            network=sec.flag("network", False),
            writable_source=sec.flag("writable_source", False),
            sources=_pinned_sources(sec),
            license=_license(sec),
        )
        sec.done()
        out.append(comp)
    table.done()
    _check_graph(out, table)
    protos: dict[Path, str] = {}
    for c in out:
        if c.proto in protos:
            raise ConfigError(
                f"components {protos[c.proto]!r} and {c.name!r} share the proto area {c.proto}",
                where=c.where,
                hint="each component needs its own proto area",
            )
        protos[c.proto] = c.name
    return tuple(out)


def _license(sec: _Section) -> str | None:
    """components.NAME.license: an SPDX license expression, e.g. "GPL-2.0-only" or "MIT OR Apache-2.0"."""
    text = sec.text("license")
    if text is not None:
        _check_license(text, _dotted((*sec.path, "license")), sec.where("license"))
    return text


def _check_license(text: str, key: str, where: Location) -> None:
    from pib.config.license import LicenseError, check_expression

    try:
        check_expression(text)
    except LicenseError as exc:
        raise ConfigError(f"{key} = {text!r} is not an SPDX license expression: {exc}", where=where,
                          hint='write e.g. "GPL-2.0-only", "MIT OR Apache-2.0" or "LicenseRef-Proprietary"') from exc


# Set by pib for every build; a component that changed them would run outside its build environment.
_RESERVED_ENV = frozenset({"PATH", "HOME", "DESTDIR", "SOURCE_DATE_EPOCH"})


def _component_env(sec: _Section) -> tuple[tuple[str, str], ...]:
    env = sec.env_table("env")
    for name, _ in env:
        if name in _RESERVED_ENV or name.startswith("PIB_"):
            raise ConfigError(
                f"components.{sec.path[-1]}.env may not set {name}: pib sets it for every build",
                where=sec.where("env"),
                hint="PATH comes from the build environment ([cbe] system_path); drop it from env",
            )
    return env


def _check_protos(comps: list[ComponentConfig], where: dict[str, Location]) -> None:
    """A proto area is replaced wholesale by every build: it must never be, contain or lie inside the
    git data of a checkout (its own or another component's). Linear in the components: each path is
    resolved once and the checkouts' ancestors go into one table."""
    checkouts: dict[str, ComponentConfig] = {}
    ancestors: dict[str, ComponentConfig] = {}
    parents: dict[str, str] = {}  # strings, not Paths: hashing 1,000 Paths and their parents is the cost
    for d in comps:
        real = real_path(str(d.checkout), parents)
        checkouts[real] = d
        up = os.path.dirname(real)
        while up not in ancestors:  # an ancestor already there has all of its own there too
            ancestors[up] = d
            if up == os.path.dirname(up):
                break
            up = os.path.dirname(up)
    for c in comps:
        proto = real_path(str(c.proto), parents)
        if ".git" in proto.split("/"):
            raise ConfigError(f"component {c.name!r}: proto {c.proto} is inside a .git directory",
                              where=where[c.name], hint=f"use a directory of its own, e.g. proto.{c.name}")
        owner = checkouts.get(proto) or ancestors.get(proto)
        if owner is not None:
            whose = "its own checkout" if owner is c else f"the checkout of {owner.name!r}"
            what = "is" if proto in checkouts else "contains"
            raise ConfigError(f"component {c.name!r}: proto {c.proto} {what} {whose} ({owner.checkout}); "
                              "a build would delete it", where=where[c.name],
                              hint=f"use a directory of its own, e.g. proto.{c.name}")


def _may_contain(proto: Path, root: Path) -> bool:
    """Whether the proto area is the (resolved) workspace root or one of its parents."""
    text = str(proto)
    if os.path.dirname(text) == str(root) and not os.path.islink(text):
        return False  # the usual proto.NAME beside pib.toml: no need to resolve every path
    real = proto.resolve()
    return real == root or root.is_relative_to(real)


def _check_graph(comps: list[ComponentConfig], table: _Section) -> None:
    names = {c.name for c in comps}
    for c in comps:
        for d in c.depends:
            if d not in names:
                raise ConfigError(
                    f"component {c.name!r} depends on unknown component {d!r}",
                    where=table.doc.where(("components", c.name, "depends")),
                    hint=f"known components: {', '.join(sorted(names))}",
                )
    deps = {c.name: c.depends for c in comps}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in deps[n]:
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d):], d]
                raise ConfigError(
                    "dependency cycle: " + " -> ".join(cycle),
                    where=table.doc.where(("components", n, "depends")),
                    hint="a component cannot (indirectly) depend on itself; remove one of these depends",
                )
            if state.get(d) is None:
                visit(d)
        stack.pop()
        state[n] = 2

    for c in comps:
        if c.name not in state:
            visit(c.name)


def _apt(top: _Section) -> AptSources | None:
    if not _has(top.data, ("apt",)):
        top.used.add("apt")
        return None
    sec = top.sub("apt")
    suites = sec.strs("suites")
    if not suites:
        raise ConfigError("[apt] needs suites", where=sec.where(),
                          hint='name the suite the pins come from, e.g. suites = ["bookworm"] (a release\'s '
                               'base suite: its versions are not replaced in place)')
    trusted = sec.flag("trusted", False)
    apt = AptSources(
        uris=sec.strs("uris") or ("http://deb.debian.org/debian",),
        suites=suites,
        components=sec.strs("components") or ("main",),
        arch=sec.text("arch", "amd64") or "amd64",
        signed_by="" if trusted else (sec.text("signed_by") or DEFAULT_KEYRING),
        trusted=trusted,
    )
    sec.done()
    return apt


_SOURCE_KINDS = ("url", "apt", "apt-source")


def _pinned_sources(comp: _Section) -> tuple[Pinned, ...]:
    """components.NAME.sources: files the build gets in PIB_SOURCES, each pinned by SHA-256."""
    raw = comp._get("sources")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise comp._type_error("sources", "an array of tables (url, apt or apt-source, with sha256)")
    out: list[Pinned] = []
    for i, item in enumerate(raw):
        sec = _Section(comp.doc, (*comp.path, "sources", i), item, comp.sources)
        kinds = [k for k in _SOURCE_KINDS if k in sec.data]
        if len(kinds) != 1:
            raise ConfigError(f"{_dotted(sec.path)} needs exactly one of url, apt or apt-source",
                              where=sec.where(), hint='e.g. { url = "https://...", sha256 = "..." }')
        kind = kinds[0]
        value = sec.req_str(kind)
        size = sec.integer("size", 0, minimum=1, maximum=MAX_SIZE) if "size" in sec.data else None
        if kind == "apt-source":
            name, version = _name_version(sec, kind, value)
            files = sec._get("files")
            if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
                raise ConfigError(f"{_dotted(sec.path)}: apt-source needs files = {{ \"NAME\" = \"SHA256\", ... }}",
                                  where=sec.where(), hint="list the source package's files you use, with SHA-256")
            for fname, sha in files.items():
                out.append(Pinned(_file_name(sec, fname), _sha(sec, sha, "files"),
                                  AptOrigin(name, version, source=True), None, sec.where("files")))
        else:
            sha = _sha(sec, sec.req_str("sha256"), "sha256")
            if kind == "apt":
                name, version = _name_version(sec, kind, value)
                arch = sec.text("arch", "amd64") or "amd64"
                default = f"{name}_{version.partition(':')[2] or version}_{arch}.deb"
                fname = _file_name(sec, sec.text("name", default) or default)
                out.append(Pinned(fname, sha, AptOrigin(name, version, arch=arch), size, sec.where()))
            else:
                if not value.startswith(("https://", "http://", "file:")):
                    raise ConfigError(f"{_dotted(sec.path)}: url must be http(s) or file:", where=sec.where("url"))
                default = value.rstrip("/").rpartition("/")[2]
                fname = _file_name(sec, sec.text("name", default) or default)
                out.append(Pinned(fname, sha, UrlOrigin(value), size, sec.where()))
        sec.done()
    names = [p.name for p in out]
    for p in out:
        if names.count(p.name) > 1:
            raise ConfigError(f"two sources of component {comp.path[-1]!r} are named {p.name!r}", where=p.where,
                              hint="give one of them another name = \"...\"")
    return tuple(out)


def _name_version(sec: _Section, kind: str, value: str) -> tuple[str, str]:
    name, eq, version = value.partition("=")
    if not eq or not name or not version or " " in value:
        raise ConfigError(f"{_dotted(sec.path)}: {kind} = {value!r} must be \"NAME=VERSION\"", where=sec.where(kind),
                          hint="pin the exact Debian version, e.g. \"busybox=1:1.35.0-4+deb12u1\"")
    return name, version


def _file_name(sec: _Section, name: str) -> str:
    if not _FILE_NAME_RE.match(name) or name in (".", ".."):
        raise ConfigError(f"{_dotted(sec.path)}: {name!r} is not a plain file name", where=sec.where(),
                          hint="sources are files by name in PIB_SOURCES: no '/' and no leading '.'")
    return name


def _sha(sec: _Section, value: str, key: str) -> str:
    if not _SHA256_RE.match(value):
        raise ConfigError(f"{_dotted(sec.path)}: {key} {value!r} is not a SHA-256 (64 lower-case hex digits)",
                          where=sec.where(key), hint="compute it with sha256sum on the file you checked")
    return value


def _stores(root: Path, top: _Section, doc: _Doc) -> tuple[StoreSpec, ...]:
    raw = top._get("store")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("store must be an array of tables", where=doc.where(("store",)), hint="write each one as [[store]]")
    out: list[StoreSpec] = []
    for i, item in enumerate(raw):
        sec = _Section(doc, ("store", i), item, top.sources)
        kind = sec.choice("type", ("local", "http", "s3"), "http")
        name = sec.text("name", f"{kind}{i}") or f"{kind}{i}"
        url = sec.text("url")
        bucket = sec.text("bucket")
        path_s = sec.text("path")
        if kind == "http" and not url:
            raise ConfigError(f"store {name!r} (http) needs url", where=sec.where(), hint='add url = "https://host/pib"')
        if kind == "http" and url and not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"store {name!r}: url {url!r} is not an http:// or https:// URL", where=sec.where("url"),
                              hint='write it as url = "https://host/path"')
        for k in ("url", "endpoint_url"):
            _check_port(sec, k)
        if kind == "s3" and not bucket:
            raise ConfigError(f"store {name!r} (s3) needs bucket", where=sec.where(), hint='add bucket = "my-artifacts"')
        if kind == "local" and not path_s:
            raise ConfigError(f"store {name!r} (local) needs path", where=sec.where())
        env_names = {k: sec.text(k) for k in ("token_env", "user_env", "password_env")}
        for k, v in env_names.items():
            if v is not None and not _ENV_RE.match(v):
                raise ConfigError(
                    f"store.{k} must name an environment variable, not hold a secret",
                    where=sec.where(k),
                    hint="put the credential in an environment variable and name it here",
                )
        # Every key is read whatever the type, so each is known (and shown by `config show`) for all of them.
        s3 = (sec.text("prefix", "") or "", sec.text("endpoint_url"), sec.text("region"), sec.text("profile"))
        timeout = sec.number("timeout", 10.0, minimum=0, maximum=MAX_TIMEOUT)
        retries = sec.integer("retries", 2, minimum=0, maximum=MAX_RETRIES)
        publish = sec.flag("publish", True)
        if kind == "local":
            assert path_s is not None
            out.append(LocalStoreSpec(_rel(root, path_s), None, name, publish, sec.where()))
        elif kind == "http":
            assert url is not None
            out.append(HttpStoreSpec(name, url, env_names["token_env"], env_names["user_env"],
                                     env_names["password_env"], timeout, retries, publish, sec.where()))
        else:
            assert bucket is not None
            out.append(S3StoreSpec(name, bucket, *s3, timeout, retries, publish, sec.where()))
        sec.done()
    names = [s.name for s in out]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"two stores are named {n!r}", where=doc.where(("store",)), hint="give each [[store]] its own name")
    return tuple(out)


def _check_port(sec: _Section, key: str) -> None:
    """A URL's port must be one a socket can use (urllib says so only when it is first used)."""
    url = sec.data.get(key)
    if not isinstance(url, str):
        return
    try:
        _ = urllib.parse.urlsplit(url).port
    except ValueError as exc:
        raise ConfigError(f"{_dotted((*sec.path, key))}: {url!r} is not a usable URL: {exc}", where=sec.where(key),
                          hint="a port is a number from 1 to 65535, e.g. https://host:8443/pib") from None


def _image(root: Path, top: _Section, components: set[str]) -> ImageSpec | None:
    if "image" not in top.data:
        top.used.add("image")
        return None
    im = top.sub("image")
    kernels: list[KernelSpec] = []
    for spec in im.strs("kernel"):
        comp, sep, path = spec.partition(":")
        if not sep or not path or comp not in components:
            raise ConfigError(
                f"image.kernel entry {spec!r} must be COMPONENT:PATH with a known component",
                where=im.where("kernel"),
                hint=f"components: {', '.join(sorted(components))}",
            )
        kernels.append(KernelSpec(comp, path))
    overlays: list[Overlay] = []
    raw = im._get("overlays") or []
    if not isinstance(raw, list):
        raise ConfigError("image.overlays must be a list", where=im.where("overlays"))
    for item in raw:
        if isinstance(item, str):
            overlays.append(_overlay(_rel(root, item), None))
        elif isinstance(item, dict) and isinstance(item.get("path"), str) and set(item) <= {"path", "manifest"}:
            man = item.get("manifest")
            if man is not None and not isinstance(man, str):
                raise ConfigError("image.overlays manifest must be a string", where=im.where("overlays"))
            overlays.append(_overlay(_rel(root, item["path"]), _rel(root, man) if man else None))
        else:
            raise ConfigError(
                "image.overlays entries must be a path or { path = \"...\", manifest = \"...\" }",
                where=im.where("overlays"),
            )
    image = ImageSpec(
        kernels=tuple(kernels),
        overlays=tuple(overlays),
        compression="gzip" if im.choice("compression", ("zstd", "gzip"), "zstd") == "gzip" else "zstd",
        max_size=im.size("max_size"),
        archive_command=im.strs("archive_command") or None,
        release_file=im.text("release_file", "etc/pib-release") or "etc/pib-release",
        duplicates="smartos" if im.choice("duplicates", ("strict", "smartos"), "strict") == "smartos" else "strict",
        where=im.where(),
    )
    im.done()
    return image


# Characters GRUB's configuration language would read as syntax in a kernel command line.
_GRUB_SYNTAX = re.compile(r"[\"'$;{}\\\n#|&<>`]")


def _media(top: _Section, components: set[str], boot_append: str) -> MediaSpec | None:
    if "media" not in top.data:
        top.used.add("media")
        return None
    md = top.sub("media")
    bootloader = md.text("bootloader")
    if bootloader is not None and bootloader not in components:
        raise ConfigError(f"media.bootloader names no component: {bootloader!r}", where=md.where("bootloader"),
                          hint=f"components: {', '.join(sorted(components))}")
    grub = md.text("grub_dir", "usr/lib/grub") or "usr/lib/grub"
    if bootloader is None and not os.path.isabs(grub):
        raise ConfigError("media.grub_dir must be absolute without media.bootloader",
                          where=md.where("grub_dir") if "grub_dir" in md.data else md.where(),
                          hint='name the component that delivers GRUB (bootloader = "boot"), '
                               'or give grub_dir = "/usr/lib/grub"')
    if bootloader is not None and (os.path.isabs(grub) or ".." in Path(grub).parts):
        raise ConfigError(f"media.grub_dir {grub!r} must be a path inside the bootloader's proto area",
                          where=md.where("grub_dir"), hint='e.g. grub_dir = "usr/lib/grub"')
    append = md.text("append", boot_append) or ""
    if _GRUB_SYNTAX.search(append):
        raise ConfigError(f"media.append {append!r} has characters GRUB would read as syntax",
                          where=md.where("append") if "append" in md.data else md.where(),
                          hint="use plain words such as console=ttyS0 quiet")
    make = md.strs("make")
    for kind in make:
        if kind not in MEDIA_KINDS:
            raise ConfigError(f"media.make entry {kind!r} is not one of: {', '.join(MEDIA_KINDS)}",
                              where=md.where("make"), hint='e.g. make = ["iso", "usb"]')
    spec = MediaSpec(
        bootloader=bootloader,
        grub_dir=Path(grub),
        append=append,
        timeout=md.integer("timeout", 0, minimum=0, maximum=MAX_MENU_TIMEOUT),
        make=make,
        where=md.where(),
    )
    md.done()
    return spec


def _overlay(path: Path, manifest: Path | None) -> Overlay:
    return Overlay(f"overlay:{path.name}", path, manifest)


# --------------------------------------------------------------------------
# Ordering


def topo_order(cfg: Config, names: tuple[str, ...] | None = None) -> list[ComponentConfig]:
    """Components in dependency order (config order among equals).

    With `names`, only those components and everything they depend on.
    """
    wanted: set[str]
    if names:
        wanted = set()
        todo = [cfg.component(n).name for n in names]
        while todo:
            n = todo.pop()
            if n not in wanted:
                wanted.add(n)
                todo.extend(cfg.component(n).depends)
    else:
        wanted = set(cfg.names)
    done: set[str] = set()
    order: list[ComponentConfig] = []
    pending = [c for c in cfg.components if c.name in wanted]
    while pending:
        for c in pending:
            if all(d in done for d in c.depends):
                order.append(c)
                done.add(c.name)
                pending.remove(c)
                break
    return order

