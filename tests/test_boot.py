"""pib boot: QEMU argv, locating a platform, watching output; real QEMU boots of a tiny initramfs."""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import pytest

from pib.errors import PibError, Reason
from pib.image import boot as bootmod
from pib.image.boot import Platform, boot, locate, qemu_argv
from pib.image.cpio import Writer
from pib.run import Log, run_watch

REPO = Path(__file__).resolve().parent.parent
KERNEL_COMPONENT = REPO / "examples" / "platform" / "components" / "kernel"


# --- run_watch ----------------------------------------------------------------


def test_run_watch_stops_at_the_matching_line(tmp_path: Path) -> None:
    script = "echo one; echo 'two MARK'; sleep 30; echo three"
    start = time.monotonic()
    with Log(tmp_path / "w.log") as log:
        w = run_watch(["sh", "-c", script], until=lambda line: "MARK" in line, timeout=20, log=log)
    assert w.matched == "two MARK"
    assert w.returncode is None and not w.timed_out
    assert time.monotonic() - start < 20  # the sleep was cut short by the kill
    lines = (tmp_path / "w.log").read_text().splitlines()
    assert "one" in lines and "two MARK" in lines and "three" not in lines


def test_run_watch_reports_exit_without_match() -> None:
    w = run_watch(["sh", "-c", "echo hello; exit 3"], until=lambda line: "MARK" in line, timeout=20)
    assert w.matched is None and w.returncode == 3 and not w.timed_out


def test_run_watch_times_out_and_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    w = run_watch(["sh", "-c", script], until=lambda line: False, timeout=1)
    assert w.timed_out and w.matched is None and w.returncode is None
    child = int(pidfile.read_text())
    for _ in range(50):  # the background sleep was in the killed group
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the child of the timed-out process is still running")


def test_run_watch_missing_program_is_an_error() -> None:
    with pytest.raises(PibError) as ei:
        run_watch(["/nonexistent/qemu"], until=lambda line: True, timeout=1, reason=Reason.BOOT)
    assert ei.value.reason is Reason.BOOT


# --- argv, errors, locate -----------------------------------------------------


def test_qemu_argv_uses_tcg_and_adds_the_test_flag(tmp_path: Path) -> None:
    argv = qemu_argv("qemu", tmp_path / "k", tmp_path / "i", memory=128, append="console=ttyS0 quiet")
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "128"
    assert "-no-reboot" in argv and "-nographic" in argv
    assert argv[argv.index("-append") + 1] == "console=ttyS0 quiet pib.test=1"
    again = qemu_argv("qemu", tmp_path / "k", tmp_path / "i", memory=128, append="pib.test=1 console=ttyS0")
    assert again[again.index("-append") + 1].split().count("pib.test=1") == 1


def test_boot_without_built_files_is_a_boot_error(tmp_path: Path) -> None:
    with pytest.raises(PibError) as ei:
        boot(Platform("s", tmp_path / "nokernel", tmp_path / "noarchive"), log_dir=tmp_path)
    assert ei.value.reason is Reason.BOOT


def test_missing_qemu_is_a_boot_error(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"k")
    (tmp_path / "i").write_bytes(b"i")
    with pytest.raises(PibError) as ei:
        boot(Platform("s", tmp_path / "k", tmp_path / "i"), log_dir=tmp_path, qemu="no-such-qemu-binary")
    assert ei.value.reason is Reason.BOOT


def _platform_dir(out: Path, stamp: str, *, with_json: bool) -> Path:
    pdir = out / f"platform-{stamp}"
    pdir.mkdir(parents=True)
    (pdir / "vmlinuz").write_bytes(b"kernel")
    (pdir / "boot_archive").write_bytes(b"archive")
    if with_json:
        doc = {"image": {"boot_archive": {"file": "boot_archive"},
                         "kernels": [{"name": "vmlinuz", "component": "kernel", "path": "boot/vmlinuz"}]}}
        (pdir / "build.json").write_text(json.dumps(doc))
    return pdir


def test_locate_follows_platform_latest(tmp_path: Path) -> None:
    _platform_dir(tmp_path, "20260101T000000Z", with_json=False)
    newer = _platform_dir(tmp_path, "20260102T000000Z", with_json=True)
    (tmp_path / "platform-latest").symlink_to(newer.name)
    p = locate(tmp_path)
    assert p.stamp == "20260102T000000Z"
    assert p.kernel == newer / "vmlinuz" and p.boot_archive == newer / "boot_archive"
    older = locate(tmp_path, "20260101T000000Z")
    assert older.stamp == "20260101T000000Z" and older.kernel.parent.name == "platform-20260101T000000Z"


def test_locate_without_a_build_is_a_boot_error(tmp_path: Path) -> None:
    with pytest.raises(PibError) as ei:
        locate(tmp_path)
    assert ei.value.reason is Reason.BOOT
    (tmp_path / "platform-x").mkdir()
    with pytest.raises(PibError) as ei:
        locate(tmp_path, "x")  # a directory with neither kernel nor archive
    assert ei.value.reason is Reason.BOOT


def test_failed_result_check_raises_with_the_console_tail(tmp_path: Path) -> None:
    log = tmp_path / "boot-x.log"
    log.write_text("booting\nKernel panic - not syncing: nothing\n")
    res = bootmod.BootResult(False, 3.0, "Kernel panic - not syncing: nothing", log, "failure-line")
    with pytest.raises(PibError) as ei:
        res.check()
    assert ei.value.reason is Reason.BOOT and "Kernel panic" in ei.value.detail


# --- real QEMU -----------------------------------------------------------------


def _initramfs(path: Path, init_script: str) -> Path:
    """A gzip'd newc archive: static busybox and a shell-script /init."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    with gzip.open(path, "wb", compresslevel=1) as sink:
        w = Writer(sink)
        ino = iter(range(1, 1000))
        for d in ("bin", "dev", "proc", "sys"):
            w.directory(d, ino=next(ino), perm=0o755, uid=0, gid=0, mtime=0)
        w.file("bin/busybox", Path(busybox).read_bytes(), ino=next(ino), perm=0o755, uid=0, gid=0, mtime=0)
        w.symlink("bin/sh", "busybox", ino=next(ino), uid=0, gid=0, mtime=0)
        w.file("init", ("#!/bin/sh\n" + init_script).encode(), ino=next(ino), perm=0o755, uid=0, gid=0, mtime=0)
        w.finish()
    return path


@pytest.mark.integration
def test_boot_passes_on_the_marker_and_keeps_the_console_log(kernel: Path, tmp_path: Path) -> None:
    archive = _initramfs(tmp_path / "ok.gz", """\
/bin/busybox mount -t proc proc /proc
echo "PIB-BOOT-OK buildstamp=test core=c extra=e kernel=k cmdline=$(/bin/busybox cat /proc/cmdline)"
/bin/busybox sleep 600
""")
    res = boot(Platform("t1", kernel, archive), log_dir=tmp_path / "log", timeout=90)
    assert res.passed and res.outcome == "marker"
    assert res.marker_line is not None and res.marker_line.startswith("PIB-BOOT-OK buildstamp=test")
    assert "pib.test=1" in res.marker_line  # the platform sees it is being tested
    assert 0 < res.seconds < 90  # stopped at the marker, not after the guest's sleep
    assert res.log_path == tmp_path / "log" / "boot-t1.log"
    assert "PIB-BOOT-OK" in res.log_path.read_text(errors="replace")


@pytest.mark.integration
def test_boot_fails_fast_on_a_failure_line(kernel: Path, tmp_path: Path) -> None:
    archive = _initramfs(tmp_path / "fail.gz", "echo PIB-BOOT-FAIL reason=test\n/bin/busybox sleep 600\n")
    res = boot(Platform("t2", kernel, archive), log_dir=tmp_path, timeout=90)
    assert not res.passed and res.outcome == "failure-line"
    assert res.marker_line == "PIB-BOOT-FAIL reason=test"
    with pytest.raises(PibError) as ei:
        res.check()
    assert ei.value.reason is Reason.BOOT


@pytest.mark.integration
def test_boot_times_out_without_a_marker(kernel: Path, tmp_path: Path) -> None:
    archive = _initramfs(tmp_path / "silent.gz", "/bin/busybox sleep 600\n")
    res = boot(Platform("t3", kernel, archive), log_dir=tmp_path, timeout=8)
    assert not res.passed and res.outcome == "timeout" and res.marker_line is None
    assert 8 <= res.seconds < 20


@pytest.mark.integration
def test_boot_reports_a_guest_that_powers_off_before_the_marker(kernel: Path, tmp_path: Path) -> None:
    archive = _initramfs(tmp_path / "off.gz", "echo going down\n/bin/busybox poweroff -f\n")
    res = boot(Platform("t4", kernel, archive), log_dir=tmp_path, timeout=90)
    assert not res.passed and res.outcome == "exited"
