"""The pkgsrc provider: the exact command sequence, and the executor against a stand-in kit.

Real pkgsrc needs an illumos host; here a kit holding shell-script stand-ins
for pkgin and pkg_info drives the same code path (curl file://, tar, the
repository file, the installed-set check, the in-place install).
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from pib import cbe
from pib.cbe.pins import load
from pib.cbe.providers import pkgsrc
from pib.config.types import CbeSpec
from pib.errors import CbeError, Reason

REPO_URL = "https://pkgsrc.smartos.org/packages/SmartOS/2024Q4/x86_64/All"

PKGIN = """#!/bin/sh
P=$(cd "$(dirname "$0")/.." && pwd)
case "$2" in
update) exit 0 ;;
install) shift 2; for p in "$@"; do
    case "$p" in missing-*) echo "pkgin: $p not found" >&2; exit 1 ;; esac
    echo "$p" >> "$P/pkg/installed"
    if [ "$p" = "gcc13-13.2.0" ]; then echo "isl-0.26" >> "$P/pkg/installed"; fi
  done ;;
esac
"""
PKG_INFO = """#!/bin/sh
P=$(cd "$(dirname "$0")/.." && pwd)
cat "$P/pkg/kit" "$P/pkg/installed" 2>/dev/null | sed 's/$/  a package/'
"""


def make_kit(tmp: Path, prefix: Path) -> tuple[Path, str]:
    src = tmp / "kitsrc" / str(prefix).lstrip("/")
    for d in ("bin", "sbin", "pkg"):
        (src / d).mkdir(parents=True)
    (src / "bin" / "pkgin").write_text(PKGIN)
    (src / "sbin" / "pkg_info").write_text(PKG_INFO)
    (src / "pkg" / "kit").write_text("pkg_install-20240307\npkgin-23.8.1\n")
    for f in (src / "bin" / "pkgin", src / "sbin" / "pkg_info"):
        f.chmod(0o755)
    kit = tmp / "bootstrap.tar.gz"
    with tarfile.open(kit, "w:gz") as tf:
        tf.add(tmp / "kitsrc", arcname=".")
    return kit, hashlib.sha256(kit.read_bytes()).hexdigest()


def write_lock(path: Path, prefix: Path, kit: Path, sha: str, packages: list[str]) -> Path:
    names = ", ".join(f'"{p}"' for p in packages)
    path.write_text(
        'format = 1\nname = "smartos-cbe"\nversion = "1"\nprovider = "pkgsrc"\n\n'
        '[path]\nbin = ["bin", "sbin"]\n\n'
        f'[pkgsrc]\nbootstrap_url = "file://{kit}"\nbootstrap_sha256 = "{sha}"\nprefix = "{prefix}"\n'
        f'repository = "{REPO_URL}"\npackages = [{names}]\n'
    )
    return path


def test_plan_follows_the_documented_pkgsrc_commands(tmp_path: Path) -> None:
    prefix = Path("/opt/smartos-cbe/1")
    lock = load(write_lock(tmp_path / "l.toml", prefix, Path("/k.tgz"), "b" * 64, ["gcc13-13.2.0", "gmake-4.4.1"]))
    assert lock.pkgsrc is not None
    steps = pkgsrc.plan(lock.pkgsrc, prefix, tmp_path)
    argvs = [s.argv for s in steps if s.argv]
    assert argvs[0][:2] == ("curl", "-fsSL") and argvs[0][-1] == "file:///k.tgz"
    assert argvs[1][:2] == ("tar", "-xzpf")
    assert ("/opt/smartos-cbe/1/bin/pkgin", "-y", "update") in argvs
    assert ("/opt/smartos-cbe/1/bin/pkgin", "-y", "install", "gcc13-13.2.0", "gmake-4.4.1") in argvs
    assert argvs[-1] == ("/opt/smartos-cbe/1/sbin/pkg_info",)
    (write,) = [s.write for s in steps if s.write]
    assert write == ("/opt/smartos-cbe/1/etc/pkgin/repositories.conf", REPO_URL + "\n")
    order = [s.check or s.what for s in steps]
    assert order.index("kit-sha256") < order.index("unpack bootstrap kit")  # hash checked before unpacking


def test_installed_set_must_equal_the_lock() -> None:
    pin = load_pin(["gcc13-13.2.0"])
    kit = {"pkgin-23.8.1"}
    assert pkgsrc.installed_set_problems("pkgin-23.8.1 x\ngcc13-13.2.0 y\n", pin, kit) == []
    assert pkgsrc.installed_set_problems("pkgin-23.8.1 x\ngcc13-13.2.0 y\nisl-0.26 z\n", pin, kit) == [
        "installed but not in the lock: isl-0.26"]
    assert pkgsrc.installed_set_problems("pkgin-23.8.1 x\ngcc13-13.2.1 y\n", pin, kit) == [
        "not installed: gcc13-13.2.0", "installed but not in the lock: gcc13-13.2.1"]


def load_pin(packages: list[str]) -> pkgsrc.PkgsrcPin:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        lock = load(write_lock(Path(d) / "l.toml", Path("/opt/x/1"), Path("/k"), "c" * 64, packages))
    assert lock.pkgsrc is not None
    return lock.pkgsrc


@pytest.mark.integration
def test_stand_in_kit_installs_in_place_and_checks_the_package_set(tmp_path: Path) -> None:
    root = tmp_path / "root"
    prefix = root / "1"
    kit, sha = make_kit(tmp_path, prefix)
    lock = write_lock(tmp_path / "l.toml", prefix, kit, sha, ["gcc13-13.2.0", "isl-0.26", "gmake-4.4.1"])
    inst = cbe.ensure(CbeSpec("smartos-cbe", "1", root, lock), install=True)
    assert inst.path.startswith(f"{prefix}/bin:{prefix}/sbin:")
    assert (prefix / "etc/pkgin/repositories.conf").read_text() == REPO_URL + "\n"
    assert "gmake-4.4.1" in (prefix / "pkg/installed").read_text()
    cbe.verify_full(CbeSpec("smartos-cbe", "1", root, lock))


@pytest.mark.integration
@pytest.mark.parametrize("case", ["unlisted-dependency", "missing-package", "bad-kit-hash", "wrong-prefix"])
def test_stand_in_kit_failures_leave_nothing_installed(tmp_path: Path, case: str) -> None:
    root = tmp_path / "root"
    prefix = root / "1"
    kit, sha = make_kit(tmp_path, prefix)
    packages = {"unlisted-dependency": ["gcc13-13.2.0"], "missing-package": ["missing-1.0"]}.get(case, ["gmake-4.4"])
    lock_prefix = tmp_path / "elsewhere" / "1" if case == "wrong-prefix" else prefix
    lock = write_lock(tmp_path / "l.toml", lock_prefix, kit, "d" * 64 if case == "bad-kit-hash" else sha, packages)
    with pytest.raises(CbeError) as exc:
        cbe.ensure(CbeSpec("smartos-cbe", "1", root, lock), install=True)
    assert exc.value.reason is Reason.CBE
    assert exc.value.where is not None and exc.value.where.line == 9  # the [pkgsrc] table
    assert not prefix.exists() and cbe.list_installed(root) == []
