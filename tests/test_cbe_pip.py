"""The pip provider with tiny wheels built here (no network: --no-index --find-links)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from pib import cbe
from pib.build.env import BuildEnv, build_environment
from pib.cbe.pins import load
from pib.cbe.providers import pip as pip_provider
from pib.config.types import CbeSpec
from pib.errors import CbeError, Reason
from pib.run import run


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(dest: Path, name: str, version: str) -> tuple[Path, str]:
    """A minimal pure-Python wheel with a console script printing its version."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"def main():\n    print('{name} {version}')\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: pib-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": f"[console_scripts]\n{name} = {name}:main\n".encode(),
    }
    record = "\n".join([*(_record_line(n, d) for n, d in files.items()), f"{dist}/RECORD,,"]) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    whl = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for n, d in files.items():
            zf.writestr(zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0)), d)
        zf.writestr(zipfile.ZipInfo(f"{dist}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)), record)
    return whl, hashlib.sha256(whl.read_bytes()).hexdigest()


def write_lock(path: Path, version: str, pkg_version: str, sha: str) -> Path:
    path.write_text(
        'format = 1\nname = "pytools"\n'
        f'version = "{version}"\nprovider = "pip"\n\n'
        '[pip]\nfind_links = ["wheels"]\n\n'
        f'[[packages]]\nname = "tinytool"\nversion = "{pkg_version}"\nsha256 = "{sha}"\n'
    )
    return path


@pytest.fixture
def wheels(tmp_path: Path) -> dict[str, str]:
    return {v: make_wheel(tmp_path / "wheels", "tinytool", v)[1] for v in ("1.0", "2.0")}


def test_install_argv_pins_hashes_and_no_dependencies(tmp_path: Path, wheels: dict[str, str]) -> None:
    lock = load(write_lock(tmp_path / "l.toml", "1", "1.0", wheels["1.0"]))
    argv = pip_provider.install_argv(lock, tmp_path / "p", tmp_path / "r.txt", tmp_path / "c", "python3")
    assert {"--require-hashes", "--no-deps", "--no-index", "--only-binary=:all:"} <= set(argv)
    assert argv[argv.index("--find-links") + 1] == str(tmp_path / "wheels")
    assert pip_provider.requirements(lock) == f"tinytool==1.0 --hash=sha256:{wheels['1.0']}\n"


@pytest.mark.integration
def test_two_pip_versions_side_by_side(tmp_path: Path, wheels: dict[str, str]) -> None:
    root = tmp_path / "root"
    seen = {}
    for cbe_version, pkg in (("1", "1.0"), ("2", "2.0")):
        lock = write_lock(tmp_path / f"v{cbe_version}.toml", cbe_version, pkg, wheels[pkg])
        inst = cbe.ensure(CbeSpec("pytools", cbe_version, root, lock), install=True)
        env = build_environment(BuildEnv.of(inst), home=tmp_path)
        assert env["PYTHONNOUSERSITE"] == "1" and env["PYTHONPATH"].startswith(str(inst.prefix))
        seen[cbe_version] = run(["tinytool"], env=env, capture=True).stdout.strip()
        cbe.verify_full(CbeSpec("pytools", cbe_version, root, lock))
    assert seen == {"1": "tinytool 1.0", "2": "tinytool 2.0"}


@pytest.mark.integration
@pytest.mark.parametrize("case", ["missing-version", "wrong-hash"])
def test_bad_pip_lock_is_a_clear_error_and_installs_nothing(tmp_path: Path, wheels: dict[str, str],
                                                            case: str) -> None:
    if case == "missing-version":
        lock = write_lock(tmp_path / "l.toml", "1", "9.9", wheels["1.0"])
    else:
        lock = write_lock(tmp_path / "l.toml", "1", "1.0", wheels["2.0"])
    root = tmp_path / "root"
    with pytest.raises(CbeError) as exc:
        cbe.ensure(CbeSpec("pytools", "1", root, lock), install=True)
    assert exc.value.reason is Reason.CBE
    assert exc.value.where is not None and exc.value.where.line == 9  # the [[packages]] entry
    assert not (root / "1").exists() and cbe.list_installed(root) == []


@pytest.mark.integration
def test_real_toolchain_from_pypi(tmp_path: Path) -> None:
    lock = Path(__file__).resolve().parents[1] / "examples" / "platform" / "cbe" / "ninja.lock.toml"
    inst = cbe.ensure(CbeSpec("pib-tools", "ninja-1.11.1.1", tmp_path / "root", lock), install=True)
    out = run(["ninja", "--version"], env=build_environment(BuildEnv.of(inst), home=tmp_path), capture=True).stdout
    assert out.strip().startswith("1.11.1")
    assert (inst.prefix / "bin" / "ninja").is_file()
