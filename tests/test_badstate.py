"""Bad local state through the real CLI: pib's own files damaged, of the wrong type, read-only or full.

Corrupt build and image records are set aside (NAME.corrupt-<time>) and rebuilt with a warning, never
fatal. A `.pib`, lock, state, log or output directory that cannot be used is a workspace error (exit 18)
naming the path and what to do; once it is usable again the next build gives the reference image, so
nothing half-written was kept. Read-only directories are read-only bind mounts and full ones small tmpfs
mounts (root: plain permissions do not stop root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pib.errors import EXIT_CODES, Reason
from tests.reliability import tally
from tests.test_kill import Kit, kit, new_ws, pib, protos, tree_digest

pytestmark = pytest.mark.integration
__all__ = ["kit"]  # the shared workspace kit is a module fixture of the kill tests

WORKSPACE = EXIT_CODES[Reason.WORKSPACE]


def _json(r: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert "Traceback" not in r.stderr, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    return data


def _fresh(k: Kit, name: str) -> Path:
    """A workspace built once: its state records and image record exist."""
    ws = new_ws(k, name)
    assert pib(k, ws, "configure").returncode == 0
    r = pib(k, ws, "build", "--json")
    assert r.returncode == 0, r.stderr
    return ws


def _recovers(k: Kit, ws: Path) -> None:
    """With the damage gone, the next build gives the reference image and proto areas."""
    r = pib(k, ws, "build", "--json")
    assert r.returncode == 0, r.stderr
    assert _json(r)["image"]["sha256"] == k.refs["plain"][0]  # type: ignore[index]
    assert protos(ws) == k.refs["plain"][1]
    left = [p.name for p in ws.iterdir() if ".pib-new" in p.name or ".publish-" in p.name]
    assert left == [], f"half-written leftovers: {left}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)[:40]


# --------------------------------------------------------------------------
# Corrupt records: set aside, rebuilt, a warning

def _deep(n: int) -> str:
    return "[" * n + "]" * n


CORRUPT: dict[str, Callable[[Path], object]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:37]),
    "a JSON array, not an object": lambda p: p.write_text("[1, 2, 3]"),
    "nested past the parser's stack": lambda p: p.write_text("[" * 100_000),
    "valid JSON nested 900 deep": lambda p: p.write_text(_deep(900)),
    "every field of the wrong type": lambda p: p.write_text(json.dumps({k: [[]] for k in json.loads(p.read_text())})),
    "a 5,000-digit number": lambda p: p.write_text('{"key": ' + "7" * 5000 + "}"),
    "not UTF-8": lambda p: p.write_bytes(b'{"key": "\xff\xfe"}'),
    "a directory in its place": lambda p: (p.unlink(), p.mkdir(), (p / "x").write_text("x")),
    "a fifo in its place": lambda p: (p.unlink(), os.mkfifo(p)),
}


@pytest.mark.parametrize("how", list(CORRUPT))
def test_corrupt_build_record_is_set_aside_and_rebuilt(kit: Kit, how: str) -> None:
    with tally("bad state", f"state/base.json {how}: set aside, rebuilt, warned"):
        ws = _fresh(kit, "rec-" + _slug(how))
        record = ws / ".pib" / "state" / "base.json"
        CORRUPT[how](record)
        st = pib(kit, ws, "status", "--json")  # a read-only command: "not built", nothing moved
        assert st.returncode == 0, st.stderr
        assert "Traceback" not in st.stderr
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        data = _json(r)
        actions = {c["component"]: c["action"] for c in data["components"]}  # type: ignore[attr-defined]
        assert actions["base"] in ("built", "restored"), actions
        warnings = [w for w in data["warnings"] if "set aside" in w]  # type: ignore[attr-defined]
        assert len(warnings) == 1 and str(record) in warnings[0], data["warnings"]
        aside = [p.name for p in record.parent.iterdir() if p.name.startswith("base.json.corrupt-")]
        assert len(aside) == 1, aside
        assert record.is_file()
        assert data["image"]["sha256"] == kit.refs["plain"][0]  # type: ignore[index]
        again = _json(pib(kit, ws, "build", "--json"))
        assert again["warnings"] == []
        assert {c["action"] for c in again["components"]} == {"up-to-date"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", list(CORRUPT))
def test_corrupt_image_record_is_set_aside_and_the_image_made_again(kit: Kit, how: str) -> None:
    with tally("bad state", f".pib/image.json {how}: set aside, image made again, warned"):
        ws = _fresh(kit, "img-" + _slug(how))
        record = ws / ".pib" / "image.json"
        CORRUPT[how](record)
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        data = _json(r)
        assert data["image"]["action"] == "built"  # type: ignore[index]
        assert data["image"]["sha256"] == kit.refs["plain"][0]  # type: ignore[index]
        warnings = [w for w in data["warnings"] if "set aside" in w]  # type: ignore[attr-defined]
        assert len(warnings) == 1 and str(record) in warnings[0], data["warnings"]
        assert len(list(record.parent.glob("image.json.corrupt-*"))) == 1
        again = _json(pib(kit, ws, "build", "--json"))
        assert again["image"]["action"] == "up-to-date" and again["warnings"] == []  # type: ignore[index]


def test_image_record_pointing_at_a_path_with_a_nul(kit: Kit) -> None:
    with tally("bad state", ".pib/image.json naming an image path with a NUL byte"):
        ws = _fresh(kit, "img-nul")
        record = ws / ".pib" / "image.json"
        data = json.loads(record.read_text())
        data["image"]["boot_archive"] = "/tmp/x\0y"
        record.write_text(json.dumps(data))
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        assert any("set aside" in w for w in _json(r)["warnings"])  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# The workspace's own files of the wrong type

def _replace(path: Path, make: Callable[[Path], object]) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    make(path)


WRONG_TYPE: dict[str, tuple[str, Callable[[Path], object]]] = {
    ".pib is a file": (".pib", lambda p: p.write_text("not a directory\n")),
    ".pib/lock is a directory": (".pib/lock", lambda p: p.mkdir()),
    ".pib/lock is a fifo": (".pib/lock", os.mkfifo),
    ".pib/lock is a dangling symlink": (".pib/lock", lambda p: p.symlink_to("/nonexistent/pib-lock")),
    ".pib/state is a file": (".pib/state", lambda p: p.write_text("x")),
    ".pib/index is a file": (".pib/index", lambda p: p.write_text("x")),
    "log is a file": ("log", lambda p: p.write_text("x")),
}


@pytest.mark.parametrize("case", list(WRONG_TYPE))
def test_workspace_file_of_the_wrong_type(kit: Kit, case: str) -> None:
    with tally("bad state", f"{case}: workspace error naming it"):
        ws = _fresh(kit, "type-" + _slug(case))
        rel, make = WRONG_TYPE[case]
        target = ws / rel
        _replace(target, make)
        # A change, so that the build has something to record.
        (ws / "projects" / "base" / "new-file").write_text("changed\n")
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == WORKSPACE, r.stderr
        err = _json(r)["error"]
        assert err["reason"] == "workspace", err  # type: ignore[index]
        said = f"{err['message']} {r.stderr}"  # type: ignore[index]
        assert str(target) in said or str(target.parent) in said, said
        assert err["hint"] or "hint:" in r.stderr  # type: ignore[index]
        _replace(target, lambda p: None)
        (ws / "projects" / "base" / "new-file").unlink()
        _recovers(kit, ws)


# --------------------------------------------------------------------------
# Read-only, full, or without a free inode

def _mount(target: Path, kind: str, undo: list[Callable[[], object]]) -> Callable[[], object]:
    target.mkdir(parents=True, exist_ok=True)
    if kind == "read-only":
        cmds = [["mount", "--bind", str(target), str(target)], ["mount", "-o", "remount,bind,ro", str(target)]]
    elif kind == "full":
        cmds = [["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(target)]]
    else:
        cmds = [["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=1", "tmpfs", str(target)]]
    for i, cmd in enumerate(cmds):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            if i:
                subprocess.run(["umount", "-l", str(target)], check=False)
            pytest.skip(f"cannot mount here ({r.stderr.strip()})")
    umount = lambda: subprocess.run(["umount", "-l", str(target)], check=False)  # noqa: E731
    undo.append(umount)
    if kind == "full":  # every byte of it taken
        fd = os.open(target / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
    return umount


@pytest.fixture
def mounts() -> Iterator[list[Callable[[], object]]]:
    undo: list[Callable[[], object]] = []
    yield undo
    for u in reversed(undo):
        u()


PLACES = {".pib": WORKSPACE, ".pib/state": WORKSPACE, "log": WORKSPACE, "output": EXIT_CODES[Reason.IMAGE]}


@pytest.mark.parametrize("kind", ["read-only", "full", "no free inode"])
@pytest.mark.parametrize("place", list(PLACES))
def test_unwritable_workspace_directory(kit: Kit, place: str, kind: str,
                                        mounts: list[Callable[[], object]]) -> None:
    with tally("bad state", f"{place} {kind}: clear error, recovers"):
        ws = _fresh(kit, "mnt-" + _slug(f"{place}-{kind}"))
        target = ws / place
        # What the next build must do again: a changed source and no image.
        (ws / "projects" / "base" / "new-file").write_text("changed\n")
        shutil.rmtree(ws / "output")
        if target.exists():
            shutil.rmtree(target)
        umount = _mount(target, kind, mounts)
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == PLACES[place], r.stderr
        err = _json(r)["error"]
        assert err["reason"] == ("image" if place == "output" else "workspace"), err  # type: ignore[index]
        said = f"{err['message']} {r.stderr}"  # type: ignore[index]
        assert str(target) in said, said
        umount()
        (ws / "projects" / "base" / "new-file").unlink()
        _recovers(kit, ws)


def test_no_free_inode_for_the_pack_scratch_directory(kit: Kit, mounts: list[Callable[[], object]]) -> None:
    with tally("bad state", "no free inode for the pack scratch directory: warned, built, recovers"):
        ws = new_ws(kit, "pack-inodes", base_proto="small/proto.base")
        assert pib(kit, ws, "configure").returncode == 0
        # Exactly the inodes the build needs: the root, the proto area and what it holds; none for the
        # scratch directory the archive is packed in for the local store.
        need = 2 + sum(1 for _ in Path(kit.root / "ref-plain" / "proto.base").rglob("*"))
        small = ws / "small"
        small.mkdir()
        r0 = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=4m,nr_inodes={need}", "tmpfs", str(small)],
                            capture_output=True, text=True)
        if r0.returncode != 0:
            pytest.skip(f"cannot mount here ({r0.stderr.strip()})")
        mounts.append(lambda: subprocess.run(["umount", "-l", str(small)], check=False))
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        data = _json(r)
        assert any("could not keep base" in w and str(small) in w for w in data["warnings"]), data  # type: ignore[attr-defined]
        assert [p.name for p in small.iterdir()] == ["proto.base"]
        assert tree_digest(small / "proto.base") == kit.refs["plain"][1]["base"]
        assert data["image"]["sha256"] == kit.refs["plain"][0]  # type: ignore[index]


def test_configure_into_a_read_only_projects_directory(kit: Kit, mounts: list[Callable[[], object]]) -> None:
    with tally("bad state", "projects read-only at configure: workspace error naming it, recovers"):
        ws = new_ws(kit, "ro-projects")
        projects = ws / "projects"
        if projects.exists():
            shutil.rmtree(projects)
        umount = _mount(projects, "read-only", mounts)
        r = pib(kit, ws, "configure", "--json")
        assert r.returncode == WORKSPACE, r.stderr
        err = _json(r)["error"]
        assert err["reason"] == "workspace", err  # type: ignore[index]
        assert str(projects) in err["message"], err  # type: ignore[index]
        umount()
        assert pib(kit, ws, "configure").returncode == 0
        _recovers(kit, ws)

