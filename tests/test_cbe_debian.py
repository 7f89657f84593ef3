"""The debian provider with the real gcc locks from examples/platform/cbe."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pib.build.env import BuildEnv, build_environment
from pib.cbe import ensure, list_installed
from pib.cbe.pins import load
from pib.cbe.providers import debian
from pib.config.types import CbeSpec
from pib.errors import CbeError, Reason
from pib.run import Log, run

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "examples" / "platform" / "cbe"
HELLO = '#include <stdio.h>\nint main(void){printf("gcc %d\\n", __GNUC__);return 0;}\n'


def test_example_locks_parse_and_pin_the_design_package_set() -> None:
    lock = load(LOCKS / "gcc12.lock.toml")
    names = {p.name for p in lock.packages}
    assert {"gcc-12", "cpp-12", "libc6-dev", "binutils-x86-64-linux-gnu", "make"} <= names
    assert lock.provider == "debian"
    assert all(len(p.sha256) == 1 for p in lock.packages)
    assert {f.path for f in lock.files} >= {"bin/cc", "bin/make", "bin/ld"}
    old = load(LOCKS / "gcc11.lock.toml")
    assert old.digest != lock.digest and old.version != lock.version


def test_download_argv_pins_name_arch_and_version() -> None:
    lock = load(LOCKS / "gcc12.lock.toml")
    argv = debian.download_argv(lock.packages[:1])
    assert argv[:2] == ["apt-get", "download"]
    assert argv[-1] == f"gcc-12:amd64={lock.packages[0].version}"


@pytest.mark.integration
def _is_static_elf(path: Path) -> bool:
    """An ELF executable with no PT_INTERP program header (no dynamic loader)."""
    import struct

    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not a 64-bit ELF file"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


def test_gcc11_and_gcc12_side_by_side_compile_static_programs(tmp_path: Path) -> None:
    root = tmp_path / "cbe"
    outputs = {}
    for major in ("11", "12"):
        spec = CbeSpec("pib-example-cbe", f"gcc{major}-1", root, LOCKS / f"gcc{major}.lock.toml")
        with Log(tmp_path / f"install-{major}.log") as log:
            inst = ensure(spec, install=True, log=log)
        src = tmp_path / f"hello{major}.c"
        src.write_text(HELLO)
        env = build_environment(BuildEnv.of(inst), home=tmp_path)
        assert env["PATH"].split(":")[0] == str(inst.prefix / "bin")
        # `env -i`: nothing but the CBE's PATH reaches the compiler.
        run(["env", "-i", f"PATH={inst.path}", "cc", "-static", "-O2", "-o", tmp_path / f"hello{major}", src],
            env=env, cwd=tmp_path, reason=Reason.BUILD)
        # Runs with an empty environment: static, no loader, no prefix needed.
        out = subprocess.run([tmp_path / f"hello{major}"], env={}, capture_output=True, text=True, check=True)
        outputs[major] = out.stdout.strip()
        assert _is_static_elf(tmp_path / f"hello{major}")
    assert outputs == {"11": "gcc 11", "12": "gcc 12"}
    assert [v.version for v in list_installed(root)] == ["gcc11-1", "gcc12-1"]
    # The second install reused nothing it should not have: each version has its own compiler.
    assert (root / "gcc11-1" / "usr" / "bin" / "gcc-11").is_file()
    assert not (root / "gcc11-1" / "usr" / "bin" / "gcc-12").exists()


@pytest.mark.integration
def test_tampered_cached_deb_is_refused_before_unpacking(tmp_path: Path) -> None:
    text = (LOCKS / "gcc12.lock.toml").read_text()
    lock_path = tmp_path / "tiny.lock.toml"
    # A one-package lock whose pin does not match what the archive serves.
    real = load(LOCKS / "gcc12.lock.toml")
    make = next(p for p in real.packages if p.name == "make")
    assert make.sha256[0] in text
    lock_path.write_text(
        'format = 1\nname = "t"\nversion = "1"\nprovider = "debian"\n\n'
        f'[[packages]]\nname = "make"\nversion = "{make.version}"\narch = "amd64"\nsha256 = "{"0" * 64}"\n'
    )
    spec = CbeSpec("t", "1", tmp_path / "root", lock_path)
    with pytest.raises(CbeError) as exc:
        ensure(spec, install=True)
    assert exc.value.reason is Reason.CBE
    assert exc.value.where is not None and exc.value.where.line == 6
    assert not (tmp_path / "root" / "1").exists()
    # Nothing unverified entered the download cache.
    from pib.fetch import download_cache

    cache = download_cache() / "sha256"
    assert not cache.is_dir() or all(p.name != "0" * 64 and not p.name.startswith(".") for p in cache.iterdir())


@pytest.mark.integration
def test_corrupt_download_cache_entry_is_fetched_again(tmp_path: Path) -> None:
    real = load(LOCKS / "gcc12.lock.toml")
    make = next(p for p in real.packages if p.name == "make")
    cache = tmp_path / "cache"
    (fetched,) = debian.fetch((make,), cache, None, apt=real.apt).values()
    got = fetched.path
    good = got.read_bytes()
    got.chmod(0o644)
    got.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one flipped bit
    (again,) = debian.fetch((make,), cache, None, apt=real.apt).values()
    assert again.path.read_bytes() == good and again.came_from == "upstream"
