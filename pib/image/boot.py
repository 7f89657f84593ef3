"""Smoke-boot a built platform in QEMU and check that it comes up.

QEMU runs with TCG (KVM is not assumed), the serial console on stdio and the
platform's kernel and boot archive given directly. The console is copied to
`log/boot-<stamp>.log`; QEMU is stopped as soon as the marker line appears,
a failure line appears, it exits by itself, or the time-out passes.

The kernel command line gets `pib.test=1`, which tells the platform's init it
is being tested, so it may power off after printing the marker.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pib.errors import PibError, Reason
from pib.run import Log, minimal_env, run_watch, tail_of

if TYPE_CHECKING:
    from pib.config.types import Config

TEST_FLAG = "pib.test=1"
# Lines that end a boot early as failed: no point waiting for the time-out.
FAIL_LINES = ("Kernel panic - not syncing", "PIB-BOOT-FAIL")


@dataclass(frozen=True)
class BootResult:
    passed: bool
    seconds: float  # QEMU start to marker (or to the end of the attempt)
    marker_line: str | None  # the marker line, or the failure line that stopped the boot
    log_path: Path
    outcome: str  # "marker" | "failure-line" | "timeout" | "exited"

    def check(self) -> BootResult:
        """Raise a BOOT error unless the platform came up."""
        if self.passed:
            return self
        what = {
            "failure-line": f"the platform reported a failure: {self.marker_line}",
            "timeout": f"no boot marker within {self.seconds:.0f}s",
            "exited": "QEMU exited before the boot marker appeared",
        }.get(self.outcome, self.outcome)
        raise PibError(
            f"boot failed: {what} (console log: {self.log_path})",
            reason=Reason.BOOT,
            hint="read the console log; raise [boot] timeout in pib.toml if the machine is just slow",
            detail=tail_of(self.log_path, 30),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "marker_line": self.marker_line,
            "log": str(self.log_path),
            "outcome": self.outcome,
        }


@dataclass(frozen=True)
class Platform:
    """The two files QEMU needs from a built platform."""

    stamp: str
    kernel: Path
    boot_archive: Path


def find_qemu(qemu: str) -> str:
    found = shutil.which(qemu) if "/" not in qemu else (qemu if Path(qemu).is_file() else None)
    if found is None:
        raise PibError(
            f"QEMU ({qemu}) is not installed",
            reason=Reason.BOOT,
            hint="install it (Debian: apt-get install qemu-system-x86) or set [boot] qemu in pib.toml",
        )
    return found


def qemu_argv(qemu: str, kernel: Path, boot_archive: Path, *, memory: int, append: str) -> list[str]:
    cmdline = append.split()
    if TEST_FLAG not in cmdline:
        cmdline.append(TEST_FLAG)
    return [
        qemu,
        "-accel", "tcg",  # KVM is not assumed (and hangs on some hosts)
        "-nographic",  # serial console on stdio
        "-m", str(memory),
        "-no-reboot",  # a panic or reboot ends QEMU instead of looping
        "-nic", "none",
        "-kernel", str(kernel),
        "-initrd", str(boot_archive),
        "-append", " ".join(cmdline),
    ]


def boot(
    platform: Platform,
    *,
    log_dir: Path,
    marker: str = "PIB-BOOT-OK",
    memory: int = 256,
    timeout: float = 120.0,
    append: str = "console=ttyS0",
    qemu: str = "qemu-system-x86_64",
    fail_lines: Sequence[str] = FAIL_LINES,
    cancel: threading.Event | None = None,
) -> BootResult:
    """Boot `platform` once and report whether the marker line appeared."""
    for path, what in ((platform.kernel, "kernel"), (platform.boot_archive, "boot archive")):
        if not path.is_file():
            raise PibError(
                f"the platform's {what} {path} does not exist",
                reason=Reason.BOOT,
                hint="build the platform image first (pib build)",
            )
    argv = qemu_argv(find_qemu(qemu), platform.kernel, platform.boot_archive, memory=memory, append=append)
    return watch(argv, log_dir / f"boot-{platform.stamp}.log", marker=marker, timeout=timeout,
                 fail_lines=fail_lines, cancel=cancel)


# --- bootable media ---------------------------------------------------------------------

FIRMWARE = ("bios", "uefi")
DRIVES = ("cdrom", "usb")
# Debian's ovmf package: one file holding code and variables, then the split code image.
OVMF_FILES = ("/usr/share/ovmf/OVMF.fd", "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd")
# Under OVMF, GRUB's EFI Linux loader runs out of memory for a kernel and boot archive in 256 MiB.
UEFI_MIN_MEMORY = 512


def find_ovmf(configured: str = "") -> Path:
    for c in ((configured,) if configured else OVMF_FILES):
        if Path(c).is_file():
            return Path(c)
    raise PibError(
        f"no UEFI firmware for QEMU at {configured or ' or '.join(OVMF_FILES)}",
        reason=Reason.BOOT,
        hint="install it (Debian: apt-get install ovmf) or set [boot] ovmf in pib.toml",
    )


def _drive_file(path: Path) -> str:
    return str(path).replace(",", ",,")  # QEMU's option syntax doubles commas in values


def media_argv(qemu: str, medium: Path, *, drive: str, firmware: str, memory: int,
               ovmf: Path | None = None) -> list[str]:
    """QEMU booting from `medium` only: as a CD-ROM or a USB stick, with SeaBIOS or OVMF."""
    argv = [
        qemu,
        "-accel", "tcg",
        "-nographic",
        "-m", str(memory),
        "-no-reboot",
        "-nic", "none",
    ]
    if firmware == "uefi":
        if ovmf is None:
            raise PibError("UEFI boots need the OVMF firmware", reason=Reason.BOOT)
        argv[argv.index("-m") + 1] = str(max(memory, UEFI_MIN_MEMORY))
        argv += ["-bios", str(ovmf)]
    file = f"file={_drive_file(medium)},format=raw,readonly=on,if=none,id=medium"
    if drive == "cdrom":
        argv += ["-drive", f"{file},media=cdrom", "-device", "ide-cd,drive=medium,bootindex=0"]
    else:
        argv += ["-drive", file, "-device", "qemu-xhci,id=xhci",
                 "-device", "usb-storage,bus=xhci.0,drive=medium,bootindex=0"]
    return argv


def boot_medium(
    medium: Path,
    *,
    stamp: str,
    kind: str,
    firmware: str,
    log_dir: Path,
    drive: str | None = None,
    marker: str = "PIB-BOOT-OK",
    memory: int = 256,
    timeout: float = 120.0,
    qemu: str = "qemu-system-x86_64",
    ovmf: str = "",
    fail_lines: Sequence[str] = FAIL_LINES,
    cancel: threading.Event | None = None,
) -> BootResult:
    """Boot a medium (an ISO as a CD-ROM, a disk image as a USB stick, unless `drive` says) once.

    The kernel command line is the medium's own: its boot loader configuration says it.
    """
    if not medium.is_file():
        raise PibError(f"no {kind} medium at {medium}", reason=Reason.BOOT, hint=f"make it first: pib media {kind}")
    if firmware not in FIRMWARE:
        raise PibError(f"unknown firmware {firmware!r}", reason=Reason.USAGE, hint=f"use one of: {', '.join(FIRMWARE)}")
    drive = drive or ("cdrom" if kind == "iso" else "usb")
    if drive not in DRIVES:
        raise PibError(f"unknown drive {drive!r}", reason=Reason.USAGE, hint=f"use one of: {', '.join(DRIVES)}")
    argv = media_argv(find_qemu(qemu), medium, drive=drive, firmware=firmware, memory=memory,
                      ovmf=find_ovmf(ovmf) if firmware == "uefi" else None)
    return watch(argv, log_dir / f"boot-{stamp}-{kind}-{drive}-{firmware}.log", marker=marker, timeout=timeout,
                 fail_lines=fail_lines, cancel=cancel)


def watch(
    argv: Sequence[str],
    log_path: Path,
    *,
    marker: str,
    timeout: float,
    fail_lines: Sequence[str] = FAIL_LINES,
    cancel: threading.Event | None = None,
) -> BootResult:
    """Run QEMU until the marker line, a failure line, its exit or the time-out; the console goes to log_path."""
    log_path.unlink(missing_ok=True)  # one console log per boot of a stamp, not an ever-growing one
    outcome = "exited"

    def seen(line: str) -> bool:
        nonlocal outcome
        if marker in line:
            outcome = "marker"
            return True
        if any(f in line for f in fail_lines):
            outcome = "failure-line"
            return True
        return False

    with Log(log_path) as log:
        watched = run_watch(argv, until=seen, timeout=timeout, env=minimal_env(), log=log,
                            cancel=cancel, reason=Reason.BOOT)
    if watched.timed_out:
        outcome = "timeout"
    return BootResult(
        passed=outcome == "marker",
        seconds=watched.seconds,
        marker_line=_clean(watched.matched) if watched.matched is not None else None,
        log_path=log_path,
        outcome=outcome,
    )


def _clean(line: str) -> str:
    """The marker line without the terminal control sequences the console may put before it."""
    for token in ("PIB-BOOT", *FAIL_LINES):
        i = line.find(token)
        if i > 0:
            return line[i:].strip()
    return line.strip()


def locate(output_dir: Path, stamp: str | None = None, *, reason: Reason = Reason.BOOT) -> Platform:
    """The kernel and boot archive of `output/platform-<stamp>` (default: platform-latest).

    The image's build.json names them; without one, the conventional names are used.
    """
    pdir = output_dir / (f"platform-{stamp}" if stamp else "platform-latest")
    if not pdir.is_dir():
        raise PibError(
            f"no built platform at {pdir}",
            reason=reason,
            hint="run pib build first" if stamp is None else f"pib build has not produced {stamp}; see {output_dir}",
        )
    real = pdir.resolve()
    name = real.name
    found_stamp = name[len("platform-"):] if name.startswith("platform-") else name
    kernel, archive = _from_build_json(real)
    kernel = kernel or _first(real, ("kernel", "vmlinuz", "boot/vmlinuz"))
    archive = archive or _first(real, ("boot_archive", "boot_archive.zst", "boot_archive.gz", "initrd"))
    if kernel is None or archive is None:
        raise PibError(
            f"{real} has no {'kernel' if kernel is None else 'boot archive'}",
            reason=reason,
            hint="the image has no kernel configured ([image] kernel in pib.toml) or the build did not finish",
        )
    return Platform(found_stamp, kernel, archive)


def _from_build_json(pdir: Path) -> tuple[Path | None, Path | None]:
    try:
        doc = json.loads((pdir / "build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    image = doc.get("image") if isinstance(doc, dict) else None
    src = image if isinstance(image, dict) else doc if isinstance(doc, dict) else {}

    def one(*keys: str) -> Path | None:
        for k in keys:
            v = src.get(k)
            if isinstance(v, list) and v:
                v = v[0]
            names = [v.get(f) for f in ("file", "name")] if isinstance(v, dict) else [v]
            for n in names:
                if isinstance(n, str) and n and "/" not in n and (pdir / n).is_file():
                    return pdir / n
        return None

    return one("kernel", "kernels"), one("boot_archive", "archive")


def _first(pdir: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (pdir / n).is_file():
            return pdir / n
    return None


def boot_configured(cfg: Config, platform: Platform, *, memory: int | None = None,
                    timeout: float | None = None) -> BootResult:
    """Boot with the workspace's [boot] settings (`pib boot` and `pib build --boot`)."""
    bc = cfg.boot
    return boot(
        platform,
        log_dir=cfg.workspace.log_dir,
        marker=bc.marker,
        memory=memory or bc.memory,
        timeout=timeout or bc.timeout,
        append=bc.append,
        qemu=bc.qemu,
    )


def boot_medium_configured(cfg: Config, medium: Path, *, stamp: str, kind: str, firmware: str,
                           drive: str | None = None, memory: int | None = None,
                           timeout: float | None = None) -> BootResult:
    """Boot a medium with the workspace's [boot] settings (`pib boot --media`)."""
    bc = cfg.boot
    return boot_medium(
        medium,
        stamp=stamp,
        kind=kind,
        firmware=firmware,
        drive=drive,
        log_dir=cfg.workspace.log_dir,
        marker=bc.marker,
        memory=memory or bc.memory,
        timeout=timeout or bc.timeout,
        qemu=bc.qemu,
        ovmf=bc.ovmf,
    )
