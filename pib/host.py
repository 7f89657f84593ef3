"""The host platform and the oldest one a workspace supports.

RFD 141: builds must run on (and publishable artifacts come from) a host no
older than the oldest supported platform image. SmartOS names platforms by
build stamp (`uname -v` = joyent_20180329T002515Z); Linux by os-release.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from pib.config.types import PlatformConfig
from pib.errors import PibError, Reason
from pib.run import run

OS_RELEASE = Path("/etc/os-release")


class HostPlatform(NamedTuple):
    kind: str  # smartos | os-release | command
    version: str
    description: str

    def __str__(self) -> str:
        return f"{self.description} ({self.kind} {self.version})"


def detect(cfg: PlatformConfig, *, os_release: Path = OS_RELEASE) -> HostPlatform:
    detector = cfg.detector
    uname = os.uname()
    if detector == "auto":
        detector = "smartos" if uname.sysname == "SunOS" and uname.version.startswith("joyent_") else "os-release"
    if detector == "smartos":
        return _smartos(uname.version)
    if detector == "command":
        res = run(list(cfg.command), capture=True, reason=Reason.PLATFORM, what="platform.command", timeout=30)
        version = res.stdout.strip().splitlines()[0].strip() if res.stdout.strip() else ""
        if not version:
            raise PibError("platform.command printed no version", reason=Reason.PLATFORM, where=cfg.where)
        return HostPlatform("command", version, " ".join(cfg.command))
    return _os_release(os_release)


def _smartos(uname_v: str) -> HostPlatform:
    m = re.fullmatch(r"joyent_(\d{8}T\d{6}Z)", uname_v.strip())
    if not m:
        raise PibError(
            f"cannot read a SmartOS platform stamp from uname -v {uname_v!r}",
            reason=Reason.PLATFORM,
            hint='expected joyent_YYYYMMDDTHHMMSSZ; set [platform] detector = "command" to read it another way',
        )
    return HostPlatform("smartos", m.group(1), f"SmartOS {m.group(1)}")


def _os_release(path: Path) -> HostPlatform:
    fields: dict[str, str] = {}
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            k, sep, v = line.partition("=")
            if sep:
                fields[k.strip()] = v.strip().strip('"').strip("'")
    except OSError as exc:
        raise PibError(f"cannot read {path}: {exc.strerror}", reason=Reason.PLATFORM) from exc
    version = fields.get("VERSION_ID", "")
    if not version:
        raise PibError(f"{path} has no VERSION_ID", reason=Reason.PLATFORM)
    return HostPlatform("os-release", version, fields.get("PRETTY_NAME", fields.get("ID", "linux")))


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural ordering: '12.10' > '12.9', '20180329T002515Z' compares as digits."""
    out: list[tuple[int, int | str]] = []
    for part in re.findall(r"\d+|[A-Za-z]+", version):
        out.append((1, int(part)) if part.isdigit() else (0, part))
    return tuple(out)


def older(a: str, b: str) -> bool:
    return version_key(a) < version_key(b)


class FloorCheck(NamedTuple):
    host: HostPlatform
    minimum: str | None
    ok: bool
    overridden: bool


def check_floor(cfg: PlatformConfig, *, allow_old: bool = False, host: HostPlatform | None = None) -> FloorCheck:
    """Refuse a host older than the oldest supported platform (unless allow_old)."""
    host = host or detect(cfg)
    if cfg.min_version is None or not older(host.version, cfg.min_version):
        return FloorCheck(host, cfg.min_version, True, False)
    if allow_old:
        return FloorCheck(host, cfg.min_version, False, True)
    raise PibError(
        f"host platform {host.version} ({host.description}) is older than the oldest supported platform "
        f"{cfg.min_version}",
        reason=Reason.PLATFORM,
        where=cfg.where,
        hint="upgrade the build host, or pass --allow-old-platform to build anyway (artifacts built so are never published)",
    )
