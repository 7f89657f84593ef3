"""Bootable media through the real CLI: the example's GRUB component (pinned Debian packages), real
grub-mkimage, xorriso, mkfs.vfat, mtools and sfdisk, and QEMU booting each medium under SeaBIOS and OVMF."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from examples.platform.make_workspace import make_repo as make_example_repo
from pib.config.loader import load
from pib.errors import EXIT_CODES, ConfigError, PibError, Reason
from pib.fsutil import sha256_file
from pib.image import media
from tests.gitutil import make_repo, pib

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "platform"
EPOCH = "1767225600"  # 2026-01-01T00:00:00Z
STAMP = "20260101T000000Z"

INIT_BUILD = """\
#!/bin/sh
set -eu
mkdir -p "$DESTDIR/bin" "$DESTDIR/etc"
cp /bin/busybox "$DESTDIR/bin/busybox"
ln -s busybox "$DESTDIR/bin/sh"
cp init "$DESTDIR/init"
printf 'root:x:0:0:root:/:/bin/sh\\n' > "$DESTDIR/etc/passwd"
printf 'root:x:0:\\n' > "$DESTDIR/etc/group"
"""
INIT = """\
#!/bin/sh
/bin/busybox mount -t proc proc /proc
echo "PIB-BOOT-OK cmdline=$(/bin/busybox cat /proc/cmdline)"
/bin/busybox sleep 600
"""
INIT_MANIFEST = """\
d bin 0755 root root
f bin/busybox 0755 root root
s bin/sh=busybox
d etc 0755 root root
f etc/passwd 0644 root root
f etc/group 0644 root root
f init 0755 root root
d dev 0755 root root
d proc 0755 root root
"""

pytestmark = [pytest.mark.integration]


def _toml_list(items: list[dict[str, str]]) -> str:
    return "[" + ", ".join("{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in i.items()) + " }"
                           for i in items) + "]"


def _workspace(root: Path) -> Path:
    """The example's kernel and boot components (their pinned Debian packages) and a busybox init."""
    example = tomllib.loads((EXAMPLE / "pib.toml").read_text())
    for name in ("kernel", "boot"):
        make_example_repo(name, root / "repos" / name)
    make_repo(root / "repos" / "init", {"build.sh": INIT_BUILD, "init": INIT, "manifest": INIT_MANIFEST})
    ws = root / "ws"
    ws.mkdir()
    comps = ""
    for name in ("kernel", "boot", "init"):
        comps += (f'[components.{name}]\nsource = "../repos/{name}"\nbuild = ["./build.sh"]\n'
                  f'manifest = "manifest"\n')
        if name != "init":
            comps += f"sources = {_toml_list(example['components'][name]['sources'])}\n"
        comps += "\n"
    (ws / "pib.toml").write_text(f"""\
[workspace]
name = "mediatest"

[apt]
uris = {json.dumps(example['apt']['uris'])}
suites = {json.dumps(example['apt']['suites'])}

{comps}
[image]
kernel = ["kernel:boot/vmlinuz"]
compression = "gzip"

[boot]
timeout = 150
append = "console=ttyS0"

[media]
bootloader = "boot"
append = "console=ttyS0 pib.media=1"
""")
    assert pib(ws, "configure").returncode == 0
    built = pib(ws, "build", "--json", env={"SOURCE_DATE_EPOCH": EPOCH})
    assert built.returncode == 0, built.stderr
    return ws


def _json(res: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _workspace(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def made(ws: Path) -> dict[str, Any]:
    res = pib(ws, "media", "all", "--json")
    assert res.returncode == 0, res.stderr
    return {m["kind"]: m for m in _json(res)["media"]}


def _pdir(ws: Path) -> Path:
    return (ws / "output" / "platform-latest").resolve()


# --- the four cells, and the hybrid ISO as a disk --------------------------------------------


@pytest.mark.parametrize("kind", ["iso", "usb"])
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_each_medium_boots_under_each_firmware(ws: Path, made: dict[str, Any], kind: str, firmware: str) -> None:
    res = pib(ws, "boot", "--media", kind, "--firmware", firmware, "--json")
    out = _json(res)
    assert res.returncode == 0, out
    assert out["passed"] and out["outcome"] == "marker" and out["medium"] == made[kind]["path"]
    # GRUB on the medium started the kernel with the medium's own command line ([media] append).
    assert "BOOT_IMAGE=/platform/vmlinuz console=ttyS0 pib.media=1" in out["marker_line"]


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_the_iso_boots_from_a_disk_too(ws: Path, made: dict[str, Any], firmware: str) -> None:
    res = pib(ws, "boot", "--media", "iso", "--drive", "usb", "--firmware", firmware, "--json")
    out = _json(res)
    assert res.returncode == 0, out
    assert out["passed"] and "pib.media=1" in out["marker_line"]


# --- what the media are ---------------------------------------------------------------------------


def test_media_are_listed_with_their_sha256_in_build_json(ws: Path, made: dict[str, Any]) -> None:
    pdir = _pdir(ws)
    listed = json.loads((pdir / "build.json").read_text())["media"]
    assert set(listed) == {"iso", "usb"}
    for kind, entry in listed.items():
        path = pdir / entry["file"]
        assert str(path) == made[kind]["path"]
        assert sha256_file(path) == (entry["sha256"], entry["size"])
        assert entry["firmware"] == ["bios", "uefi"] and entry["bootloader"] == "boot"
    assert made["iso"]["path"].endswith(f"media/mediatest-{STAMP}.iso")
    assert made["usb"]["path"].endswith(f"media/mediatest-{STAMP}-usb.img")


def test_usb_image_is_gpt_with_esp_bios_boot_and_boot_partitions(ws: Path, made: dict[str, Any]) -> None:
    table = json.loads(subprocess.run(["/usr/sbin/sfdisk", "--json", made["usb"]["path"]], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    types = [p["type"] for p in table["partitions"]]
    assert types == [media.ESP_TYPE, media.BIOS_BOOT_TYPE, media.BASIC_DATA_TYPE]
    # The boot partition holds GRUB's configuration and the platform, in a FAT file system.
    boot = table["partitions"][2]
    spec = f"{made['usb']['path']}@@{boot['start'] * 512}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    cfg = subprocess.run(["mtype", "-i", spec, "::/boot/grub/grub.cfg"], check=True, capture_output=True,
                         text=True, env=env).stdout
    assert "linux /platform/vmlinuz console=ttyS0 pib.media=1" in cfg and "serial --unit=0" in cfg
    listing = subprocess.run(["mdir", "-b", "-i", spec, "::/platform"], check=True, capture_output=True,
                             text=True, env=env).stdout
    assert {Path(line).name for line in listing.split()} >= {"vmlinuz", "boot_archive", "boot_archive.manifest"}
    # The MBR is GRUB's boot sector pointing at core.img in the BIOS boot partition, behind a protective MBR.
    with open(made["usb"]["path"], "rb") as fh:
        mbr = fh.read(512)
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == table["partitions"][1]["start"]
    assert mbr[0x1C2] == 0xEE and mbr[510:] == b"\x55\xaa"


def test_a_medium_made_again_is_bit_identical(ws: Path, made: dict[str, Any]) -> None:
    pdir = _pdir(ws)
    for p in pdir.iterdir():  # new file times on the platform must not reach the media
        if p.is_file():
            os.utime(p)
    res = pib(ws, "media", "iso", "usb", "--json")
    assert res.returncode == 0, res.stderr
    again = {m["kind"]: m for m in _json(res)["media"]}
    for kind in ("iso", "usb"):
        assert again[kind]["sha256"] == made[kind]["sha256"]
        assert sha256_file(Path(again[kind]["path"]))[0] == made[kind]["sha256"]
    assert sorted(p.name for p in (pdir / "media").iterdir()) == sorted(
        Path(made[k]["path"]).name for k in ("iso", "usb"))  # no temporaries left


# --- errors ---------------------------------------------------------------------------------------


def _other(ws: Path, tmp_path: Path, media_section: str) -> Path:
    """A workspace sharing `ws`'s output (the built platform) with its own [media] section."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "pib.toml").write_text(f'[workspace]\nname = "other"\noutput_dir = "{ws / "output"}"\n\n'
                                    f"{media_section}")
    return other


def test_missing_grub_files_is_an_image_error_naming_the_config(ws: Path, tmp_path: Path) -> None:
    other = _other(ws, tmp_path, f'[media]\ngrub_dir = "{tmp_path / "no-grub"}"\n')
    res = pib(other, "media", "usb", "--json")
    assert res.returncode == EXIT_CODES[Reason.IMAGE]
    err = _json(res)["error"]
    assert err["reason"] == "image" and err["where"] == f"{other / 'pib.toml'}:5"
    assert str(tmp_path / "no-grub" / "i386-pc") in err["message"]


def test_a_failing_tool_leaves_no_medium_and_build_json_unchanged(ws: Path, tmp_path: Path) -> None:
    grub = tmp_path / "grub"
    shutil.copytree(ws / "proto.boot" / "usr" / "lib" / "grub", grub)
    (grub / "x86_64-efi" / "kernel.img").write_bytes(b"not a GRUB kernel")  # grub-mkimage fails on it
    other = _other(ws, tmp_path, f'[media]\ngrub_dir = "{grub}"\n')
    pdir = _pdir(ws)
    before = {p.name: sha256_file(p)[0] for p in (pdir / "media").iterdir()}
    build_json = (pdir / "build.json").read_bytes()
    res = pib(other, "media", "iso", "--json")
    assert res.returncode == EXIT_CODES[Reason.IMAGE]
    assert _json(res)["error"]["reason"] == "image"
    assert {p.name: sha256_file(p)[0] for p in (pdir / "media").iterdir()} == before
    assert (pdir / "build.json").read_bytes() == build_json


def test_no_platform_built_is_an_image_error(tmp_path: Path) -> None:
    (tmp_path / "pib.toml").write_text('[media]\ngrub_dir = "/usr/lib/grub"\n')
    res = pib(tmp_path, "media", "iso", "--json")
    assert res.returncode == EXIT_CODES[Reason.IMAGE]
    assert _json(res)["error"]["reason"] == "image" and "pib build" in _json(res)["error"]["hint"]


def test_no_media_section_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "pib.toml").write_text('[workspace]\nname = "x"\n')
    res = pib(tmp_path, "media", "usb", "--json")
    assert res.returncode == EXIT_CODES[Reason.CONFIG] and _json(res)["error"]["reason"] == "config"


def test_booting_a_medium_not_made_is_a_boot_error(ws: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(ws / "output", other / "output", symlinks=True)
    (other / "pib.toml").write_text('[workspace]\nname = "other"\n')
    pdir = (other / "output" / "platform-latest").resolve()
    doc = json.loads((pdir / "build.json").read_text())
    doc.pop("media", None)
    (pdir / "build.json").write_text(json.dumps(doc))
    res = pib(other, "boot", "--media", "usb", "--json")
    assert res.returncode == EXIT_CODES[Reason.BOOT] and _json(res)["error"]["reason"] == "boot"
    usage = pib(other, "boot", "--firmware", "uefi", "--json")
    assert usage.returncode == EXIT_CODES[Reason.USAGE]


@pytest.mark.parametrize(("section", "line"), [
    ('[media]\nbootloader = "nope"\n', 2),
    ('[media]\ngrub_dir = "relative/grub"\n', 2),
    ('[media]\nbootloader = "boot"\ngrub_dir = "../escape"\n', 3),
    ('[media]\ngrub_dir = "/g"\nappend = "console=ttyS0; reboot"\n', 3),
    ('[media]\ngrub_dir = "/g"\nmake = ["floppy"]\n', 3),
])
def test_bad_media_config_names_file_and_line(tmp_path: Path, section: str, line: int) -> None:
    (tmp_path / "pib.toml").write_text(f'[components.boot]\nsource = "x"\nbuild = ["true"]\n{section}')
    with pytest.raises(ConfigError) as ei:
        load(tmp_path)
    assert ei.value.reason is Reason.CONFIG and ei.value.where is not None
    assert ei.value.where.line == line + 3


# --- the boot sector and core image patches ------------------------------------------------


def test_boot_sector_keeps_the_partition_table_and_points_at_core() -> None:
    boot_img = bytes(range(256)) * 2
    mbr = b"\0" * 0x1B8 + b"\xAA" * (512 - 0x1B8 - 2) + b"\x55\xaa"
    out = media._boot_sector(boot_img, mbr, 2048)
    assert out[0x1B8:] == mbr[0x1B8:] and out[:0x5C] == boot_img[:0x5C]
    assert struct.unpack_from("<Q", out, 0x5C)[0] == 2048 and out[0x64] == 0xFF and out[0x66:0x68] == b"\x90\x90"
    with pytest.raises(PibError):
        media._boot_sector(b"short", mbr, 2048)


def test_core_image_blocklist_starts_after_its_first_sector() -> None:
    core = bytearray(512 * 3 - 100)
    struct.pack_into("<QHH", core, 500, 2, 2, 0x820)  # as grub-mkimage leaves it: 2 more sectors
    out = media._core_at(bytes(core), 4096)
    assert len(out) == 512 * 3 and struct.unpack_from("<QHH", out, 500) == (4097, 2, 0x820)
    struct.pack_into("<QHH", core, 500, 2, 7, 0x820)
    with pytest.raises(PibError):
        media._core_at(bytes(core), 4096)


# --- [media] make: pib build makes the media (last: it changes the workspace's media) ---------------


def test_build_makes_the_configured_media_and_remakes_them_only_on_change(ws: Path, made: dict[str, Any]) -> None:
    local = ws / "pib.local.toml"
    try:
        local.write_text('[media]\nmake = ["usb"]\n')
        noop = _json(pib(ws, "build", "--json", env={"SOURCE_DATE_EPOCH": EPOCH}))
        assert noop["image"]["action"] == "up-to-date"
        # The medium pib media made from the same platform and [media] stands.
        assert noop["image"]["media"]["usb"]["action"] == "up-to-date"
        assert noop["image"]["media"]["usb"]["sha256"] == made["usb"]["sha256"]

        local.write_text('[media]\nmake = ["usb"]\nappend = "console=ttyS0 changed=1"\n')
        changed = _json(pib(ws, "build", "--json", env={"SOURCE_DATE_EPOCH": EPOCH}))
        assert changed["image"]["action"] == "up-to-date"
        usb = changed["image"]["media"]["usb"]
        assert usb["action"] == "built" and usb["sha256"] != made["usb"]["sha256"]
        assert sha256_file(Path(usb["path"]))[0] == usb["sha256"]
        again = _json(pib(ws, "build", "--json", env={"SOURCE_DATE_EPOCH": EPOCH}))
        assert again["image"]["media"]["usb"]["action"] == "up-to-date"
    finally:
        local.unlink(missing_ok=True)
        assert pib(ws, "media", "usb").returncode == 0


def test_missing_tools_name_the_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(media.TOOLS, "no-such-media-tool", "some-package")
    with pytest.raises(PibError) as ei:
        media.check_tools({"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    assert ei.value.reason is Reason.IMAGE and "some-package" in ei.value.message
    assert "apt-get install some-package" in ei.value.hint


def test_grub_configuration_is_plain() -> None:
    text = media.grub_cfg('odd"name$', "20260101T000000Z", "vmlinuz", "boot_archive", "console=ttyS0", 0)
    assert 'menuentry "odd_name_ 20260101T000000Z"' in text
    assert "\tlinux /platform/vmlinuz console=ttyS0\n\tinitrd /platform/boot_archive\n" in text
    with pytest.raises(PibError):
        media.grub_cfg("n", "s", "vm linuz", "boot_archive", "", 0)
