"""SBOMs, signed provenance and `pib verify` on a small real workspace."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gitutil import make_repo, pib
from tests.reliability import tally

BUILD = """\
#!/bin/sh
set -e
mkdir -p "$DESTDIR/bin" "$DESTDIR/boot"
printf '#!/bin/sh\\necho hello\\n' > "$DESTDIR/bin/hello"
chmod 755 "$DESTDIR/bin/hello"
ln "$DESTDIR/bin/hello" "$DESTDIR/bin/hi"
echo kernel > "$DESTDIR/boot/vmlinuz"
"""
MANIFEST = "d bin 0755 root root\nf bin/hello 0755 root bin\nh bin/hi=bin/hello\ns bin/sh=hello\n"
OVERLAY_MANIFEST = "d etc 0755 root root\nf etc/passwd 0644 root root\nf etc/group 0644 root root\n"


def _ws(root: Path) -> Path:
    make_repo(root / "repos" / "core", {"build.sh": BUILD, "manifest": MANIFEST})
    ws = root / "ws"
    (ws / "overlay" / "etc").mkdir(parents=True)
    (ws / "overlay" / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\nbin:x:2:2:bin:/:/bin/false\n")
    (ws / "overlay" / "etc" / "group").write_text("root:x:0:\nbin:x:2:\n")
    (ws / "overlay" / "manifest").write_text(OVERLAY_MANIFEST)
    (ws / "pib.toml").write_text("""\
[platform]
min_version = "1"
[components.core]
source = "../repos/core"
build = ["./build.sh"]
manifest = "manifest"
license = "MIT OR Apache-2.0"
[image]
kernel = ["core:boot/vmlinuz"]
overlays = [{ path = "overlay", manifest = "overlay/manifest" }]
compression = "zstd"
""")
    assert pib(ws, "configure").returncode == 0
    return ws


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sbom")
    ws = _ws(root)
    r = pib(ws, "build", "--json")
    assert r.returncode == 0, r.stderr
    return {"ws": ws, "root": root, **json.loads(r.stdout)["image"]}


def _copy(image: dict[str, Any], dest: Path) -> Path:
    """A copy of the platform directory and its tarball, to tamper with."""
    src = Path(image["dir"])
    dest.mkdir()
    shutil.copytree(src, dest / src.name)
    shutil.copy(Path(image["tarball"]), dest / Path(image["tarball"]).name)
    return dest / src.name


def test_spdx_sbom_is_valid_and_complete(image: dict[str, Any]) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    path = Path(image["dir"]) / "sbom.spdx.json"
    doc = parse_file(str(path))
    assert [m.validation_message for m in validate_full_spdx_document(doc)] == []
    core = next(p for p in doc.packages if p.name == "core")
    assert str(core.license_declared) == "MIT OR Apache-2.0"
    names = {f.name for f in doc.files}
    assert {"./bin/hello", "./bin/hi", "./etc/passwd", "./etc/group", "./etc/pib-release"} <= names
    data = json.loads(path.read_text())
    refs = {r["referenceType"]: r["referenceLocator"] for r in next(
        p for p in data["packages"] if p["name"] == "core")["externalRefs"]}
    build = json.loads((Path(image["dir"]) / "build.json").read_text())
    core_key = next(c["key"] for c in build["components"] if c["name"] == "core")
    assert refs["pib-key"] == core_key and len(refs["git-commit"]) == 40
    assert build["image"]["outputs"] == {"spdx": "sbom.spdx.json", "cyclonedx": "sbom.cdx.json",
                                         "provenance": "provenance.intoto.jsonl"}


def test_cyclonedx_sbom_is_valid(image: dict[str, Any]) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = (Path(image["dir"]) / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    assert doc["specVersion"] == "1.6"
    core = next(c for c in doc["components"] if c["name"] == "core")
    assert core["licenses"] == [{"expression": "MIT OR Apache-2.0"}]
    assert any(c["name"] == "bin/hello" and c["type"] == "file" for c in core["components"])


def test_provenance_is_a_signed_in_toto_statement(image: dict[str, Any]) -> None:
    lines = (Path(image["dir"]) / "provenance.intoto.jsonl").read_text().splitlines()
    assert len(lines) == 1
    env = json.loads(lines[0])
    assert env["payloadType"] == "application/vnd.in-toto+json" and env["signatures"][0]["sig"]
    stmt = json.loads(base64.b64decode(env["payload"]))
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
    assert subjects["boot_archive"] == image["sha256"]
    assert {"vmlinuz", "sbom.spdx.json", "sbom.cdx.json", Path(image["tarball"]).name} <= set(subjects)
    pred = stmt["predicate"]
    assert {"buildType", "externalParameters", "internalParameters", "resolvedDependencies"} <= set(
        pred["buildDefinition"])
    deps = {d["name"]: d for d in pred["buildDefinition"]["resolvedDependencies"]}
    assert "gitCommit" in deps["source:core"]["digest"] and deps["artifact:core"]["annotations"]["key"]
    assert pred["runDetails"]["builder"]["id"]


def test_verify_passes_and_names_a_files_origin(image: dict[str, Any]) -> None:
    for target in (image["dir"], image["tarball"]):
        r = pib(image["ws"], "verify", str(target), "--file", "bin/hi", "--json")
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["ok"] and rep["file"]["component"] == "core" and len(rep["file"]["commit"]) == 40
        assert rep["components"] == {"core": 2, "overlay:overlay": 2, "pib": 1}


@pytest.mark.parametrize("victim", ["boot_archive", "sbom.spdx.json", "sbom.cdx.json", "provenance.intoto.jsonl",
                                    "tarball"])
def test_one_changed_byte_is_detected(image: dict[str, Any], tmp_path: Path, victim: str) -> None:
    pdir = _copy(image, tmp_path / "copy")
    path = pdir.with_name(pdir.name + ".tgz") if victim == "tarball" else pdir / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    r = pib(image["ws"], "verify", str(pdir), "--json")
    assert r.returncode == 12, r.stdout
    assert json.loads(r.stdout)["error"]["reason"] == "verify"


def test_sbom_that_misattributes_a_file_is_refused(image: dict[str, Any], tmp_path: Path) -> None:
    """A re-signed provenance over a doctored SBOM still fails: a file must belong to exactly one component."""
    from pib.artifacts import provenance
    from pib.artifacts.policy import machine_signer

    pdir = _copy(image, tmp_path / "copy")
    sbom = pdir / "sbom.spdx.json"
    doc = json.loads(sbom.read_text())
    fid = next(f["SPDXID"] for f in doc["files"] if f["fileName"] == "./bin/hello")
    overlay = next(p["SPDXID"] for p in doc["packages"] if p["name"] == "overlay:overlay")
    doc["relationships"].append({"spdxElementId": overlay, "relationshipType": "CONTAINS",
                                 "relatedSpdxElement": fid})
    sbom.write_text(json.dumps(doc))
    env = json.loads((pdir / "provenance.intoto.jsonl").read_text())
    stmt = json.loads(base64.b64decode(env["payload"]))
    import hashlib
    for s in stmt["subject"]:
        if s["name"] == "sbom.spdx.json":
            s["digest"]["sha256"] = hashlib.sha256(sbom.read_bytes()).hexdigest()
    import os
    os.environ.setdefault("HOME", str(tmp_path))
    (pdir / "provenance.intoto.jsonl").write_bytes(provenance.envelope(stmt, machine_signer()[0]))
    r = pib(image["ws"], "verify", str(pdir), "--json")
    assert r.returncode == 12
    assert "bin/hello" in json.loads(r.stdout)["error"]["message"]


def test_untrusted_signature_is_refused(image: dict[str, Any], tmp_path: Path) -> None:
    from pib.artifacts import provenance
    from pib.artifacts.signing import generate_keypair, load_signer

    pdir = _copy(image, tmp_path / "copy")
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    env = json.loads((pdir / "provenance.intoto.jsonl").read_text())
    stmt = json.loads(base64.b64decode(env["payload"]))
    (pdir / "provenance.intoto.jsonl").write_bytes(provenance.envelope(stmt, load_signer(tmp_path / "other.key")))
    r = pib(image["ws"], "verify", str(pdir), "--json")
    assert r.returncode == 12
    assert json.loads(r.stdout)["error"]["reason"] == "verify"
    # Trusting that key explicitly makes the same image verify.
    r = pib(image["ws"], "verify", str(pdir), "--key", str(tmp_path / "other.pub"))
    assert r.returncode == 0, r.stderr


def test_outputs_are_reproducible(image: dict[str, Any]) -> None:
    """Making the image again from the same inputs gives the same SBOMs, provenance and tarball."""
    sde = {"SOURCE_DATE_EPOCH": "1700000000"}
    made = []
    for _ in range(2):
        r = pib(image["ws"], "build", "--force", "--json", env=sde)
        assert r.returncode == 0, r.stderr
        made.append(json.loads(r.stdout)["image"])
        d = Path(made[-1]["dir"])
        made[-1]["bytes"] = {n: (d / n).read_bytes() for n in ("sbom.spdx.json", "sbom.cdx.json",
                                                               "provenance.intoto.jsonl")}
        made[-1]["tgz"] = Path(made[-1]["tarball"]).read_bytes()
    assert made[0]["dir"] == made[1]["dir"]
    assert made[0]["bytes"] == made[1]["bytes"] and made[0]["tgz"] == made[1]["tgz"]


def test_bad_license_expression_names_the_line(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    for bad in ("GPL-2.0-onl", "MIT or BSD-2-Clause", "MIT AND (Apache-2.0", "MIT WITH"):
        (ws / "pib.toml").write_text(f'[components.core]\nsource = "x"\nbuild = "b"\nlicense = "{bad}"\n')
        r = pib(ws, "config", "show", "--json")
        assert r.returncode == 3, bad
        err = json.loads(r.stdout)["error"]
        assert err["reason"] == "config" and "pib.toml:4" in r.stderr, (bad, r.stderr)


GOOD = """\
#!/bin/sh
set -e
mkdir -p "$DESTDIR/bin"
printf 'built at %s\\n' "$SOURCE_DATE_EPOCH" > "$DESTDIR/bin/stamp"
ln -s stamp "$DESTDIR/bin/link"
"""
BAD = """\
#!/bin/sh
set -e
mkdir -p "$DESTDIR/bin"
echo same > "$DESTDIR/bin/a"
date +%s%N > "$DESTDIR/bin/when"
"""


@pytest.mark.parametrize("prebuilt", [False, True])
def test_rebuild_check(tmp_path: Path, prebuilt: bool) -> None:
    make_repo(tmp_path / "repos" / "good", {"build.sh": GOOD})
    make_repo(tmp_path / "repos" / "bad", {"build.sh": BAD})
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "pib.toml").write_text(f"""\
[platform]
min_version = "1"
[components.good]
source = "../repos/good"
build = ["./build.sh"]
prebuilt = {str(prebuilt).lower()}
[components.bad]
source = "../repos/bad"
build = ["./build.sh"]
prebuilt = {str(prebuilt).lower()}
""")
    assert pib(ws, "configure").returncode == 0
    assert pib(ws, "rebuild", "--check", "good", "--json").returncode != 0  # nothing built yet
    r = pib(ws, "build", "--json")
    assert r.returncode == 0, r.stderr
    r = pib(ws, "rebuild", "--check", "good", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["identical"] and rep["files"] == 3
    assert rep["compared_with"] == ("store local" if prebuilt else "proto area")
    r = pib(ws, "rebuild", "--check", "bad", "--json")
    assert r.returncode == 12, r.stderr
    assert json.loads(r.stdout)["differences"] == [{"path": "bin/when", "what": "content differs"}]
    # Nothing of the check is left beside the proto areas, and the proto area is the build's.
    assert sorted(p.name for p in ws.iterdir() if "proto" in p.name) == ["proto.bad", "proto.good"]


def _hostile(pdir: Path, case: str, outside: Path) -> None:
    """Damage a copied platform directory the way `case` says."""
    if case == "boot archive truncated":
        data = (pdir / "boot_archive").read_bytes()
        (pdir / "boot_archive").write_bytes(data[: len(data) // 2])
    elif case == "hash file that lies":
        (pdir / "boot_archive.hash").write_text("0" * 64 + "\n")
    elif case == "a named file a symlink out of the image":
        # The bytes are right, but they are not in the image: verify must not follow the link.
        outside.write_bytes((pdir / "boot_archive.hash").read_bytes())
        (pdir / "boot_archive.hash").unlink()
        (pdir / "boot_archive.hash").symlink_to(outside)
    elif case == "an extra symlink to a fifo outside":
        os.mkfifo(outside)
        (pdir / "extra").symlink_to(outside)
    elif case == "a fifo in the platform directory":
        os.mkfifo(pdir / "extra")
    elif case == "a huge extra file":
        with open(pdir / "huge", "wb") as fh:
            fh.truncate(1 << 40)  # sparse: a terabyte that takes no space
    elif case == "a huge boot archive":
        with open(pdir / "boot_archive", "r+b") as fh:
            fh.truncate(1 << 40)
    elif case == "provenance a symlink to a fifo":
        os.mkfifo(outside)
        (pdir / "provenance.intoto.jsonl").unlink()
        (pdir / "provenance.intoto.jsonl").symlink_to(outside)


HOSTILE = ["boot archive truncated", "hash file that lies", "a named file a symlink out of the image",
           "an extra symlink to a fifo outside", "a fifo in the platform directory", "a huge extra file",
           "a huge boot archive", "provenance a symlink to a fifo"]


@pytest.mark.parametrize("case", HOSTILE)
def test_verify_of_a_hostile_image(image: dict[str, Any], tmp_path: Path, case: str) -> None:
    """A clear verify error (exit 12), within seconds and without a traceback; nothing outside the image read."""
    with tally("hostile image", f"pib verify: {case}"):
        pdir = _copy(image, tmp_path / "copy")
        (pdir.with_name(pdir.name + ".tgz")).unlink()  # the directory is what is checked
        _hostile(pdir, case, tmp_path / "outside")
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pib", "-C", str(image["ws"]), "verify", str(pdir), "--json"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert time.monotonic() - start < 30
        assert r.returncode == 12, r.stdout + r.stderr
        assert json.loads(r.stdout)["error"]["reason"] == "verify"
        assert "Traceback" not in r.stderr


def test_verify_of_a_tarball_bomb(image: dict[str, Any], tmp_path: Path) -> None:
    """A platform tarball whose member declares 16 GiB (a few bytes of gzip): refused at its header."""
    with tally("hostile image", "pib verify: a tarball member that declares 16 GiB"):
        name = Path(image["dir"]).name
        info = tarfile.TarInfo(f"{name}/boot_archive")
        info.size = 16 << 30
        target = tmp_path / f"{name}.tgz"
        target.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * (1 << 20)))
        r = subprocess.run([sys.executable, "-m", "pib", "-C", str(image["ws"]), "verify", str(target), "--json"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert r.returncode == 12, r.stdout + r.stderr
        assert json.loads(r.stdout)["error"]["reason"] == "verify"
