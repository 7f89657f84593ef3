"""Platform image assembly: resolution, outputs, budget, reproducibility, atomicity."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from pib.config.types import ImageSpec, KernelSpec, Overlay
from pib.errors import PibError, Reason
from pib.image.manifest import diff
from pib.image.resolve import ImageManifestError, ProtoArea, SizeBudgetError, resolve, size_report
from pib.image.write import assemble, buildstamp, stamp_epoch
from pib.run import run

STAMP = "20260101T120000Z"

BASE_MANIFEST = """\
d etc 0755 root sys
d bin 0755 root bin
d var 0755 root sys
d var/empty 0700 daemon daemon
f etc/passwd 0644 root sys
f etc/group 0644 root sys
f etc/motd 0644 root sys
f bin/sh 0555 root bin
h bin/ash=bin/sh
s bin/bash=sh
"""

EXTRA_MANIFEST = """\
d usr 0755 root sys
d usr/lib 0755 root bin
f usr/lib/libbig.so 0755 root bin
f usr/lib/libsmall.so 0755 root bin
s usr/lib/libbig.so.1=libbig.so
"""


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


@pytest.fixture
def ws(tmp_path: Path) -> dict[str, Path]:
    """Two proto areas with manifests, an overlay, a kernel."""
    base = tmp_path / "proto.base"
    extra = tmp_path / "proto.extra"
    ov = tmp_path / "overlay"
    _write(base / "etc/passwd", "root:x:0:0::/root:/bin/sh\ndaemon:x:1:1::/:\nbin:x:2:2::/:\n")
    _write(base / "etc/group", "root::0:\ndaemon::1:\nbin::2:\nsys::3:\n")
    _write(base / "etc/motd", "from base\n")
    _write(base / "bin/sh", b"\x7fELF" + bytes(3000))
    _write(base / "boot/vmlinuz", b"KERNEL" * 100)
    _write(extra / "usr/lib/libbig.so", os.urandom(200_000))
    _write(extra / "usr/lib/libsmall.so", b"small")
    _write(extra / "etc/motd", "from extra\n")
    _write(ov / "etc/motd", "from overlay\n")
    _write(tmp_path / "base.manifest", BASE_MANIFEST)
    _write(tmp_path / "extra.manifest", EXTRA_MANIFEST)
    return {"root": tmp_path, "base": base, "extra": extra, "overlay": ov,
            "base.manifest": tmp_path / "base.manifest", "extra.manifest": tmp_path / "extra.manifest"}


def _areas(ws: dict[str, Path]) -> list[ProtoArea]:
    return [ProtoArea("base", ws["base"], ws["base.manifest"]), ProtoArea("extra", ws["extra"], ws["extra.manifest"])]


def _spec(ws: dict[str, Path], **kw: object) -> ImageSpec:
    args: dict[str, object] = {
        "kernels": (KernelSpec("base", "boot/vmlinuz", "vmlinuz"),),
        "overlays": (Overlay("generic", ws["overlay"]),),
    }
    args.update(kw)
    return ImageSpec(**args)  # type: ignore[arg-type]


def _unpack(archive: Path, dest: Path) -> str:
    raw = dest.with_suffix(".cpio")
    run(["zstd", "-q", "-d", "-f", "-o", raw, archive])
    dest.mkdir()
    run(["cpio", "-i", "-d", "--no-absolute-filenames", "-F", raw], cwd=dest)
    return run(["cpio", "-t", "-v", "--numeric-uid-gid", "-F", raw], capture=True).stdout


def test_overlay_takes_precedence_then_config_order(ws: dict[str, Path]) -> None:
    res = resolve(_spec(ws), _areas(ws))
    by = {r.entry.path: r for r in res.entries}
    assert by["etc/motd"].origin == "generic"
    assert by["etc/motd"].source == str(ws["overlay"] / "etc/motd")
    no_overlay = resolve(_spec(ws, overlays=()), _areas(ws))
    assert {r.entry.path: r.origin for r in no_overlay.entries}["etc/motd"] == "base"
    swapped = resolve(_spec(ws, overlays=()), list(reversed(_areas(ws))))
    assert {r.entry.path: r.origin for r in swapped.entries}["etc/motd"] == "extra"
    paths = [r.entry.path for r in res.entries]
    assert paths == sorted(paths, key=str.encode)


def test_overlay_manifest_joins_the_union(ws: dict[str, Path]) -> None:
    _write(ws["overlay"] / "etc/issue", "welcome\n")
    man = ws["root"] / "overlay.manifest"
    _write(man, "f etc/issue 0644 root sys\nd etc 0755 root sys\n")
    res = resolve(_spec(ws, overlays=(Overlay("generic", ws["overlay"], man),)), _areas(ws))
    assert {r.entry.path: r.origin for r in res.entries}["etc/issue"] == "generic"


def test_all_missing_files_reported_at_once(ws: dict[str, Path]) -> None:
    (ws["extra"] / "usr/lib/libsmall.so").unlink()
    (ws["base"] / "bin/sh").unlink()
    with pytest.raises(ImageManifestError) as exc:
        resolve(_spec(ws), _areas(ws))
    err = exc.value
    assert err.reason is Reason.MANIFEST
    missing = [(p.path, p.where.path, p.where.line) for p in err.problems if p.kind == "missing"]
    assert missing == [("bin/sh", str(ws["base.manifest"]), 8),
                       ("usr/lib/libsmall.so", str(ws["extra.manifest"]), 4)]
    searched = next(p for p in err.problems if p.path == "bin/sh").message
    for place in (ws["overlay"], ws["base"], ws["extra"]):
        assert str(place) in searched


def test_unknown_user_and_group(ws: dict[str, Path]) -> None:
    _write(ws["extra.manifest"], EXTRA_MANIFEST + "d opt 0755 nobody sys\nd srv 0755 root staff\nd srv2 0755 nobody staff\n")
    with pytest.raises(ImageManifestError) as exc:
        resolve(_spec(ws), _areas(ws))
    got = sorted((p.kind, p.path, p.where.line) for p in exc.value.problems)
    assert got == [("group", "staff", 7), ("user", "nobody", 6)]  # each unknown name once, at first use


def test_numeric_owner_needs_no_lookup(ws: dict[str, Path]) -> None:
    _write(ws["extra.manifest"], EXTRA_MANIFEST + "d opt 0755 4242 4343\n")
    res = resolve(_spec(ws), _areas(ws))
    opt = next(r for r in res.entries if r.entry.path == "opt")
    assert (opt.uid, opt.gid) == (4242, 4343)


def test_owners_come_from_the_images_passwd(ws: dict[str, Path]) -> None:
    res = resolve(_spec(ws), _areas(ws))
    by = {r.entry.path: r for r in res.entries}
    assert (by["var/empty"].uid, by["var/empty"].gid) == (1, 1)
    assert (by["bin/sh"].uid, by["bin/sh"].gid) == (0, 2)


def test_missing_parent_and_bad_hard_links(ws: dict[str, Path]) -> None:
    _write(ws["extra.manifest"], EXTRA_MANIFEST + "f opt/x 0644 root root\nh bin/zsh=bin/nothere\nh bin/dirlink=etc\n")
    with pytest.raises(ImageManifestError) as exc:
        resolve(_spec(ws), _areas(ws))
    kinds = sorted((p.kind, p.where.line) for p in exc.value.problems)
    assert ("parent", 6) in kinds
    assert ("hardlink", 7) in kinds and ("hardlink", 8) in kinds


def test_parent_that_is_a_symlink_is_an_error(ws: dict[str, Path]) -> None:
    _write(ws["extra.manifest"], EXTRA_MANIFEST + "f usr/lib/libbig.so.1/x 0644 root root\n")
    with pytest.raises(ImageManifestError) as exc:
        resolve(_spec(ws), _areas(ws))
    assert "parent" in [p.kind for p in exc.value.problems if p.path == "usr/lib/libbig.so.1/x"]


def test_dangling_symlink_is_a_warning(ws: dict[str, Path]) -> None:
    _write(ws["extra.manifest"], EXTRA_MANIFEST + "s usr/lib/dangling=../../nowhere\ns usr/bin=/usr/lib\n")
    res = resolve(_spec(ws), _areas(ws))
    assert len(res.warnings) == 1 and "usr/lib/dangling" in res.warnings[0]


def test_release_file_may_not_be_listed(ws: dict[str, Path]) -> None:
    _write(ws["extra.manifest"], EXTRA_MANIFEST + "f etc/pib-release 0444 root root\n")
    with pytest.raises(ImageManifestError) as exc:
        resolve(_spec(ws), _areas(ws))
    assert [p.kind for p in exc.value.problems] == ["release"]


@pytest.mark.integration
def test_assemble_writes_every_output(ws: dict[str, Path]) -> None:
    out = ws["root"] / "output"
    info = {"components": {"base": {"key": "k1", "restored": False}}, "host": "h"}
    r = assemble(_spec(ws), _areas(ws), out, STAMP, info, component_keys={"base": "k1", "illumos-extra": "k2"})
    pdir = out / f"platform-{STAMP}"
    assert r.dir == pdir
    assert sorted(p.name for p in pdir.iterdir()) == [
        "boot_archive", "boot_archive.hash", "boot_archive.manifest", "build.json", "vmlinuz"]
    assert (pdir / "vmlinuz").read_bytes() == (ws["base"] / "boot/vmlinuz").read_bytes()
    digest = hashlib.sha256((pdir / "boot_archive").read_bytes()).hexdigest()
    assert (pdir / "boot_archive.hash").read_text().strip() == digest == r.hash
    assert os.readlink(out / "platform-latest") == f"platform-{STAMP}"
    assert (out / f"platform-{STAMP}.tgz").is_file()
    facts = json.loads((pdir / "build.json").read_text())
    assert facts["components"] == info["components"] and facts["host"] == "h"
    assert facts["image"]["boot_archive"]["sha256"] == digest
    assert facts["image"]["kernels"][0]["name"] == "vmlinuz"

    listing = _unpack(pdir / "boot_archive", ws["root"] / "unpacked")
    root = ws["root"] / "unpacked"
    assert (root / "etc/motd").read_text() == "from overlay\n"
    assert (root / "etc/pib-release").read_text() == (
        f"PIB_BUILDSTAMP={STAMP}\nPIB_KEY_BASE=k1\nPIB_KEY_ILLUMOS_EXTRA=k2\n")
    rows = {ln.split()[8]: ln.split() for ln in listing.splitlines()}
    assert rows["etc/pib-release"][0] == "-r--r--r--" and rows["etc/pib-release"][2:4] == ["0", "0"]
    assert rows["var/empty"][0] == "drwx------" and rows["var/empty"][2:4] == ["1", "1"]
    assert rows["bin/sh"][0] == "-r-xr-xr-x" and rows["bin/sh"][1] == "2"  # two names
    assert os.lstat(root / "bin/sh").st_ino == os.lstat(root / "bin/ash").st_ino
    assert os.readlink(root / "bin/bash") == "sh"

    manifest_lines = (pdir / "boot_archive.manifest").read_text().splitlines()
    motd = next(ln for ln in manifest_lines if ln.startswith("etc/motd "))
    sha_motd = hashlib.sha256(b"from overlay\n").hexdigest()
    assert motd.split() == ["etc/motd", "f", "0644", "root:sys", "0:3", "13", sha_motd]

    with tarfile.open(out / f"platform-{STAMP}.tgz") as tar:
        names = tar.getnames()
        member = tar.extractfile(f"platform-{STAMP}/boot_archive")
        assert member is not None and hashlib.sha256(member.read()).hexdigest() == digest
    assert f"platform-{STAMP}/build.json" not in names  # how the build went stays beside the tarball
    # The real gzip and tar accept it too (stored and deflated stretches in one member).
    run(["gzip", "-t", out / f"platform-{STAMP}.tgz"])
    listed = run(["tar", "-tzf", out / f"platform-{STAMP}.tgz"], capture=True).stdout.split()
    assert f"platform-{STAMP}/boot_archive" in listed and len(listed) == len(names) == 5
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.integration
@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_reproducible_bit_for_bit(ws: dict[str, Path], compression: str) -> None:
    info = {"components": {"base": "k1"}}
    spec = _spec(ws, compression=compression)
    a = assemble(spec, _areas(ws), ws["root"] / "out1", STAMP, info, component_keys={"base": "k1"})
    # Newer mtimes and a different output directory must not change a byte.
    for p in (ws["base"] / "etc/motd", ws["overlay"] / "etc/motd", ws["extra"] / "usr/lib/libbig.so"):
        os.utime(p, (time.time() + 1000, time.time() + 1000))
    # A second build that went differently (restored, other timings) still gives the same bytes.
    info2 = {**info, "build_seconds": 12.5, "actions": {"base": "restored"}}
    b = assemble(spec, _areas(ws), ws["root"] / "out2", STAMP, info2, component_keys={"base": "k1"})
    assert a.boot_archive.read_bytes() == b.boot_archive.read_bytes()
    assert a.tarball.read_bytes() == b.tarball.read_bytes()
    assert a.hash == b.hash
    if compression == "gzip":
        head = a.boot_archive.read_bytes()[:10]
        assert head[:2] == b"\x1f\x8b" and head[4:8] == b"\0\0\0\0" and not head[3] & 0x08  # mtime 0, no name
        assert gzip.decompress(a.boot_archive.read_bytes()).endswith(b"\0")
    tgz = a.tarball.read_bytes()
    assert tgz[4:8] == b"\0\0\0\0" and not tgz[3] & 0x08
    c = assemble(spec, _areas(ws), ws["root"] / "out3", "20260101T120001Z", info, component_keys={"base": "k1"})
    assert c.hash != a.hash  # the stamp is inside (release file, mtimes)


def test_size_budget(ws: dict[str, Path]) -> None:
    report = size_report(_spec(ws), _areas(ws))
    assert [c.name for c in report.components][:2] == ["extra", "base"]
    extra = report.components[0]
    assert extra.largest[0] == ("usr/lib/libbig.so", 200_000)
    assert report.total == sum(c.bytes for c in report.components)
    assert "usr/lib/libbig.so" in report.format()
    out = ws["root"] / "output"
    with pytest.raises(SizeBudgetError) as exc:
        assemble(_spec(ws, max_size=10_000), _areas(ws), out, STAMP, {})
    assert exc.value.reason is Reason.IMAGE
    assert exc.value.report.archive_size is not None and exc.value.report.archive_size > 10_000
    assert exc.value.report.components[0].name == "extra"
    assert not out.exists() or list(out.iterdir()) == []
    ok = assemble(_spec(ws, max_size=10_000_000), _areas(ws), out, STAMP, {})
    assert ok.size <= 10_000_000


def test_size_report_before_everything_is_built(ws: dict[str, Path]) -> None:
    (ws["extra"] / "usr/lib/libbig.so").unlink()
    report = size_report(_spec(ws), _areas(ws))
    assert report.missing == ("usr/lib/libbig.so",)
    assert report.components[0].name == "base"
    assert report.to_json()["missing"] == ["usr/lib/libbig.so"]


@pytest.mark.integration
def test_manifest_diff_between_images(ws: dict[str, Path]) -> None:
    a = assemble(_spec(ws), _areas(ws), ws["root"] / "o1", STAMP, {})
    _write(ws["overlay"] / "etc/motd", "changed\n")
    _write(ws["base.manifest"], BASE_MANIFEST.replace("f bin/sh 0555 root bin", "f bin/sh 0755 root bin")
           .replace("s bin/bash=sh\n", "") + "d tmp 1777 root sys\n")
    b = assemble(_spec(ws), _areas(ws), ws["root"] / "o2", STAMP, {})
    changes = {c.path: c for c in diff(a.dir, b.dir)}
    assert changes["etc/motd"].fields == ("content",)
    assert changes["bin/sh"].fields == ("mode",)
    assert changes["bin/ash"].fields == ("mode",)  # a hard link follows its file
    assert changes["bin/bash"].status == "removed"
    assert changes["tmp"].status == "added"
    assert "etc/passwd" not in changes


@pytest.mark.integration
def test_archive_command_gets_a_staged_tree(ws: dict[str, Path]) -> None:
    cmd = ("tar", "--sort=name", "-C", "{staged}", "-cf", "{output}", ".")
    r = assemble(_spec(ws, archive_command=cmd), _areas(ws), ws["root"] / "out", STAMP, {})
    with tarfile.open(r.boot_archive) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    assert members["bin/sh"].mode == 0o555
    assert members["var/empty"].mode == 0o700
    assert members["bin/ash"].islnk() or members["bin/sh"].islnk()
    assert members["bin/bash"].issym()
    assert r.hash == hashlib.sha256(r.boot_archive.read_bytes()).hexdigest()
    assert not [p for p in (ws["root"] / "out").iterdir() if p.name.startswith(".")]


@pytest.mark.integration
def test_failed_run_leaves_no_partial_output(ws: dict[str, Path]) -> None:
    out = ws["root"] / "out"
    with pytest.raises(PibError) as exc:
        assemble(_spec(ws, archive_command=("false",)), _areas(ws), out, STAMP, {})
    assert exc.value.reason is Reason.IMAGE
    assert list(out.iterdir()) == []
    with pytest.raises(PibError) as exc2:
        assemble(_spec(ws, kernels=(KernelSpec("base", "boot/nope"),)), _areas(ws), out, STAMP, {})
    assert exc2.value.reason is Reason.IMAGE
    assert list(out.iterdir()) == []


@pytest.mark.integration
def test_killed_run_leaves_no_image_and_is_cleaned_later(ws: dict[str, Path]) -> None:
    out = ws["root"] / "out"
    pidfile = ws["root"] / "cmd.pid"
    script = ws["root"] / "slow_image.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        "from pib.config.types import ImageSpec\nfrom pib.image.resolve import ProtoArea\nfrom pib.image.write import assemble\n"
        f"areas = [ProtoArea('base', Path({str(ws['base'])!r}), Path({str(ws['base.manifest'])!r}))]\n"
        "child = 'import os, sys, time; open(sys.argv[1], \"w\").write(str(os.getpid())); time.sleep(60)'\n"
        f"cmd = (sys.executable, '-c', child, {str(pidfile)!r})\n"
        f"assemble(ImageSpec(archive_command=cmd), areas, Path({str(out)!r}), {STAMP!r}, {{}})\n"
    )
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, str(script)], cwd=repo, env={**os.environ, "PYTHONPATH": repo})
    try:
        for _ in range(300):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.05)
        assert pidfile.read_text()
        assert [p.name for p in out.iterdir() if p.name.startswith(".pib-tmp-")]  # work in progress
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pidfile.exists() and pidfile.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert not [p for p in out.iterdir() if not p.name.startswith(".pib-tmp-")]  # no image, tarball, link
    r = assemble(_spec(ws), _areas(ws), out, STAMP, {})
    assert sorted(p.name for p in out.iterdir()) == sorted([r.dir.name, r.tarball.name, "platform-latest"])


@pytest.mark.integration
def test_rerun_with_same_stamp_replaces_image(ws: dict[str, Path]) -> None:
    out = ws["root"] / "out"
    assemble(_spec(ws), _areas(ws), out, STAMP, {})
    _write(ws["overlay"] / "etc/motd", "second\n")
    r = assemble(_spec(ws), _areas(ws), out, STAMP, {})
    assert "etc/motd f 0644 root:sys 0:3 7 " in (r.dir / "boot_archive.manifest").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted([r.dir.name, r.tarball.name, "platform-latest"])


@pytest.mark.integration
def test_runs_without_privileges(tmp_path: Path) -> None:
    """No capabilities at all (no chown, no DAC override), yet owners land in the archive."""
    _write(tmp_path / "proto/etc/passwd", "root:x:0:0::/:\nsvc:x:1234:1234::/:\n")
    _write(tmp_path / "proto/etc/group", "root::0:\nsys::3:\nsvc::1234:\n")
    _write(tmp_path / "proto/bin/x", "x")
    _write(tmp_path / "m", "d etc 0755 root sys\nd bin 0755 root root\nf etc/passwd 0644 root sys\n"
           "f etc/group 0644 root sys\nf bin/x 4755 svc svc\n")
    script = tmp_path / "run_image.py"
    script.write_text(
        "from pathlib import Path\nfrom pib.config.types import ImageSpec\nfrom pib.image.resolve import ProtoArea\nfrom pib.image.write import assemble\n"
        f"r = assemble(ImageSpec(), [ProtoArea('p', Path('{tmp_path}/proto'), Path('{tmp_path}/m'))], "
        f"Path('{tmp_path}/out'), {STAMP!r}, {{}})\n"
        "status = open('/proc/self/status').read()\n"
        "print(r.hash, [ln.split()[1] for ln in status.splitlines() if ln.startswith('CapEff')][0])\n"
    )
    repo = str(Path(__file__).resolve().parents[1])
    argv: list[str] = [sys.executable, str(script)]
    if os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", *argv]
    res = run(argv, cwd=Path(repo), env={"PATH": "/usr/bin:/bin", "PYTHONPATH": repo}, capture=True)
    digest, caps = res.stdout.split()
    assert len(digest) == 64 and int(caps, 16) == 0
    listing = _unpack(tmp_path / "out" / f"platform-{STAMP}" / "boot_archive", tmp_path / "unpacked")
    row = next(ln.split() for ln in listing.splitlines() if ln.endswith(" bin/x"))
    assert row[0] == "-rwsr-xr-x" and row[2:4] == ["1234", "1234"]


def test_buildstamp_from_source_date_epoch() -> None:
    assert buildstamp({"SOURCE_DATE_EPOCH": "1767268800"}) == "20260101T120000Z"
    assert stamp_epoch("20260101T120000Z") == 1767268800
    assert buildstamp({}, now=0) == "19700101T000000Z"
    with pytest.raises(PibError) as exc:
        buildstamp({"SOURCE_DATE_EPOCH": "yesterday"})
    assert exc.value.reason is Reason.CONFIG
    with pytest.raises(PibError) as exc2:
        stamp_epoch("2026-01-01")
    assert exc2.value.reason is Reason.IMAGE


@pytest.mark.parametrize("bad", [{"release_file": "/etc/pib-release"}, {"release_file": "etc/../x"}])
def test_bad_release_file_setting(ws: dict[str, Path], bad: dict[str, str]) -> None:
    with pytest.raises(PibError) as exc:
        resolve(_spec(ws, **bad), _areas(ws))
    assert exc.value.reason is Reason.MANIFEST


def test_release_file_can_be_moved_or_disabled(ws: dict[str, Path]) -> None:
    moved = resolve(_spec(ws, release_file="var/release"), _areas(ws), buildstamp=STAMP)
    by = {r.entry.path: r for r in moved.entries}
    assert by["var/release"].content == f"PIB_BUILDSTAMP={STAMP}\n".encode()
    assert "etc/pib-release" not in by
    off = resolve(_spec(ws, release_file=""), _areas(ws))
    assert not [r for r in off.entries if r.origin == "pib"]


def test_kernel_path_may_not_escape(ws: dict[str, Path]) -> None:
    with pytest.raises(PibError) as exc:
        assemble(_spec(ws, kernels=(KernelSpec("base", "../proto.extra/usr/lib/libsmall.so"),)), _areas(ws),
                 ws["root"] / "out", STAMP, {})
    assert exc.value.reason is Reason.MANIFEST
    assert list((ws["root"] / "out").iterdir()) == []


# --- the kernel unpacks what assemble() writes ------------------------------------------

@pytest.mark.integration
def test_linux_boots_the_assembled_archive(kernel: Path, tmp_path: Path) -> None:
    """Real kernel, real initramfs unpacking of the zstd archive (gzip ones boot in test_boot.py):
    owners, modes, hard links and the release file arrive intact."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    proto = tmp_path / "proto"
    _write(proto / "bin/busybox", Path(busybox).read_bytes())
    _write(proto / "etc/passwd", "root:x:0:0::/:/bin/sh\nsvc:x:1234:4321::/:\n")
    _write(proto / "etc/group", "root::0:\nsvc::4321:\n")
    _write(proto / "srv/data", "payload\n")
    _write(proto / "init", """#!/bin/sh
/bin/busybox mount -t proc proc /proc
. /etc/pib-release
S="/bin/busybox stat -c"
echo "PIB-BOOT-OK stamp=$PIB_BUILDSTAMP key=$PIB_KEY_CORE data=$($S %u:%g:%a /srv/data)" \\
  "links=$($S %h /bin/busybox):$($S %i /bin/busybox):$($S %i /bin/bb2)" \\
  "dir=$($S %u:%g:%a /srv) rel=$($S %a /etc/pib-release) body=$(/bin/busybox cat /srv/data)"
/bin/busybox sleep 600
""")
    _write(tmp_path / "m", "d bin 0755 root root\nd etc 0755 root root\nd proc 0555 root root\n"
           "d srv 0750 svc svc\nf bin/busybox 0755 root root\nh bin/bb2=bin/busybox\ns bin/sh=busybox\n"
           "f etc/passwd 0644 root root\nf etc/group 0644 root root\nf init 0755 root root\n"
           "f srv/data 0640 svc svc\n")
    spec = ImageSpec(compression="zstd")
    res = assemble(spec, [ProtoArea("core", proto, tmp_path / "m")], tmp_path / "out", STAMP, {},
                   component_keys={"core": "c0ffee"})
    from pib.image.boot import Platform, boot

    booted = boot(Platform(STAMP, kernel, res.boot_archive), log_dir=tmp_path / "log", timeout=120)
    assert booted.passed, booted.outcome
    line = booted.marker_line or ""
    fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
    assert fields["stamp"] == STAMP and fields["key"] == "c0ffee"
    assert fields["data"] == "1234:4321:640"
    assert fields["dir"] == "1234:4321:750"
    assert fields["rel"] == "444"
    assert fields["body"] == "payload"
    nlink, ino_a, ino_b = fields["links"].split(":")
    assert nlink == "2" and ino_a == ino_b


def test_zstd_output_does_not_depend_on_the_number_of_cores() -> None:
    """The boot archive uses threads=-1 (all cores); reproducibility across machines needs this."""
    import zstandard

    data = b"".join(b"%08d some text that compresses\n" % i for i in range(400_000))
    outs = {zstandard.ZstdCompressor(level=3, threads=n, write_checksum=True).compress(data) for n in (1, 2, 3, 8)}
    assert len(outs) == 1


@pytest.mark.parametrize("threads", [0, 2])
def test_file_changing_under_the_writer_is_an_error(ws: dict[str, Path], threads: int) -> None:
    import io

    from pib.image.write import write_cpio

    res = resolve(_spec(ws), _areas(ws))
    _write(ws["extra"] / "usr/lib/libsmall.so", b"grown larger than before")
    with pytest.raises(PibError) as exc:
        write_cpio(res, io.BytesIO(), 0, read_threads=threads)
    assert exc.value.reason is Reason.IMAGE


def test_read_ahead_gives_the_same_stream(ws: dict[str, Path]) -> None:
    import io

    from pib.image.write import write_cpio

    many = ws["root"] / "proto.many"
    lines = ["d usr/share 0755 root sys"]
    for i in range(1500):  # more than the read-ahead window of batches
        _write(many / f"usr/share/f{i:04d}", f"{i}\n" * (i % 7))
        lines.append(f"f usr/share/f{i:04d} 0644 root sys")
    _write(ws["root"] / "many.manifest", "\n".join(lines) + "\n")
    res = resolve(_spec(ws), [*_areas(ws), ProtoArea("many", many, ws["root"] / "many.manifest")])
    a, b = io.BytesIO(), io.BytesIO()
    write_cpio(res, a, 0, read_threads=0)
    write_cpio(res, b, 0, read_threads=3)
    assert a.getvalue() == b.getvalue()


@pytest.mark.integration
def test_real_smartos_manifests_assemble(tmp_path: Path) -> None:
    """The three real manifests, resolved and archived against a proto area holding their files."""
    from pib.image.manifest import parse_file

    real = sorted((Path(__file__).parent / "data" / "smartos-manifests").glob("smartos-live*.manifest"))
    proto = tmp_path / "proto"
    names: set[str] = set()
    have: set[str] = set()
    for m in real:
        for e in parse_file(m).entries:
            have.add(e.path)
            if e.kind.value == "f":
                _write(proto / e.path, f"content of {e.path}\n")
            if e.kind.value in "fd":
                names.update((e.user, e.group))
    # The manifests come from a larger image: supply the parent directories they take for granted.
    parents = sorted({p for path in have for p in _ancestors(path)} - have)
    extra = tmp_path / "parents.manifest"
    _write(extra, "".join(f"d {p} 0755 root root\n" for p in parents))
    ids = {n: i for i, n in enumerate(sorted(names | {"root"}))}
    _write(proto / "etc/passwd", "".join(f"{n}:x:{i}:{i}::/:\n" for n, i in ids.items()))
    _write(proto / "etc/group", "".join(f"{n}::{i}:\n" for n, i in ids.items()))
    if "etc/passwd" not in have:
        _write(extra, extra.read_text() + "f etc/passwd 0644 root root\nf etc/group 0644 root root\n")
    areas = [ProtoArea(f"m{i}", proto, m) for i, m in enumerate(real)] + [ProtoArea("parents", proto, extra)]
    res = assemble(ImageSpec(release_file=""), areas, tmp_path / "out", STAMP, {})
    raw = tmp_path / "raw.cpio"
    run(["zstd", "-q", "-d", "-f", "-o", raw, res.boot_archive])
    listing = run(["cpio", "-t", "-F", raw], capture=True)
    assert len(listing.stdout.split()) == res.entries
    assert "usr/img/lib/64" in listing.stdout.split()
    assert res.entries == len(have | set(parents) | {"etc/passwd", "etc/group"})


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
