"""A full disk while restoring, building, keeping an artifact or writing the image.

Each case mounts a small tmpfs where pib writes (a proto area, the output
directory, the local store): a real ENOSPC from the kernel. The run must end
in a clear pib error or warning, and nothing half-written may be left there.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pib.errors import EXIT_CODES, Reason
from tests.reliability import tally
from tests.test_kill import Kit, check_store, kit, new_ws, pib

pytestmark = pytest.mark.integration
__all__ = ["kit"]  # the shared workspace kit is a module fixture of the kill tests


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (smaller than any image or proto area of the kit)."""
    yield from _tmpfs(tmp_path / "small", "size=64k,mode=0755")


@pytest.fixture
def no_inodes(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with room but no free inode: not even a directory can be made there."""
    yield from _tmpfs(tmp_path / "small", "size=1m,nr_inodes=1,mode=0755")


def _tmpfs(mnt: Path, options: str) -> Iterator[Path]:
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a tmpfs (these tests need root): {r.stderr}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _json(r: subprocess.CompletedProcess[str]) -> dict[str, object]:
    data: dict[str, object] = json.loads(r.stdout)
    return data


def _mounted_in(ws: Path, small: Path, name: str) -> Path:
    link = ws / name
    link.symlink_to(small)
    return link


def test_restore_and_build_into_a_full_disk(kit: Kit, small: Path) -> None:
    with tally("diskfull", "restore, then build, into a full file system (tmpfs)"):
        # Build once with the proto area on the big disk: the local store gets the artifact.
        ws = new_ws(kit, "df-restore")
        assert pib(kit, ws, "configure").returncode == 0
        assert pib(kit, ws, "build").returncode == 0
        # Move base's proto area onto the small file system: restoring must fail, and so must building.
        _mounted_in(ws, small, "small")
        text = (ws / "pib.toml").read_text().replace('proto = "proto.base"', 'proto = "small/proto.base"')
        (ws / "pib.toml").write_text(text)
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == EXIT_CODES[Reason.BUILD], r.stderr
        data = _json(r)
        assert "Traceback" not in r.stderr
        base = next(c for c in data["components"] if c["component"] == "base")  # type: ignore[attr-defined]
        assert base["action"] == "failed"
        warnings = " ".join(data.get("warnings", []))  # type: ignore[arg-type]
        assert "local" in warnings and "space" in warnings.lower(), warnings
        assert list(small.iterdir()) == [], "something half-written was kept on the full file system"
        assert check_store(kit, ws / "store") >= 1


def test_image_onto_a_full_disk(kit: Kit, small: Path) -> None:
    with tally("diskfull", "write the image onto a full file system (tmpfs)"):
        ws = new_ws(kit, "df-image", top='[workspace]\noutput_dir = "small"\n')
        _mounted_in(ws, small, "small")
        assert pib(kit, ws, "configure").returncode == 0
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == EXIT_CODES[Reason.IMAGE], r.stderr
        assert "Traceback" not in r.stderr
        err = _json(r)["error"]
        assert err["reason"] == "image" and "space" in err["message"].lower()  # type: ignore[index]
        assert list(small.iterdir()) == [], "a half-written image was kept"
        # With room again, the same workspace makes the image.
        (ws / "small").unlink()
        (ws / "small").mkdir()
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        assert _json(r)["image"]["sha256"] == kit.refs["plain"][0]  # type: ignore[index]


def test_local_store_on_a_full_disk(kit: Kit, small: Path) -> None:
    with tally("diskfull", "keep an artifact in a full local store (tmpfs)"):
        ws = new_ws(kit, "df-store", store="small/store")
        _mounted_in(ws, small, "small")
        assert pib(kit, ws, "configure").returncode == 0
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr  # a store that cannot keep an artifact is a warning
        data = _json(r)
        warnings = " ".join(data.get("warnings", []))  # type: ignore[arg-type]
        assert "could not keep base" in warnings and "space" in warnings.lower(), warnings
        assert check_store(kit, small / "store") == 0
        leftovers = [p for p in (small / "store").rglob("*") if p.is_file()]
        assert leftovers == [], f"half-written store files kept: {leftovers}"


def test_restore_with_no_room_for_a_directory(kit: Kit, no_inodes: Path) -> None:
    with tally("diskfull", "restore where not even a directory can be made (tmpfs, no inodes)"):
        ws = new_ws(kit, "df-inodes")
        assert pib(kit, ws, "configure").returncode == 0
        assert pib(kit, ws, "build").returncode == 0
        _mounted_in(ws, no_inodes, "small")
        text = (ws / "pib.toml").read_text().replace('proto = "proto.base"', 'proto = "small/proto.base"')
        (ws / "pib.toml").write_text(text)
        r = pib(kit, ws, "build", "--json")
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == EXIT_CODES[Reason.BUILD], r.stderr
        data = _json(r)
        warnings = " ".join(data.get("warnings", []))  # type: ignore[arg-type]
        assert "space" in warnings.lower(), warnings
        assert list(no_inodes.iterdir()) == []
