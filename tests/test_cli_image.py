"""`pib manifest check|diff` through the real command line entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pib.cli import main
from pib.errors import EXIT_CODES, Reason
from tests.gitutil import make_repo, pib

REAL = Path(__file__).parent / "data" / "smartos-manifests"  # real SmartOS manifests, vendored


def test_manifest_check_real_files(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in REAL.glob("smartos-live*.manifest"))
    assert main(["manifest", "check", *files]) == 0
    assert capsys.readouterr().out.startswith("ok: 3 manifest(s)")


def test_manifest_check_bad_line_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.manifest"
    bad.write_text("d etc 0755 root sys\nf etc/x 0999 root sys\n")
    assert main(["manifest", "check", str(bad), "--json"]) == EXIT_CODES[Reason.MANIFEST]
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["reason"] == "manifest" and out["error"]["where"] == f"{bad}:2"


def test_manifest_diff_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("d etc 0755 root sys\nf etc/motd 0644 root sys\n")
    b.write_text("d etc 0755 root sys\nf etc/motd 0644 root root\ns etc/issue=motd\n")
    assert main(["manifest", "diff", str(a), str(b), "--json"]) == 0
    changes = {c["path"]: c for c in json.loads(capsys.readouterr().out)}
    assert changes["etc/motd"]["fields"] == ["owner"]
    assert changes["etc/issue"]["status"] == "added"
    assert main(["manifest", "diff", str(a), str(b)]) == 0
    assert capsys.readouterr().out.splitlines() == ["+ etc/issue", "~ etc/motd (owner)"]


# --- against a workspace ------------------------------------------------------------------

BUILD = """\
#!/bin/sh
set -e
mkdir -p "$DESTDIR/bin" "$DESTDIR/boot" "$DESTDIR/etc"
head -c 300000 /dev/urandom > "$DESTDIR/bin/big"
echo small > "$DESTDIR/bin/small"
printf 'root:x:0:0::/:/bin/sh\\n' > "$DESTDIR/etc/passwd"
printf 'root::0:\\n' > "$DESTDIR/etc/group"
echo kernel > "$DESTDIR/boot/vmlinuz"
"""
MANIFEST = ("d bin 0755 root root\nd etc 0755 root root\nf bin/big 0755 root root\nf bin/small 0755 root root\n"
            "f etc/passwd 0644 root root\nf etc/group 0644 root root\n")


def _workspace(tmp_path: Path, manifest: str = MANIFEST) -> Path:
    make_repo(tmp_path / "repos" / "core", {"build.sh": BUILD, "manifest": manifest})
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "pib.toml").write_text("""\
[platform]
min_version = "1"
[components.core]
source = "../repos/core"
build = ["./build.sh"]
manifest = "manifest"
[image]
kernel = ["core:boot/vmlinuz"]
""")
    assert pib(ws, "configure").returncode == 0
    return ws


@pytest.mark.integration
def test_image_sizes_and_rebuild_through_the_cli(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    built = pib(ws, "build", "--json")
    assert built.returncode == 0, built.stderr
    sizes = pib(ws, "image", "--sizes", "--json")
    assert sizes.returncode == 0, sizes.stderr
    report = json.loads(sizes.stdout)
    core = next(c for c in report["components"] if c["name"] == "core")
    assert core["largest"][0] == {"path": "bin/big", "bytes": 300000}
    image = pib(ws, "image", "--stamp", "20260101T000000Z", "--json")
    assert image.returncode == 0, image.stderr
    facts = json.loads(image.stdout)
    assert facts["buildstamp"] == "20260101T000000Z"
    assert Path(facts["dir"], "vmlinuz").is_file()
    check = pib(ws, "manifest", "check", "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["entries"] == 6
    bad_stamp = pib(ws, "image", "--stamp", "yesterday")
    assert bad_stamp.returncode == EXIT_CODES[Reason.IMAGE]


@pytest.mark.integration
def test_workspace_manifest_check_names_the_line(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, MANIFEST + "f bin/../x 0644 root root\n")
    r = pib(ws, "manifest", "check", "--json")
    assert r.returncode == EXIT_CODES[Reason.MANIFEST]
    err = json.loads(r.stdout)["error"]
    assert err["where"].endswith("manifest:7")


@pytest.mark.integration
def test_sizes_count_the_release_file_as_written(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    assert pib(ws, "build", "--json").returncode == 0
    report = json.loads(pib(ws, "image", "--sizes", "--json").stdout)
    generated = {f["path"]: f["bytes"] for c in report["components"] for f in c["largest"]}
    # PIB_BUILDSTAMP=<16 characters> and one PIB_KEY_CORE=<64 hex digits> line, as the image writes it.
    assert generated["etc/pib-release"] == len(b"PIB_BUILDSTAMP=00000000T000000Z\n") + len(
        "PIB_KEY_CORE=\n") + 64


def test_manifest_check_reports_every_bad_line(tmp_path: Path) -> None:
    m = tmp_path / "manifest"
    m.write_text("d etc 0755 root root\nx bad\nf etc/a 0644 root root\nf /abs 0644 root root\n")
    r = pib(tmp_path, "manifest", "check", str(m))
    assert r.returncode == EXIT_CODES[Reason.MANIFEST]
    assert f"{m}:2:" in r.stderr and f"{m}:4:" in r.stderr


# --- SmartOS's rule for a path given twice ------------------------------------------------

ILLUMOS_EXTRA = REAL / "illumos-extra.manifest"  # gives d lib/svc/manifest/network twice (lines 12, 494)
EXTRA_BUILD = """\
#!/bin/sh
set -e
awk '$1 == "f" { print $2 }' manifest > "$PIB_BUILD_DIR/files"
cd "$DESTDIR"
xargs -n 200 dirname < "$PIB_BUILD_DIR/files" | sort -u | xargs mkdir -p
xargs -n 200 touch < "$PIB_BUILD_DIR/files"
"""


def _smartos_workspace(tmp_path: Path, duplicates: str | None) -> Path:
    make_repo(tmp_path / "repos" / "illumos-extra", {"build.sh": EXTRA_BUILD, "manifest": ILLUMOS_EXTRA.read_text()})
    ws = tmp_path / "ws"
    # The real manifest comes from a larger image: an overlay gives the parents and users it takes for granted.
    overlay = ws / "overlay"
    (overlay / "etc").mkdir(parents=True)
    (overlay / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (overlay / "etc/group").write_text("root::0:\nother::1:\nbin::2:\nsys::3:\n")
    parents = ["etc/security", "etc/security/auth_attr.d", "etc/security/prof_attr.d", "usr/lib/mdb",
               "usr/lib/mdb/proc", "usr/lib/mdb/proc/amd64", "var"]
    (overlay / "manifest").write_text("d etc 0755 root sys\n" + "".join(f"d {p} 0755 root sys\n" for p in parents)
                                      + "f etc/passwd 0644 root sys\nf etc/group 0644 root sys\n")
    setting = f'duplicates = "{duplicates}"\n' if duplicates else ""
    (ws / "pib.toml").write_text(f"""\
[platform]
min_version = "1"
[components.illumos-extra]
source = "../repos/illumos-extra"
build = ["./build.sh"]
manifest = "manifest"
[image]
overlays = [{{ path = "overlay", manifest = "overlay/manifest" }}]
{setting}""")
    assert pib(ws, "configure").returncode == 0
    return ws


@pytest.mark.integration
def test_real_illumos_extra_manifest_refused_by_default(tmp_path: Path) -> None:
    ws = _smartos_workspace(tmp_path, None)
    check = pib(ws, "manifest", "check", "--json")
    assert check.returncode == EXIT_CODES[Reason.MANIFEST]
    assert json.loads(check.stdout)["error"]["where"].endswith("manifest:494")
    r = pib(ws, "build", "--json")
    assert r.returncode == EXIT_CODES[Reason.MANIFEST], r.stderr
    report = json.loads(r.stdout)
    assert report["error"]["where"].endswith("illumos-extra/manifest:494") and not report.get("image")
    assert not list((ws / ".pib").glob("**/boot_archive.manifest"))  # no image, not even half of one
    explicit = pib(ws, "manifest", "check", str(ILLUMOS_EXTRA))
    assert explicit.returncode == EXIT_CODES[Reason.MANIFEST]


@pytest.mark.integration
def test_real_illumos_extra_manifest_accepted_with_smartos_duplicates(tmp_path: Path) -> None:
    ws = _smartos_workspace(tmp_path, "smartos")
    check = pib(ws, "manifest", "check", "--json")
    assert check.returncode == 0, check.stdout
    (warning,) = json.loads(check.stdout)["warnings"]
    assert "illumos-extra/manifest:494" in warning and "illumos-extra/manifest:12" in warning
    r = pib(ws, "build", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    (warning,) = [w for w in report["warnings"] if "lib/svc/manifest/network" in w]
    assert "manifest:494" in warning and "manifest:12" in warning
    # SmartOS's rule: the later line (494: root bin) wins, as tools/sorter keeps it.
    records = (Path(report["image"]["dir"]) / "boot_archive.manifest").read_text().splitlines()
    (line,) = [x for x in records if x.startswith("lib/svc/manifest/network ")]
    assert line.split()[1:4] == ["d", "0755", "root:bin"]
    assert pib(ws, "manifest", "check", "--duplicates", "smartos", str(ILLUMOS_EXTRA)).returncode == 0
