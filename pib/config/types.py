"""The configuration's types: what pib.toml (and pib.local.toml) say, frozen.

pib.config.loader makes every one of them in one load step; nothing changes
them afterwards. NamedTuples, not dataclasses: they are on every command's
start-up path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pib.errors import ConfigError, Location

CONFIG_NAME = "pib.toml"


class WorkspaceConfig(NamedTuple):
    name: str
    root: Path
    projects_dir: Path
    log_dir: Path
    output_dir: Path
    state_dir: Path
    jobs: int
    source_date_epoch: int = 315532800  # SOURCE_DATE_EPOCH of every build, in every key (1980-01-01)


class PlatformConfig(NamedTuple):
    min_version: str | None
    detector: str  # auto | smartos | os-release | command
    command: tuple[str, ...]
    where: Location


class CbeSpec(NamedTuple):
    """[cbe]: the build environment version a workspace builds with."""

    name: str
    version: str
    root: Path | None  # None: pib.cbe.default_root(name)
    lock: Path
    system_path: tuple[str, ...] = ("/usr/bin", "/bin")
    where: Location | None = None


# Pinned inputs: files named by their SHA-256, fetched before a build (pib.fetch).
# The hash is the identity; the origin only says where upstream offers the bytes.


class UrlOrigin(NamedTuple):
    url: str


class AptOrigin(NamedTuple):
    """A Debian binary package (`apt = "NAME=VERSION"`) or source package (`apt-source`)."""

    package: str
    version: str
    source: bool = False
    arch: str = "amd64"

    def spec(self) -> str:
        if self.source:
            return f"{self.package}={self.version}"
        return f"{self.package}:{self.arch}={self.version}"


class Pinned(NamedTuple):
    name: str           # the file name a build sees in PIB_SOURCES
    sha256: str
    origin: UrlOrigin | AptOrigin
    size: int | None = None  # bytes, when declared: a cap on every download of it
    where: Location | None = None

    def describe(self) -> str:
        o = self.origin
        return f"{self.name} ({o.url})" if isinstance(o, UrlOrigin) else f"{self.name} (apt {o.spec()})"


DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class AptSources(NamedTuple):
    """[apt] (pib.toml) or a CBE lock's [apt]: where Debian packages come from."""

    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...] = ("main",)
    arch: str = "amd64"
    signed_by: str = DEFAULT_KEYRING  # "" with trusted=True for a local test repository
    trusted: bool = False

    def describe(self) -> str:
        return f"{' '.join(self.suites)} at {' '.join(self.uris)}"

    def lines(self, *, source: bool) -> list[str]:
        opts = [f"arch={self.arch}"]
        if self.trusted:
            opts.append("trusted=yes")
        elif self.signed_by:
            opts.append(f"signed-by={self.signed_by}")
        kinds = ["deb", "deb-src"] if source else ["deb"]
        return [f"{kind} [{' '.join(opts)}] {uri} {suite} {' '.join(self.components)}"
                for kind in kinds for uri in self.uris for suite in self.suites]


class ComponentConfig(NamedTuple):
    name: str
    source: str | None  # git URL or path to clone from
    path: Path | None  # use this existing checkout in place instead of cloning
    branch: str | None
    ref: str | None  # commit, tag, or PR-<n>
    build: tuple[str, ...]
    checkout: Path
    proto: Path
    manifest: str | None  # relative to the checkout
    depends: tuple[str, ...]
    key_files: tuple[Path, ...]
    env: tuple[tuple[str, str], ...]
    prebuilt: bool
    where: Location
    network: bool = False  # the build may reach the network: its key says so and its artifacts stay local
    writable_source: bool = False  # the build writes into its checkout (sandboxed: a copy of what its key covers)
    sources: tuple[Pinned, ...] = ()  # declared downloads, fetched before the build
    license: str | None = None  # an SPDX license expression, for the SBOM


# Artifact stores: the machine's local store ([local_store]) and each [[store]].
# `publish`: whether `pib publish` and `pib build --publish` may write to it.


class LocalStoreSpec(NamedTuple):
    path: Path
    quota_bytes: int | None = None
    name: str = "local"
    publish: bool = True
    where: Location | None = None


class HttpStoreSpec(NamedTuple):
    name: str
    url: str
    token_env: str | None = None  # names of environment variables, never the secrets
    user_env: str | None = None
    password_env: str | None = None
    timeout: float = 10.0
    retries: int = 2
    publish: bool = True
    where: Location | None = None


class S3StoreSpec(NamedTuple):
    name: str
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    timeout: float = 10.0
    retries: int = 2
    publish: bool = True
    where: Location | None = None


StoreSpec = LocalStoreSpec | HttpStoreSpec | S3StoreSpec


class TrustConfig(NamedTuple):
    public_keys: tuple[Path, ...]
    signing_key: Path | None
    signing_key_env: str | None
    publish: str  # ci | always | never
    require_oldest_platform: bool


class KernelSpec(NamedTuple):
    component: str  # the proto area that holds it
    path: str       # relative to that proto area
    name: str = ""  # file name in the platform directory (default: basename of path)

    @property
    def out_name(self) -> str:
        return self.name or self.path.rpartition("/")[2]


class Overlay(NamedTuple):
    name: str
    path: Path
    manifest: Path | None = None


class ImageSpec(NamedTuple):
    """[image]: what the platform image holds and how its boot archive is written."""

    kernels: tuple[KernelSpec, ...] = ()
    overlays: tuple[Overlay, ...] = ()
    compression: Literal["zstd", "gzip"] = "zstd"
    max_size: int | None = None  # bytes of the boot archive file as written
    archive_command: tuple[str, ...] | None = None  # {staged} {output} {manifest} {buildstamp}
    release_file: str = "etc/pib-release"
    # Two differing manifest lines for one path: "strict" refuses, "smartos" keeps the later (with a warning).
    duplicates: Literal["strict", "smartos"] = "strict"
    where: Location | None = None  # where the image settings were written (pib.toml)


class SandboxSpec(NamedTuple):
    """[sandbox]: how component builds are isolated (pib.build.sandbox).

    bwrap: in bubblewrap where it can run, else unisolated with a warning; required: bubblewrap or an
    error; none: unisolated (and a different key).
    """

    mode: Literal["bwrap", "none", "required"] = "bwrap"
    ro_paths: tuple[Path, ...] = ()  # more read-only paths a build may see
    bwrap: str = "bwrap"  # the bubblewrap program (a name on PATH or a path)
    where: Location | None = None


class BootConfig(NamedTuple):
    memory: int
    timeout: float
    marker: str
    append: str
    qemu: str
    ovmf: str = ""  # UEFI firmware for QEMU ("": the first of Debian's ovmf files that exists)


MEDIA_KINDS = ("iso", "usb")


class MediaSpec(NamedTuple):
    """[media]: where the boot loader comes from and what its configuration says."""

    bootloader: str | None  # the component whose proto area holds GRUB (None: grub_dir is absolute)
    grub_dir: Path  # relative to that proto area, or absolute (a CBE's or the host's GRUB)
    append: str  # kernel command line on the media
    timeout: int = 0  # seconds GRUB's menu waits
    make: tuple[str, ...] = ()  # media pib build makes after the image
    where: Location | None = None


class Config(NamedTuple):
    workspace: WorkspaceConfig
    platform: PlatformConfig
    cbe: CbeSpec | None
    components: tuple[ComponentConfig, ...]
    local_store: LocalStoreSpec
    stores: tuple[StoreSpec, ...]
    trust: TrustConfig
    image: ImageSpec | None
    boot: BootConfig
    apt: AptSources | None  # [apt]: where components' apt and apt-source sources come from
    files: tuple[Path, ...]
    sources: Mapping[str, Location]  # dotted key -> where it was set
    data: Mapping[str, Any]  # the merged raw document, for `config show`
    sandbox: SandboxSpec = SandboxSpec()
    media: MediaSpec | None = None  # [media]: bootable media of the platform

    def component(self, name: str) -> ComponentConfig:
        for c in self.components:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.components) or "none"
        raise ConfigError(
            f"no component named {name!r}",
            hint=f"components in {CONFIG_NAME}: {known}",
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)
