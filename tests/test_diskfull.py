"""A full disk while restoring, building, keeping an artifact or writing the image.

Each case mounts a small tmpfs where pib writes (a proto area, the output
directory, the local store): a real ENOSPC from the kernel. The run must end
in a clear pib error or warning, and nothing half-written may be left there.
Where tmpfs cannot be mounted (not root), the same cases run with ENOSPC
injected at the write that would fail, and the recorded case names say so.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pib.errors import EXIT_CODES, Reason
from tests.reliability import tally
from tests.test_kill import Kit, check_store, kit, new_ws, pib

pytestmark = pytest.mark.integration
__all__ = ["kit"]  # the shared workspace kit is a module fixture of the kill tests


@dataclass(frozen=True)
class Small:
    path: Path
    mounted: bool  # a real tmpfs; otherwise a plain directory and ENOSPC is injected

    @property
    def how(self) -> str:
        return "tmpfs" if self.mounted else "injected ENOSPC"


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Small]:
    """A 64 KiB tmpfs (smaller than any image or proto area of the kit)."""
    yield from _tmpfs(tmp_path / "small", "size=64k,mode=0755")


@pytest.fixture
def no_inodes(tmp_path: Path) -> Iterator[Small]:
    """A tmpfs with room but no free inode: not even a directory can be made there."""
    yield from _tmpfs(tmp_path / "small", "size=1m,nr_inodes=1,mode=0755")


def _tmpfs(mnt: Path, options: str) -> Iterator[Small]:
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    try:
        yield Small(mnt, r.returncode == 0)
    finally:
        if r.returncode == 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def build(k: Kit, ws: Path, small: Small, inject: str) -> subprocess.CompletedProcess[str]:
    """`pib build --json`; without a tmpfs, the n-th call of `inject` fails with ENOSPC instead."""
    if small.mounted:
        return pib(k, ws, "build", "--json")
    env = dict(k.env, PIB_KILL_AT=inject, PIB_KILL_MARK=str(ws / "marks" / "injected"),
               PIB_KILL_ERRNO=str(errno.ENOSPC))
    return subprocess.run([sys.executable, str(k.launcher), "-C", str(ws), "build", "--json"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def _json(r: subprocess.CompletedProcess[str]) -> dict[str, object]:
    data: dict[str, object] = json.loads(r.stdout)
    return data


def _warnings(r: subprocess.CompletedProcess[str]) -> str:
    return " ".join(_json(r).get("warnings", []))  # type: ignore[arg-type]


def _mounted_in(ws: Path, small: Small, name: str) -> Path:
    link = ws / name
    link.symlink_to(small.path)
    return link


def _restore_onto(kit: Kit, name: str, small: Small) -> Path:
    """A workspace whose base was built (so the local store has it), its proto area now on `small`."""
    ws = new_ws(kit, name)
    assert pib(kit, ws, "configure").returncode == 0
    assert pib(kit, ws, "build").returncode == 0
    _mounted_in(ws, small, "small")
    text = (ws / "pib.toml").read_text().replace('proto = "proto.base"', 'proto = "small/proto.base"')
    (ws / "pib.toml").write_text(text)
    return ws


def test_restore_and_build_into_a_full_disk(kit: Kit, small: Small) -> None:
    with tally("diskfull", f"restore, then build, into a full file system ({small.how})"):
        ws = _restore_onto(kit, "df-restore", small)
        r = build(kit, ws, small, "pib.artifacts.archive|unpack|1")
        assert "Traceback" not in r.stderr, r.stderr
        base = next(c for c in _json(r)["components"] if c["component"] == "base")  # type: ignore[attr-defined]
        if small.mounted:  # the local build has no room either
            assert r.returncode == EXIT_CODES[Reason.BUILD], r.stderr
            assert base["action"] == "failed"
            assert list(small.path.iterdir()) == [], "something half-written was kept on the full file system"
        else:
            assert r.returncode == 0 and base["action"] == "built"
        warnings = _warnings(r)
        assert "local" in warnings and "space" in warnings.lower(), warnings
        assert check_store(kit, ws / "store") >= 1


def test_restore_with_no_room_for_a_directory(kit: Kit, no_inodes: Small) -> None:
    with tally("diskfull", f"restore where not even a directory can be made ({no_inodes.how}, no inodes)"):
        ws = _restore_onto(kit, "df-inodes", no_inodes)
        r = build(kit, ws, no_inodes, "tempfile|mkdtemp|1|fetch")
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == (EXIT_CODES[Reason.BUILD] if no_inodes.mounted else 0), r.stderr
        assert "space" in _warnings(r).lower(), _warnings(r)
        assert list(no_inodes.path.iterdir()) == ([] if no_inodes.mounted else [no_inodes.path / "proto.base"])


def test_image_onto_a_full_disk(kit: Kit, small: Small) -> None:
    with tally("diskfull", f"write the image onto a full file system ({small.how})"):
        ws = new_ws(kit, "df-image", top='[workspace]\noutput_dir = "small"\n')
        _mounted_in(ws, small, "small")
        assert pib(kit, ws, "configure").returncode == 0
        r = build(kit, ws, small, "pib.image.write|_HashingFile.write|1")
        assert r.returncode == EXIT_CODES[Reason.IMAGE], r.stderr
        assert "Traceback" not in r.stderr
        err = _json(r)["error"]
        assert err["reason"] == "image" and "space" in err["message"].lower()  # type: ignore[index]
        assert list(small.path.iterdir()) == [], "a half-written image was kept"
        # With room again, the same workspace makes the image.
        (ws / "small").unlink()
        (ws / "small").mkdir()
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        assert _json(r)["image"]["sha256"] == kit.refs["plain"][0]  # type: ignore[index]


def test_local_store_on_a_full_disk(kit: Kit, small: Small) -> None:
    with tally("diskfull", f"keep an artifact in a full local store ({small.how})"):
        ws = new_ws(kit, "df-store", store="small/store")
        _mounted_in(ws, small, "small")
        assert pib(kit, ws, "configure").returncode == 0
        r = build(kit, ws, small, "pib.store.local|_link_or_copy|1")
        assert r.returncode == 0, r.stderr  # a store that cannot keep an artifact is a warning
        warnings = _warnings(r)
        assert "could not keep base" in warnings and "space" in warnings.lower(), warnings
        assert check_store(kit, small.path / "store") == 0
        leftovers = [p for p in (small.path / "store").rglob("*") if p.is_file()]
        assert leftovers == [], f"half-written store files kept: {leftovers}"
