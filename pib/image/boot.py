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
    log_path = log_dir / f"boot-{platform.stamp}.log"
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


def locate(output_dir: Path, stamp: str | None = None) -> Platform:
    """The kernel and boot archive of `output/platform-<stamp>` (default: platform-latest).

    The image's build.json names them; without one, the conventional names are used.
    """
    pdir = output_dir / (f"platform-{stamp}" if stamp else "platform-latest")
    if not pdir.is_dir():
        raise PibError(
            f"no built platform at {pdir}",
            reason=Reason.BOOT,
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
            reason=Reason.BOOT,
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
