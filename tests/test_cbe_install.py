"""Installing, checking, repairing and removing CBE versions (tarball provider)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pib import cbe
from pib.build.env import BuildEnv, build_environment
from pib.cbe import CbeStateError, Status
from pib.cbe.providers import tarball
from pib.config.types import CbeSpec
from pib.errors import CbeError, Reason
from pib.run import run

REPO = Path(__file__).resolve().parents[1]


class TinyCbe:
    """A published tarball CBE whose `tool` prints its version."""

    def __init__(self, base: Path, key: Ed25519PrivateKey, store: Path, version: str, tool_says: str) -> None:
        src = base / f"src-{version}-{tool_says}"
        (src / "bin").mkdir(parents=True)
        tool = src / "bin" / "tool"
        tool.write_text(f"#!/bin/sh\necho 'tool {tool_says}'\n")
        tool.chmod(0o755)
        self.published = tarball.publish(src, "tiny", version, store, key)
        self.lock = base / f"tiny-{version}.lock.toml"
        self.lock.write_text(self.published.lock_text())


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def spec_for(root: Path, lock: Path, version: str = "1") -> CbeSpec:
    return CbeSpec("tiny", version, root, lock)


def tool_output(inst: cbe.InstalledCbe, home: Path) -> str:
    return run(["tool"], env=build_environment(BuildEnv.of(inst), home=home), capture=True).stdout.strip()


def test_install_then_cheap_check_is_a_no_op(tmp_path: Path, key: Ed25519PrivateKey, store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    root = tmp_path / "root"
    inst = cbe.ensure(spec_for(root, t.lock), install=True, stores=[store], trusted_keys=[key.public_key()])
    assert inst.prefix == root / "1"
    assert inst.path.split(":")[0] == str(root / "1" / "bin")
    assert tool_output(inst, tmp_path) == "tool one"
    record = (root / "1" / ".pib" / "install.json").stat()
    again = cbe.ensure(spec_for(root, t.lock), install=False)
    assert again == inst
    assert (root / "1" / ".pib" / "install.json").stat().st_mtime_ns == record.st_mtime_ns
    assert cbe.verify_full(spec_for(root, t.lock)).lock_digest == inst.lock_digest
    assert not list((root / ".tmp").iterdir())


def test_missing_without_install_is_an_error_and_creates_nothing(tmp_path: Path, key: Ed25519PrivateKey,
                                                                  store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    with pytest.raises(CbeStateError) as exc:
        cbe.ensure(spec_for(tmp_path / "root", t.lock), install=False)
    assert exc.value.reason is Reason.CBE and exc.value.status is Status.MISSING
    assert not (tmp_path / "root" / "1").exists()


def test_lock_for_another_version_is_refused(tmp_path: Path, key: Ed25519PrivateKey, store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    with pytest.raises(CbeError) as exc:
        cbe.ensure(spec_for(tmp_path / "root", t.lock, version="2"), install=True)
    assert exc.value.reason is Reason.CBE
    assert not (tmp_path / "root" / "2").exists()


def test_out_of_date_is_reported_then_updated(tmp_path: Path, key: Ed25519PrivateKey, store: Path) -> None:
    root = tmp_path / "root"
    old = TinyCbe(tmp_path / "a", key, store, "1", "one")
    cbe.ensure(spec_for(root, old.lock), install=True, stores=[store], trusted_keys=[key.public_key()])
    fixed = TinyCbe(tmp_path / "b", key, store, "1", "one-fixed")  # same version, changed lock
    with pytest.raises(CbeStateError) as exc:
        cbe.ensure(spec_for(root, fixed.lock), install=True, stores=[store], trusted_keys=[key.public_key()])
    assert exc.value.status is Status.OUTDATED
    inst = cbe.ensure(spec_for(root, fixed.lock), install=True, update=True, stores=[store],
                      trusted_keys=[key.public_key()])
    assert tool_output(inst, tmp_path) == "tool one-fixed"
    assert inst.lock_digest == cbe.load_lock(fixed.lock).digest != cbe.load_lock(old.lock).digest


@pytest.mark.parametrize("edit", ["rewrite", "add", "remove", "chmod", "same-size-same-mtime"])
def test_hand_edited_prefix_is_caught_and_repaired(tmp_path: Path, key: Ed25519PrivateKey, store: Path,
                                                   edit: str) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    root = tmp_path / "root"
    spec = spec_for(root, t.lock)
    cbe.ensure(spec, install=True, stores=[store], trusted_keys=[key.public_key()])
    tool = root / "1" / "bin" / "tool"
    st = tool.stat()
    if edit == "rewrite":
        tool.write_text("#!/bin/sh\necho 'tool evil-version'\n")
    elif edit == "add":
        (root / "1" / "bin" / "cc").write_text("#!/bin/sh\n")
    elif edit == "remove":
        tool.unlink()
    elif edit == "chmod":
        tool.chmod(0o777)
    else:
        tool.write_text("#!/bin/sh\necho 'tool XXX'\n")  # same length as "one"
        os.utime(tool, ns=(st.st_atime_ns, st.st_mtime_ns))
    if edit == "same-size-same-mtime":
        # The cheap check cannot see this; the full check must.
        cbe.ensure(spec, install=False)
        with pytest.raises(CbeStateError) as exc:
            cbe.verify_full(spec)
    else:
        with pytest.raises(CbeStateError) as exc:
            cbe.ensure(spec, install=True)  # install alone never overwrites a modified prefix
    assert exc.value.status is Status.MODIFIED
    inst = cbe.ensure(spec, install=True, update=True, stores=[store], trusted_keys=[key.public_key()])
    assert tool_output(inst, tmp_path) == "tool one"
    cbe.verify_full(spec)


def test_half_installed_directory_is_reported_then_replaced(tmp_path: Path, key: Ed25519PrivateKey,
                                                            store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    root = tmp_path / "root"
    (root / "1" / "bin").mkdir(parents=True)
    (root / "1" / "bin" / "tool").write_text("#!/bin/sh\necho 'tool stale'\n")
    spec = spec_for(root, t.lock)
    with pytest.raises(CbeStateError) as exc:
        cbe.ensure(spec, install=False)
    assert exc.value.status is Status.HALF
    assert [v.complete for v in cbe.list_installed(root)] == [False]
    inst = cbe.ensure(spec, install=True, stores=[store], trusted_keys=[key.public_key()])
    assert tool_output(inst, tmp_path) == "tool one"


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from pib import cbe
    from pib.cbe import install
    from pib.config.types import CbeSpec
    real = install._populate
    def populate(lock, prefix, ctx):
        real(lock, prefix, ctx)
        (prefix / "bin" / "half").write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)   # killed after unpacking, before the record
    install._populate = populate
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    pub = load_pem_public_key(Path(sys.argv[4]).read_bytes())
    cbe.ensure(CbeSpec("tiny", "1", Path(sys.argv[1]), Path(sys.argv[2])), install=True,
               stores=[Path(sys.argv[3])], trusted_keys=[pub])
""")


def _pub_pem(key: Ed25519PrivateKey, path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_killed_install_leaves_nothing_that_looks_installed(tmp_path: Path, key: Ed25519PrivateKey,
                                                            store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    root = tmp_path / "root"
    pub = _pub_pem(key, tmp_path / "pub.pem")
    proc = subprocess.run([sys.executable, "-c", KILLER, root, t.lock, store, pub], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert not (root / "1").exists()
    assert cbe.list_installed(root) == []
    assert list((root / ".tmp").glob("1@*"))  # the leftover is there, out of sight
    with pytest.raises(CbeStateError) as exc:
        cbe.ensure(spec_for(root, t.lock), install=False)
    assert exc.value.status is Status.MISSING
    inst = cbe.ensure(spec_for(root, t.lock), install=True, stores=[store], trusted_keys=[key.public_key()])
    assert not (inst.prefix / "bin" / "half").exists()
    assert not list((root / ".tmp").glob("1@*"))


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pib import cbe
    from pib.cbe import install
    from pib.config.types import CbeSpec
    real = install._populate
    def populate(lock, prefix, ctx):
        with open(sys.argv[5], "a") as fh:
            fh.write("populate\\n")
        time.sleep(1.0)    # long enough for the other process to be waiting on the lock
        return real(lock, prefix, ctx)
    install._populate = populate
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    pub = load_pem_public_key(Path(sys.argv[4]).read_bytes())
    inst = cbe.ensure(CbeSpec("tiny", "1", Path(sys.argv[1]), Path(sys.argv[2])), install=True,
                      stores=[Path(sys.argv[3])], trusted_keys=[pub])
    print(inst.prefix, inst.lock_digest)
""")


def test_two_concurrent_installs_share_one_copy(tmp_path: Path, key: Ed25519PrivateKey, store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    root = tmp_path / "root"
    pub = _pub_pem(key, tmp_path / "pub.pem")
    count = tmp_path / "populate-count"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, root, t.lock, store, pub, count], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] and outs[0][0].startswith(str(root / "1"))
    assert count.read_text().count("populate") == 1
    assert [v.version for v in cbe.list_installed(root)] == ["1"]


def test_corrupt_tarball_in_store_is_refused(tmp_path: Path, key: Ed25519PrivateKey, store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    archive = store / "cbe-tiny" / f"{t.published.key}.{t.published.key}.tar.zst"  # key = archive SHA-256
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    root = tmp_path / "root"
    with pytest.raises(CbeError) as exc:
        cbe.ensure(spec_for(root, t.lock), install=True, stores=[store], trusted_keys=[key.public_key()])
    assert exc.value.reason is Reason.CBE
    assert exc.value.where is not None and exc.value.where.path == str(t.lock)
    assert not (root / "1").exists()
    assert not list((root / ".cache" / "tarball").glob("*.tar.zst"))


def test_metadata_signed_by_an_untrusted_key_is_refused(tmp_path: Path, key: Ed25519PrivateKey,
                                                        store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    other = Ed25519PrivateKey.generate()
    root = tmp_path / "root"
    with pytest.raises(CbeError):
        cbe.ensure(spec_for(root, t.lock), install=True, stores=[store], trusted_keys=[other.public_key()])
    # Tampered metadata (pointing at another archive) fails the signature too.
    meta_path = store / "cbe-tiny" / f"{t.published.key}.json"
    meta = json.loads(meta_path.read_text())
    meta["archive_size"] += 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CbeError):
        cbe.ensure(spec_for(root, t.lock), install=True, stores=[store], trusted_keys=[key.public_key()])
    assert not (root / "1").exists()


def test_no_trusted_keys_or_no_store_is_a_clear_error(tmp_path: Path, key: Ed25519PrivateKey,
                                                      store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    for stores, keys in (([store], []), ([], [key.public_key()]), ([tmp_path / "empty"], [key.public_key()])):
        with pytest.raises(CbeError) as exc:
            cbe.ensure(spec_for(tmp_path / "root", t.lock), install=True, stores=stores, trusted_keys=keys)
        assert exc.value.reason is Reason.CBE and exc.value.hint


def test_build_path_ignores_callers_path_opt_local_and_user_dirs(tmp_path: Path, key: Ed25519PrivateKey,
                                                                 store: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    decoy_dir = tmp_path / "decoy"
    decoy_dir.mkdir()
    decoy = decoy_dir / "tool"
    decoy.write_text("#!/bin/sh\necho 'tool DECOY'\n")
    decoy.chmod(0o755)
    monkeypatch.setenv("PATH", f"{decoy_dir}:/opt/local/bin:{Path.home()}/.local/bin:{os.environ['PATH']}")
    monkeypatch.setenv("CFLAGS", "-DLEAK")
    t = TinyCbe(tmp_path, key, store, "1", "one")
    spec = CbeSpec("tiny", "1", tmp_path / "root", t.lock, system_path=("/usr/bin", "/bin"))
    inst = cbe.ensure(spec, install=True, stores=[store], trusted_keys=[key.public_key()])
    env = build_environment(BuildEnv.of(inst), {"EXTRA": "1"}, home=tmp_path / "home", source_date_epoch="0")
    assert env["PATH"] == f"{inst.prefix}/bin:/usr/bin:/bin"
    assert "CFLAGS" not in env and env["EXTRA"] == "1" and env["SOURCE_DATE_EPOCH"] == "0"
    assert env["HOME"] == str(tmp_path / "home")
    assert run(["tool"], env=env, capture=True).stdout.strip() == "tool one"
    assert run(["sh", "-c", "command -v tool"], env=env, capture=True).stdout.strip() == str(inst.prefix / "bin/tool")


def test_users_listed_and_rm_refused_while_used(tmp_path: Path, key: Ed25519PrivateKey, store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    root = tmp_path / "root"
    inst = cbe.ensure(spec_for(root, t.lock), install=True, stores=[store], trusted_keys=[key.public_key()])
    ws = tmp_path / "ws"
    ws.mkdir()
    cbe.record_user(inst, ws)
    cbe.record_user(inst, ws)  # idempotent
    (listed,) = cbe.list_installed(root)
    assert listed.users == (ws.resolve(),) and listed.complete and listed.lock_digest == inst.lock_digest
    with pytest.raises(CbeError) as exc:
        cbe.remove(root, "1")
    assert exc.value.reason is Reason.CBE
    assert (root / "1").is_dir()
    cbe.remove(root, "1", force=True)
    assert cbe.list_installed(root) == []
    with pytest.raises(CbeError):
        cbe.remove(root, "1")


def test_users_whose_workspace_is_gone_do_not_block_rm(tmp_path: Path, key: Ed25519PrivateKey,
                                                       store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    root = tmp_path / "root"
    inst = cbe.ensure(spec_for(root, t.lock), install=True, stores=[store], trusted_keys=[key.public_key()])
    ws = tmp_path / "gone"
    ws.mkdir()
    cbe.record_user(inst, ws)
    ws.rmdir()
    cbe.remove(root, "1")
    assert not (root / "1").exists()


def test_default_root_is_per_user_when_opt_is_not_writable(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    monkeypatch.setattr(os, "access", lambda *_a, **_k: False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert cbe.default_root("smartos-cbe") == tmp_path / "pib" / "cbe" / "smartos-cbe"
    monkeypatch.setattr(os, "access", lambda *_a, **_k: True)
    assert cbe.default_root("smartos-cbe-does-not-exist") == Path("/opt/smartos-cbe-does-not-exist")


def test_a_workspace_switching_versions_stops_holding_the_old_one(tmp_path: Path, key: Ed25519PrivateKey,
                                                                  store: Path) -> None:
    root = tmp_path / "root"
    ws = tmp_path / "ws"
    ws.mkdir()
    for version in ("1", "2"):
        t = TinyCbe(tmp_path / version, key, store, version, f"v{version}")
        inst = cbe.ensure(spec_for(root, t.lock, version), install=True, stores=[store],
                          trusted_keys=[key.public_key()])
        cbe.record_user(inst, ws)
    assert {v.version: v.users for v in cbe.list_installed(root)} == {"1": (), "2": (ws.resolve(),)}
    cbe.remove(root, "1")
    with pytest.raises(CbeError):
        cbe.remove(root, "2")


def test_build_environment_defaults_to_a_private_scratch_home(tmp_path: Path, key: Ed25519PrivateKey,
                                                              store: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/root-of-the-caller")
    t = TinyCbe(tmp_path, key, store, "1", "one")
    inst = cbe.ensure(spec_for(tmp_path / "root", t.lock), install=True, stores=[store],
                      trusted_keys=[key.public_key()])
    env = build_environment(BuildEnv.of(inst))
    home = Path(env["HOME"])
    assert home != Path("/root-of-the-caller") and home.is_dir() and (home.stat().st_mode & 0o077) == 0
    assert set(env) == {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "PIB_CBE", "PIB_CBE_PREFIX"}


def test_unwritable_root_is_a_clear_error(tmp_path: Path, key: Ed25519PrivateKey, store: Path) -> None:
    t = TinyCbe(tmp_path, key, store, "1", "one")
    root = tmp_path / "not-a-dir"
    root.write_text("")
    with pytest.raises(CbeError) as exc:
        cbe.ensure(spec_for(root, t.lock), install=True, stores=[store], trusted_keys=[key.public_key()])
    assert exc.value.reason is Reason.CBE and exc.value.hint


def test_list_with_check_reports_each_versions_state(tmp_path: Path, key: Ed25519PrivateKey,
                                                     store: Path) -> None:
    root = tmp_path / "root"
    for version in ("1", "2"):
        t = TinyCbe(tmp_path / version, key, store, version, f"v{version}")
        cbe.ensure(spec_for(root, t.lock, version), install=True, stores=[store], trusted_keys=[key.public_key()])
    (root / "2" / "bin" / "extra").write_text("")
    (root / "3").mkdir()
    states = {v.version: v.state for v in cbe.list_installed(root, check=True)}
    assert states == {"1": "ok", "2": "modified", "3": "half-installed"}
    assert {v.version: v.state for v in cbe.list_installed(root)} == {"1": "", "2": "", "3": ""}
