"""Hostile prebuilt artifacts through the whole `pib build` path.

The machine's local store holds, under the exact key of the `base`
component, a crafted entry: an archive with a dangerous member (signed with
the key the store trusts, so only the archive checks stand in the way), or a
good archive with bad metadata or signature. Every one must be refused before
anything is written outside a temporary directory, named in the build's
warnings with reason `verify`, and the component built locally, giving the
clean build's proto area and image.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pib.artifacts.archive import pack
from pib.artifacts.metadata import ArtifactInfo, make_metadata
from pib.artifacts.signing import Signer, load_signer
from pib.config.types import HttpStoreSpec
from pib.fsutil import canonical_json, sha256_file
from pib.store.backends import open_store
from pib.store.local import LocalStore
from tests.reliability import tally
from tests.tarcraft import END, Entry, block, header, tar_bytes, write_archive, write_raw
from tests.test_kill import Kit, kit, new_ws, pib, protos

pytestmark = pytest.mark.integration
__all__ = ["kit"]

GOOD = [Entry("etc", "dir", mode=0o755), Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
        Entry("etc/group", data=b"root::0:\n")]


@dataclass
class Ctx:
    kit: Kit
    ws: Path
    outside: Path  # a directory beside the workspace that nothing may touch
    key: str  # base's current key
    signer: Signer  # the machine key: the local store trusts it
    work: Path


def _up(n: int = 4) -> str:
    return "../" * n


def hostile_tar(ctx: Ctx, extra: list[Entry]) -> Path:
    return write_archive(ctx.work / "a.tar.zst", GOOD + extra)


def signed(ctx: Ctx, archive: Path, *, component: str = "base", key: str | None = None,
           signer: Signer | None = None) -> bytes:
    sha, size = sha256_file(archive)
    return make_metadata(ArtifactInfo(component, key or ctx.key, {"format": 1}, False, "test", None), sha, size, signer or ctx.signer)


def good_archive(ctx: Ctx) -> Path:
    return pack(ctx.kit.root / "ref-plain" / "proto.base", ctx.work / "good.tar.zst", epoch=0).path


def _member(ctx: Ctx, entries: list[Entry]) -> tuple[Path, bytes]:
    a = hostile_tar(ctx, entries)
    return a, signed(ctx, a)


def traversal(ctx: Ctx) -> tuple[Path, bytes]:
    return _member(ctx, [Entry(f"{_up()}{ctx.outside.name}/pwned", data=b"x")])


def absolute(ctx: Ctx) -> tuple[Path, bytes]:
    return _member(ctx, [Entry(f"{ctx.outside}/pwned", data=b"x")])


def symlink_then_write(ctx: Ctx) -> tuple[Path, bytes]:
    return _member(ctx, [Entry("lnk", "symlink", target=f"{_up()}{ctx.outside.name}"),
                         Entry("lnk/pwned", data=b"x")])


def absolute_symlink_then_write(ctx: Ctx) -> tuple[Path, bytes]:
    return _member(ctx, [Entry("etc/lnk", "symlink", target=str(ctx.outside)), Entry("etc/lnk/pwned", data=b"x")])


def hardlink_outside(ctx: Ctx) -> tuple[Path, bytes]:
    return _member(ctx, [Entry("etc/hl", "hardlink", target=str(ctx.outside / "sentinel"))])


def hardlink_traversal(ctx: Ctx) -> tuple[Path, bytes]:
    return _member(ctx, [Entry("etc/hl", "hardlink", target=f"{_up()}{ctx.outside.name}/sentinel")])


def device(ctx: Ctx) -> tuple[Path, bytes]:
    return _member(ctx, [Entry("dev-null", "chr")])


def fifo(ctx: Ctx) -> tuple[Path, bytes]:
    return _member(ctx, [Entry("pipe", "fifo")])


def setuid(ctx: Ctx) -> tuple[Path, bytes]:
    return _member(ctx, [Entry("bin/su", data=b"#!/bin/sh\n", mode=0o4755)])


def huge_declared(ctx: Ctx) -> tuple[Path, bytes]:
    # A header declaring a terabyte of data, followed by a little of it.
    info = tarfile.TarInfo("etc/huge")
    info.size = 1 << 40
    raw = tar_bytes(GOOD, end=False) + info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096
    a = write_raw(ctx.work / "a.tar.zst", raw)
    return a, signed(ctx, a)


def rle_zeros(n: int) -> bytes:
    """A zstd frame of n zero bytes made of RLE blocks: 4 bytes per 128 KiB (a ratio of 32768)."""
    block = 128 * 1024
    assert n % block == 0
    out = bytearray((0xFD2FB528).to_bytes(4, "little") + bytes([0x00, 7 << 3]))  # no size; 128 KiB window
    count = n // block
    for i in range(count):
        last = 1 if i == count - 1 else 0
        out += (last | (1 << 1) | (block << 3)).to_bytes(3, "little") + b"\0"
    return bytes(out)


def bomb(ctx: Ctx) -> tuple[Path, bytes]:
    # 80 GiB of zeros, really in the stream, in 2.5 MB of archive.
    info = tarfile.TarInfo("etc/zeros")
    info.size = 80 << 30
    head = tar_bytes(GOOD, end=False) + info.tobuf(format=tarfile.GNU_FORMAT)
    a = ctx.work / "a.tar.zst"
    a.write_bytes(zstandard.ZstdCompressor(level=3).compress(head) + rle_zeros(80 << 30))
    return a, signed(ctx, a)


def member_twice(ctx: Ctx) -> tuple[Path, bytes]:
    # A file, then a symlink of the same name: extraction order would decide what the image gets.
    return _member(ctx, [Entry("etc/motd", data=b"hi\n"), Entry("etc/motd", "symlink", target="passwd")])


def truncated(ctx: Ctx) -> tuple[Path, bytes]:
    full = good_archive(ctx).read_bytes()
    a = ctx.work / "a.tar.zst"
    a.write_bytes(full[: len(full) // 2])
    return a, signed(ctx, a)  # signed as it is: only the archive checks can catch it


def flipped_bit(ctx: Ctx) -> tuple[Path, bytes]:
    a = good_archive(ctx)
    meta = signed(ctx, a)
    data = bytearray(a.read_bytes())
    data[len(data) // 2] ^= 0x10
    a.write_bytes(bytes(data))
    return a, meta


def wrong_signature(ctx: Ctx) -> tuple[Path, bytes]:
    a = good_archive(ctx)
    return a, signed(ctx, a, signer=Signer(Ed25519PrivateKey.generate()))


def unsigned(ctx: Ctx) -> tuple[Path, bytes]:
    a = good_archive(ctx)
    doc = json.loads(signed(ctx, a))
    del doc["signature"]
    return a, canonical_json(doc)


def tampered_metadata(ctx: Ctx) -> tuple[Path, bytes]:
    # Signed for one archive, then pointed at another one.
    a = hostile_tar(ctx, [Entry("etc/evil", data=b"evil")])
    doc = json.loads(signed(ctx, good_archive(ctx)))
    doc["archive_sha256"], doc["archive_size"] = sha256_file(a)
    return a, canonical_json(doc)


def replay_other_component(ctx: Ctx) -> tuple[Path, bytes]:
    a = good_archive(ctx)
    return a, signed(ctx, a, component="extra")


def replay_other_key(ctx: Ctx) -> tuple[Path, bytes]:
    a = good_archive(ctx)
    return a, signed(ctx, a, key="0" * 64)


def _raw(ctx: Ctx, members: bytes) -> tuple[Path, bytes]:
    raw = (header(b"./", b"5", mode=0o755) + header(b"./etc/", b"5", mode=0o755)
           + header(b"./etc/group", size=9) + block(b"root::0:\n") + members + END)
    a = write_raw(ctx.work / "a.tar.zst", raw)
    return a, signed(ctx, a)


def _smuggled(ctx: Ctx, typeflag: bytes) -> tuple[Path, bytes]:
    # A size with a leading NUL: 0 to a reader stopping at the NUL, 512 to GNU tar; the block after
    # it is a header to one and data to the other.
    return _raw(ctx, header(b"./etc/a", fields={124: b"\x000000001000\0"}) + header(b"./etc/b", size=512)
                + header(b"./etc/node", typeflag))


def nul_mode_setuid(ctx: Ctx) -> tuple[Path, bytes]:
    return _raw(ctx, header(b"./etc/su", size=3, fields={100: b"\x00004755\0"}) + block(b"hi\n"))


def nul_size_fifo(ctx: Ctx) -> tuple[Path, bytes]:
    return _smuggled(ctx, b"6")


def nul_size_block_device(ctx: Ctx) -> tuple[Path, bytes]:
    return _smuggled(ctx, b"4")


def long_link_to_machine_key(ctx: Ctx) -> tuple[Path, bytes]:
    # GNU tar reads a long link up to the first NUL of its padded block, not its declared size.
    key = Path(ctx.kit.env["XDG_CONFIG_HOME"]) / "pib" / "machine.key"
    target = b"abcd/" + b"../" * 40 + str(key).lstrip("/").encode()
    return _raw(ctx, header(b"././@LongLink", b"K", size=4) + block(target + b"\0")
                + header(b"./etc/key", b"2", link=b"abcd"))


def claimed_sha(meta: bytes) -> str | None:
    """The archive SHA-256 the metadata states: a damaged archive sits under the name of the good one."""
    sha = json.loads(meta).get("archive_sha256")
    return sha if isinstance(sha, str) and len(sha) == 64 else None


CASES: dict[str, Callable[[Ctx], tuple[Path, bytes]]] = {
    "setuid behind a mode field with a leading NUL": nul_mode_setuid,
    "fifo behind a size field with a leading NUL": nul_size_fifo,
    "block device behind a size field with a leading NUL": nul_size_block_device,
    "symlink to the machine key hidden in a long link's padding": long_link_to_machine_key,
    "path traversal (..)": traversal,
    "absolute path": absolute,
    "symlink escaping, then a write through it": symlink_then_write,
    "absolute symlink, then a write through it": absolute_symlink_then_write,
    "hard link to an absolute outside file": hardlink_outside,
    "hard link with .. to outside": hardlink_traversal,
    "character device node": device,
    "fifo": fifo,
    "setuid bit": setuid,
    "huge declared size": huge_declared,
    "decompression bomb (80 GiB of zeros)": bomb,
    "one member twice (file, then symlink)": member_twice,
    "truncated archive (signed as truncated)": truncated,
    "flipped bit": flipped_bit,
    "valid archive, signature of an untrusted key": wrong_signature,
    "unsigned metadata": unsigned,
    "metadata altered after signing": tampered_metadata,
    "artifact of another component replayed": replay_other_component,
    "artifact of another key replayed": replay_other_key,
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_hostile_artifact_is_refused_and_built_locally(kit: Kit, case: str, tmp_path: Path) -> None:
    with tally("hostile", case):
        name = "h-" + "".join(c if c.isalnum() else "-" for c in case)[:40]
        ws = new_ws(kit, name)
        assert pib(kit, ws, "configure").returncode == 0
        status = json.loads(pib(kit, ws, "status", "--json").stdout)
        key = next(c["key"] for c in status["components"] if c["component"] == "base")
        outside = kit.root / f"outside-{name}"
        outside.mkdir()
        (outside / "sentinel").write_text("untouched\n")
        signer = load_signer(Path(kit.env["XDG_CONFIG_HOME"]) / "pib" / "machine.key")
        work = tmp_path / "craft"
        work.mkdir()
        ctx = Ctx(kit, ws, outside, key, signer, work)
        archive, meta = CASES[case](ctx)
        LocalStore(ws / "store").put("base", key, archive, meta, claimed_sha(meta))
        archive.unlink()

        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        data = json.loads(r.stdout)
        actions = {c["component"]: c["action"] for c in data["components"]}
        assert actions == {"base": "built", "extra": "built"}
        warnings = "\n".join(data["warnings"])
        assert "store local: base: verify:" in warnings, warnings
        # Nothing outside a temporary directory was touched, and nothing is left over.
        assert sorted(p.name for p in outside.iterdir()) == ["sentinel"]
        assert (outside / "sentinel").read_text() == "untouched\n"
        assert not [p.name for p in ws.iterdir() if p.name.startswith(".proto.")]
        assert protos(ws) == kit.refs["plain"][1]
        assert data["image"]["sha256"] == kit.refs["plain"][0]
        # The local build replaced the hostile entry with a good one.
        again = pib(kit, ws, "clobber", "base")
        assert again.returncode == 0
        r = pib(kit, ws, "build", "--json")
        assert {c["component"]: c["action"] for c in json.loads(r.stdout)["components"]}["base"] == "restored"


REMOTE_CASES = ["path traversal (..)", "symlink escaping, then a write through it", "setuid bit", "flipped bit",
                "valid archive, signature of an untrusted key", "artifact of another component replayed"]


@pytest.mark.parametrize("case", REMOTE_CASES, ids=REMOTE_CASES)
def test_hostile_artifact_from_the_remote_is_refused_and_not_cached(kit: Kit, case: str, tmp_path: Path,
                                                                   request: pytest.FixtureRequest) -> None:
    with tally("hostile", f"from the remote (nginx): {case}"):
        name = "hr-" + "".join(c if c.isalnum() else "-" for c in case)[:40]
        url = f"{request.getfixturevalue('nginx').url}/hostile-{os.getpid()}-{name}"
        ws = new_ws(kit, name, remote=url)
        assert pib(kit, ws, "configure").returncode == 0
        status = json.loads(pib(kit, ws, "status", "--json").stdout)
        key = next(c["key"] for c in status["components"] if c["component"] == "base")
        outside = kit.root / f"outside-{name}"
        outside.mkdir()
        (outside / "sentinel").write_text("untouched\n")
        work = tmp_path / "craft"
        work.mkdir()
        publisher = load_signer(kit.root / "key.priv")  # the key the remote's artifacts are trusted by
        archive, meta = CASES[case](Ctx(kit, ws, outside, key, publisher, work))
        open_store(HttpStoreSpec("remote", url)).put("base", key, archive, meta, claimed_sha(meta))

        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert {c["component"]: c["action"] for c in data["components"]}["base"] == "built"
        assert "store remote: base: verify:" in "\n".join(data["warnings"]), data["warnings"]
        assert sorted(p.name for p in outside.iterdir()) == ["sentinel"]
        assert data["image"]["sha256"] == kit.refs["plain"][0]
        # The local store holds this machine's own build, never the refused download.
        local = LocalStore(ws / "store")
        signer = json.loads(local.get_meta("base", key))["signer"]
        assert signer == load_signer(Path(kit.env["XDG_CONFIG_HOME"]) / "pib" / "machine.key").key_id
