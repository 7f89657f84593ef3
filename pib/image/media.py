"""Bootable media from a built platform: a hybrid ISO and a GPT disk image, made without root.

The ISO (El Torito, hybrid, as GRUB's own grub-mkrescue lays it out):
  BIOS from a CD    GRUB's i386-pc-eltorito image, patched with the boot info table
  BIOS from a disk  GRUB's boot_hybrid.img in the MBR, pointing at the same image
  UEFI (CD or disk) a FAT image holding EFI/BOOT/BOOTX64.EFI, both the El Torito
                    EFI entry and a GPT partition of the hybrid image
The USB image (GPT):
  1 EFI system partition (FAT)  EFI/BOOT/BOOTX64.EFI
  2 BIOS boot partition         GRUB's core.img, loaded by boot.img in the MBR
  3 boot partition (FAT)        boot/grub/grub.cfg and platform/
Both GRUB images carry a two-line configuration that finds the medium's file
system by its UUID and reads boot/grub/grub.cfg there (serial console, kernel
command line).

File systems and partition tables are written into image files with user-space
tools (grub-mkimage, xorriso, mkfs.vfat and mtools, sfdisk); no loop device, no
root. Every time stamp is the platform's build stamp and every volume ID, serial
number and UUID is derived from the platform's files, never random: the same
platform gives the same bytes. The media go into the platform's directory under
media/ and are listed, with their SHA-256, in its build.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pib.config.types import MEDIA_KINDS, Config, MediaSpec
from pib.errors import ConfigError, PibError, Reason
from pib.fsutil import RUN_TMP, remove_stale, remove_tree, sha256_file, write_atomic
from pib.run import BASE_PATH, Log, minimal_env, run

# pib.image.boot and pib.image.write are imported where media are made: `pib build` with
# [media] make asks only whether the recorded media are current when nothing changed.

MEDIA_DIR = "media"
# The tools and the Debian packages that have them.
TOOLS = {
    "grub-mkimage": "grub-common",
    "xorriso": "xorriso",
    "mkfs.vfat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "sfdisk": "fdisk",
}
_TOOL_PATH = BASE_PATH + ":/usr/local/sbin:/usr/sbin:/sbin"  # mkfs.vfat and sfdisk live in sbin

# What a GRUB image needs from its platform directory (one parser: GRUB's own mkimage reads the rest).
PC_FILES = ("boot.img", "boot_hybrid.img", "cdboot.img", "diskboot.img", "kernel.img", "lzma_decompress.img",
            "moddep.lst")
EFI_FILES = ("kernel.img", "moddep.lst")
_MODULES = ("normal", "configfile", "search", "search_fs_uuid", "linux", "serial", "terminal", "echo", "test",
            "part_gpt", "part_msdos", "fat", "iso9660")
PC_MODULES = (*_MODULES, "biosdisk")
EFI_MODULES = (*_MODULES, "efi_gop")

SECTOR = 512
MIB = 1 << 20
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
BASIC_DATA_TYPE = "EBD0A0A2-B9E5-4433-87C0-68B99B26993C"

# GRUB's i386-pc boot sector and the first sector of core.img (include/grub/i386/pc/boot.h).
_KERNEL_SECTOR = 0x5C   # 8 bytes: LBA of core.img
_BOOT_DRIVE = 0x64      # 0xff: the drive the BIOS booted from
_DRIVE_CHECK = 0x66     # a jump that hard disks replace with two NOPs
_MBR_KEEP = 0x1B8       # from here on the MBR is the disk's own (signature, partition table)
_BLOCKLIST = SECTOR - 12  # core.img's first blocklist entry: start (8), length (2), segment (2)


class Medium(NamedTuple):
    kind: str       # iso | usb
    path: Path
    sha256: str
    size: int
    seconds: float  # to make it
    stamp: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.sha256, "size": self.size,
                "seconds": round(self.seconds, 3), "stamp": self.stamp}


class Grub(NamedTuple):
    pc: Path   # i386-pc modules and images
    efi: Path  # x86_64-efi modules


def media_spec(cfg: Config) -> MediaSpec:
    if cfg.media is None:
        raise ConfigError("this workspace has no [media] section",
                          hint='add [media] bootloader = "COMPONENT" to pib.toml (see examples/platform)')
    return cfg.media


def grub_files(cfg: Config, spec: MediaSpec) -> Grub:
    """GRUB's i386-pc and x86_64-efi directories, checked for the files the media need."""
    if spec.bootloader is not None:
        base = cfg.component(spec.bootloader).proto / spec.grub_dir
        hint = (f"build the {spec.bootloader} component (pib build {spec.bootloader}); it must install "
                f"GRUB's i386-pc and x86_64-efi directories under {spec.grub_dir} of its proto area")
    else:
        base = spec.grub_dir
        hint = "install grub-pc-bin and grub-efi-amd64-bin there, or set media.bootloader"
    grub = Grub(base / "i386-pc", base / "x86_64-efi")
    missing = [str(d / f) for d, files in ((grub.pc, PC_FILES), (grub.efi, EFI_FILES))
               for f in files if not (d / f).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise PibError(f"GRUB files missing: {missing[0]}{more}", reason=Reason.IMAGE, where=spec.where,
                       hint=hint)
    if spec.bootloader is not None:
        # A link out of the bootloader's proto area would put a host file (a key) on the media.
        top = cfg.component(spec.bootloader).proto.resolve()
        outside = [str(d / f) for d, files in ((grub.pc, PC_FILES), (grub.efi, EFI_FILES)) for f in files
                   if not (d / f).resolve().is_relative_to(top)]
        if outside:
            raise PibError(f"GRUB file {outside[0]} leads outside the proto area of {spec.bootloader}",
                           reason=Reason.IMAGE, where=spec.where, hint=f"build {spec.bootloader} again")
    return grub


def check_tools(env: dict[str, str]) -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool, path=env["PATH"]) is None})
    if missing:
        raise PibError(f"tools for making media are not installed (Debian packages: {', '.join(missing)})",
                       reason=Reason.IMAGE, hint=f"apt-get install {' '.join(missing)} (scripts/setup does)")


def media_path(pdir: Path, name: str, stamp: str, kind: str) -> Path:
    return pdir / MEDIA_DIR / (f"{name}-{stamp}.iso" if kind == "iso" else f"{name}-{stamp}-usb.img")


# --- identities -----------------------------------------------------------------------


class _Ids:
    """Volume IDs, serial numbers and UUIDs of one medium: derived from the platform, never random."""

    def __init__(self, seed: str, name: str, stamp: str, epoch: int) -> None:
        self.seed = seed
        self.epoch = epoch
        tm = time.gmtime(epoch)
        # ISO 9660 keeps the modification date to 1/100 s; GRUB names the file system by it.
        self.iso_date = time.strftime("%Y%m%d%H%M%S00", tm)
        self.iso_uuid = time.strftime("%Y-%m-%d-%H-%M-%S-00", tm)
        self.volume_id = (re.sub(r"[^A-Z0-9_]", "_", name.upper()) + "_" + stamp)[-32:]

    def _digest(self, what: str) -> bytes:
        return hashlib.sha256(f"pib-media\0{self.seed}\0{what}".encode()).digest()

    def serial(self, what: str) -> str:
        """A FAT volume serial number, as mkfs.vfat takes it (8 hex digits)."""
        return self._digest(what)[:4].hex()

    def uuid(self, what: str) -> str:
        import uuid

        return str(uuid.UUID(bytes=self._digest(what)[:16], version=4)).upper()


def fat_uuid(serial: str) -> str:
    """The UUID GRUB gives a FAT file system with this serial number."""
    return f"{serial[:4]}-{serial[4:]}".lower()


def _platform_files(pdir: Path) -> list[Path]:
    """The platform's files as its tarball has them: all but build.json (a record of the build's run)."""
    return sorted((p for p in pdir.iterdir() if p.is_file() and p.name != "build.json"
                   and not p.name.startswith(".")), key=lambda p: p.name.encode())


def _seed(files: Sequence[Path], stamp: str) -> str:
    h = hashlib.sha256(stamp.encode())
    for p in files:
        h.update(f"\0{p.name}\0{sha256_file(p)[0]}".encode())
    return h.hexdigest()


# --- GRUB -----------------------------------------------------------------------------


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")


def grub_cfg(name: str, stamp: str, kernel: str, archive: str, append: str, timeout: int) -> str:
    for f in (kernel, archive):
        if not _PLAIN_NAME.match(f):
            raise PibError(f"the platform file name {f!r} cannot go into GRUB's configuration unquoted",
                           reason=Reason.IMAGE, hint="name kernels with letters, digits and ._+- only ([image] kernel)")
    title = re.sub(r"[^A-Za-z0-9._ -]", "_", f"{name} {stamp}")
    return (
        f"# {name} platform {stamp}: made by pib\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input serial console\n"
        "terminal_output serial console\n"
        f"set timeout={timeout}\n"
        "set default=0\n"
        f'menuentry "{title}" {{\n'
        f"\tlinux /platform/{kernel} {append}\n"
        f"\tinitrd /platform/{archive}\n"
        "}\n"
    )


def _early_cfg(fs_uuid: str) -> str:
    return f"search --no-floppy --fs-uuid --set=root {fs_uuid}\nset prefix=($root)/boot/grub\n"


def _mkimage(directory: Path, fmt: str, out: Path, early: Path, modules: Sequence[str], *,
             env: dict[str, str], log: Log) -> Path:
    run(["grub-mkimage", "-d", directory, "-O", fmt, "-o", out, "-p", "/boot/grub", "-c", early, *modules],
        env=env, log=log, reason=Reason.IMAGE, what=f"grub-mkimage -O {fmt}")
    return out


# --- FAT ------------------------------------------------------------------------------


def _fat(path: Path, size: int, *, serial: str, label: str, tree: Sequence[tuple[str, Path]],
         env: dict[str, str], log: Log, hidden: int = 0) -> None:
    """A FAT file system image of `size` bytes holding `tree` ((path on the medium, file) pairs)."""
    run(["mkfs.vfat", "-C", "--invariant", "-i", serial, "-n", label, "-h", str(hidden), path, str(size // 1024)],
        env=env, log=log, reason=Reason.IMAGE, what="mkfs.vfat")
    dirs = sorted({str(Path(dest).parent) for dest, _ in tree} - {"."}, key=lambda d: (d.count("/"), d))
    need: list[str] = []
    for d in dirs:
        parts = Path(d).parts
        need += ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    made = list(dict.fromkeys(need))
    if made:
        run(["mmd", "-i", path, *(f"::/{d}" for d in made)], env=env, log=log, reason=Reason.IMAGE, what="mmd")
    for dest, src in tree:
        # -m: the file's own time, which _stage set to the build stamp.
        run(["mcopy", "-m", "-i", path, src, f"::/{dest}"], env=env, log=log, reason=Reason.IMAGE, what="mcopy")


def _fat_size(content: int, minimum: int) -> int:
    """Room for `content` bytes plus FAT tables and slack, in whole MiB."""
    want = max(minimum, int(content * 1.1) + 4 * MIB)
    return -(-want // MIB) * MIB


# --- staging --------------------------------------------------------------------------


class _Stage:
    """A scratch directory whose files all carry the build stamp as their time."""

    def __init__(self, root: Path, epoch: int) -> None:
        self.root = root
        self.epoch = epoch

    def text(self, rel: str, text: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        return self.stamp(p)

    def copy(self, src: Path, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, p)
        return self.stamp(p)

    def stamp(self, p: Path) -> Path:
        os.utime(p, (self.epoch, self.epoch))
        return p

    def stamp_tree(self, top: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            for n in (*dirnames, *filenames):
                os.utime(os.path.join(dirpath, n), (self.epoch, self.epoch), follow_symlinks=False)
        os.utime(top, (self.epoch, self.epoch))


# --- the two media --------------------------------------------------------------------


class _Job(NamedTuple):
    name: str
    stamp: str
    files: list[Path]   # the platform's files, for platform/
    kernel: str
    archive: str
    cfg_text: str       # boot/grub/grub.cfg without the early part
    ids: _Ids
    grub: Grub
    env: dict[str, str]
    log: Log


def _efi_fat(job: _Job, st: _Stage, fs_uuid: str, out: Path, minimum: int) -> None:
    early = st.text("efi-early.cfg", _early_cfg(fs_uuid))
    efi = st.stamp(_mkimage(job.grub.efi, "x86_64-efi", st.root / "BOOTX64.EFI", early, EFI_MODULES,
                            env=job.env, log=job.log))
    _fat(out, _fat_size(efi.stat().st_size, minimum), serial=job.ids.serial("esp"), label="EFI",
         tree=[("EFI/BOOT/BOOTX64.EFI", efi)], env=job.env, log=job.log)


def _make_iso(job: _Job, st: _Stage, out: Path) -> None:
    tree = st.root / "iso"
    st.text("iso/boot/grub/grub.cfg", job.cfg_text)
    for p in job.files:
        st.copy(p, f"iso/platform/{p.name}")
    early = st.text("pc-early.cfg", _early_cfg(job.ids.iso_uuid))
    eltorito = tree / "boot" / "grub" / "i386-pc" / "eltorito.img"
    eltorito.parent.mkdir(parents=True)
    _mkimage(job.grub.pc, "i386-pc-eltorito", eltorito, early, PC_MODULES, env=job.env, log=job.log)
    _efi_fat(job, st, job.ids.iso_uuid, tree / "boot" / "grub" / "efi.img", 0)
    st.stamp_tree(tree)
    run(["xorriso", "-as", "mkisofs", "-o", out,
         "-volid", job.ids.volume_id, f"--modification-date={job.ids.iso_date}", "-r",
         "-b", "boot/grub/i386-pc/eltorito.img", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
         "--grub2-boot-info", "--grub2-mbr", job.grub.pc / "boot_hybrid.img",
         "--efi-boot", "boot/grub/efi.img", "-efi-boot-part", "--efi-boot-image", "--protective-msdos-label",
         "--sort-weight", "0", "/", "--sort-weight", "1", "/boot", tree],
        env=job.env, log=job.log, reason=Reason.IMAGE, what="xorriso")


def _make_usb(job: _Job, st: _Stage, out: Path) -> None:
    boot_serial = job.ids.serial("boot")
    early = st.text("pc-early.cfg", _early_cfg(fat_uuid(boot_serial)))
    core = _mkimage(job.grub.pc, "i386-pc", st.root / "core.img", early, PC_MODULES, env=job.env, log=job.log)
    esp = st.root / "esp.img"
    _efi_fat(job, st, fat_uuid(boot_serial), esp, 8 * MIB)

    cfg_file = st.text("grub.cfg", job.cfg_text)
    content = sum(p.stat().st_size for p in job.files) + cfg_file.stat().st_size
    tree = [("boot/grub/grub.cfg", cfg_file), *((f"platform/{p.name}", st.copy(p, f"p/{p.name}")) for p in job.files)]

    core_size = core.stat().st_size
    bios_size = max(MIB, -(-core_size // MIB) * MIB)
    esp_start = MIB
    bios_start = esp_start + esp.stat().st_size
    boot_start = bios_start + bios_size
    boot_size = _fat_size(content, 16 * MIB)
    total = boot_start + boot_size + MIB  # the backup GPT at the end
    boot_fs = st.root / "boot.img"
    _fat(boot_fs, boot_size, serial=boot_serial, label="BOOT", tree=tree, env=job.env, log=job.log,
         hidden=boot_start // SECTOR)

    ids = job.ids
    script = "\n".join([
        "label: gpt",
        f"label-id: {ids.uuid('disk')}",
        "unit: sectors",
        f"start={esp_start // SECTOR}, size={esp.stat().st_size // SECTOR}, type={ESP_TYPE}, "
        f"uuid={ids.uuid('esp')}, name=\"EFI system\"",
        f"start={bios_start // SECTOR}, size={bios_size // SECTOR}, type={BIOS_BOOT_TYPE}, "
        f"uuid={ids.uuid('bios')}, name=\"BIOS boot\"",
        f"start={boot_start // SECTOR}, size={boot_size // SECTOR}, type={BASIC_DATA_TYPE}, "
        f"uuid={ids.uuid('boot')}, name=\"boot\"",
        "",
    ])
    with open(out, "wb") as fh:
        fh.truncate(total)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", out], input=script.encode(),
        env=job.env, log=job.log, reason=Reason.IMAGE, what="sfdisk")
    with open(out, "r+b") as fh:
        for start, part in ((esp_start, esp), (boot_start, boot_fs)):
            fh.seek(start)
            with open(part, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)
        fh.seek(bios_start)
        fh.write(_core_at(core.read_bytes(), bios_start // SECTOR))
        fh.seek(0)
        mbr = fh.read(SECTOR)
        fh.seek(0)
        fh.write(_boot_sector((job.grub.pc / "boot.img").read_bytes(), mbr, bios_start // SECTOR))


def _boot_sector(boot_img: bytes, mbr: bytes, core_lba: int) -> bytes:
    """GRUB's boot.img for a hard disk whose core.img starts at `core_lba`, keeping the disk's partition table.

    What grub-install's setup step does for an embedded core image.
    """
    if len(boot_img) != SECTOR or len(mbr) != SECTOR:
        raise PibError("GRUB's boot.img is not one sector", reason=Reason.IMAGE,
                       hint="reinstall the bootloader component's grub-pc-bin")
    b = bytearray(boot_img)
    struct.pack_into("<Q", b, _KERNEL_SECTOR, core_lba)
    b[_BOOT_DRIVE] = 0xFF
    b[_DRIVE_CHECK:_DRIVE_CHECK + 2] = b"\x90\x90"
    b[_MBR_KEEP:] = mbr[_MBR_KEEP:]
    return bytes(b)


def _core_at(core: bytes, core_lba: int) -> bytes:
    """core.img whose first blocklist says: the rest of me follows my first sector on the disk."""
    sectors = -(-len(core) // SECTOR)
    c = bytearray(core.ljust(sectors * SECTOR, b"\0"))
    _start, length, _segment = struct.unpack_from("<QHH", c, _BLOCKLIST)
    if length != sectors - 1:
        raise PibError(f"GRUB's core.img has an unexpected blocklist ({length} sectors, not {sectors - 1})",
                       reason=Reason.IMAGE, hint="use grub-mkimage and i386-pc modules of the same GRUB version")
    struct.pack_into("<Q", c, _BLOCKLIST, core_lba + 1)
    return bytes(c)


# --- making a medium ------------------------------------------------------------------


def make(cfg: Config, kind: str, stamp: str | None = None) -> Medium:
    """Make the `kind` medium (iso or usb) of output/platform-<stamp> (default: the latest)."""
    import tempfile

    from pib.image.boot import locate
    from pib.image.write import stamp_epoch

    if kind not in MEDIA_KINDS:
        raise PibError(f"unknown medium {kind!r}", reason=Reason.USAGE, hint=f"use one of: {', '.join(MEDIA_KINDS)}")
    spec = media_spec(cfg)
    platform = locate(cfg.workspace.output_dir, stamp, reason=Reason.IMAGE)
    grub = grub_files(cfg, spec)
    epoch = stamp_epoch(platform.stamp)
    env = minimal_env({"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1"}, path=_TOOL_PATH)
    check_tools(env)
    pdir = platform.kernel.parent
    files = _platform_files(pdir)
    name = cfg.workspace.name
    out = media_path(pdir, name, platform.stamp, kind)
    out.parent.mkdir(exist_ok=True)
    remove_stale(out.parent)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f"{RUN_TMP}{os.getpid()}-", dir=out.parent))
    try:
        with Log(cfg.workspace.log_dir / f"media-{kind}.{platform.stamp}.log") as log:
            job = _Job(name, platform.stamp, files, platform.kernel.name, platform.boot_archive.name,
                       grub_cfg(name, platform.stamp, platform.kernel.name, platform.boot_archive.name,
                                spec.append, spec.timeout),
                       _Ids(_seed(files, platform.stamp), name, platform.stamp, epoch), grub, env, log)
            st = _Stage(tmp / "stage", epoch)
            st.root.mkdir()
            made = tmp / out.name
            (_make_iso if kind == "iso" else _make_usb)(job, st, made)
            digest, size = sha256_file(made)
            os.replace(made, out)
            _record(pdir, kind, out, digest, size, spec, job)
    except OSError as exc:
        raise PibError(f"cannot write the {kind} medium under {out.parent}: {exc.strerror or exc}",
                       reason=Reason.IMAGE, hint="free space there, then run pib media again") from exc
    finally:
        remove_tree(tmp)
    return Medium(kind, out, digest, size, time.monotonic() - t0, platform.stamp)


def _record(pdir: Path, kind: str, out: Path, digest: str, size: int, spec: MediaSpec, job: _Job) -> None:
    """List the medium in the platform's build.json (which the platform tarball does not hold)."""
    path = pdir / "build.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    media = doc.get("media")
    if not isinstance(media, dict):
        media = {}
    fs_uuid = job.ids.iso_uuid if kind == "iso" else fat_uuid(job.ids.serial("boot"))
    media[kind] = {
        "file": out.relative_to(pdir).as_posix(),
        "sha256": digest,
        "size": size,
        "firmware": ["bios", "uefi"],
        "bootloader": spec.bootloader or str(spec.grub_dir),
        "append": spec.append,
        "fs_uuid": fs_uuid,
        "inputs": media_inputs(spec),
    }
    doc["media"] = media
    write_atomic(path, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def media_inputs(spec: MediaSpec) -> str:
    """What a medium depends on besides the platform and the bootloader's files (whose key is the image's)."""
    import pib

    text = json.dumps([spec.bootloader, str(spec.grub_dir), spec.append, spec.timeout, pib.__version__])
    return hashlib.sha256(text.encode()).hexdigest()


def current(pdir: Path, kind: str, spec: MediaSpec) -> dict[str, Any] | None:
    """The build.json entry of the platform's `kind` medium if it is there and made with `spec`."""
    try:
        entry = json.loads((pdir / "build.json").read_text(encoding="utf-8"))["media"][kind]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(entry, dict) or entry.get("inputs") != media_inputs(spec) or recorded(pdir, kind) is None:
        return None
    return entry


def recorded(pdir: Path, kind: str) -> Path | None:
    """The medium build.json lists for the platform, if it is there."""
    try:
        doc = json.loads((pdir / "build.json").read_text(encoding="utf-8"))
        rel = doc["media"][kind]["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(rel, str) or ".." in Path(rel).parts or rel.startswith("/"):
        return None
    p = pdir / rel
    return p if p.is_file() else None
