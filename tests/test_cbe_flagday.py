"""The flag day, through the real CLI: two workspaces on two CBE versions build at once.

Each version's `tool` prints its version into the build log and the proto
area; a decoy `tool` earlier on the caller's PATH must never be used. A third
workspace then installs version 3 and the first two still build with their
own versions. `pib cbe ls` shows who uses what; `pib cbe rm` refuses while a
workspace uses a version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pib.artifacts import signing
from tests.gitutil import make_repo, pib

BUILD_SH = """\
#!/bin/sh
set -e
tool
mkdir -p "$DESTDIR"
tool > "$DESTDIR/version.txt"
command -v tool > "$DESTDIR/which.txt"
"""


def _keys(tmp: Path) -> tuple[Path, Path]:
    priv, pub = tmp / "signing.key", tmp / "trusted.pub"
    signing.generate_keypair(priv, pub)
    return priv, pub


def _publish(tmp: Path, version: str, store: Path, key: Path, lock_out: Path) -> None:
    src = tmp / f"cbe-src-{version}"
    (src / "bin").mkdir(parents=True)
    tool = src / "bin" / "tool"
    tool.write_text(f"#!/bin/sh\necho 'flagcc tool v{version}'\n")
    tool.chmod(0o755)
    r = subprocess.run([sys.executable, "-m", "pib", "cbe", "publish", str(src), "--version", version,
                        "--name", "flagcc", "--store", str(store), "--key", str(key), "--lock-out", str(lock_out)],
                       capture_output=True, text=True, cwd=tmp, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr


def _workspace(tmp: Path, n: int, root: Path, store: Path, key: Path, pub: Path) -> Path:
    ws = tmp / f"ws{n}"
    ws.mkdir()
    _publish(tmp, str(n), store, key, ws / "cbe.lock.toml")
    (ws / "pib.toml").write_text(
        '[platform]\nmin_version = "1"\n\n'
        f'[cbe]\nname = "flagcc"\nversion = "{n}"\nroot = "{root}"\nlock = "cbe.lock.toml"\n'
        'system_path = ["/usr/bin", "/bin"]\n\n'
        f'[local_store]\npath = "{store}"\n\n'
        f'[trust]\npublic_keys = ["{pub}"]\n\n'
        '[components.a]\nsource = "../repos/a"\nbranch = "main"\nbuild = ["./build.sh"]\n'
    )
    return ws


def _run(ws: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pib", "-C", str(ws), *args], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL)


def _built(ws: Path, name: str) -> str:
    (hit,) = [p for p in ws.rglob(name) if "proto" in str(p)]
    return hit.read_text().strip()


@pytest.mark.integration
def test_flag_day_two_versions_side_by_side_then_a_third(tmp_path: Path) -> None:
    make_repo(tmp_path / "repos" / "a", {"build.sh": BUILD_SH})
    root, store = tmp_path / "cbe-root", tmp_path / "store"
    key, pub = _keys(tmp_path)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "tool").write_text("#!/bin/sh\necho DECOY\n")
    (decoy / "tool").chmod(0o755)
    env = {**os.environ, "PATH": f"{decoy}:/opt/local/bin:{os.environ['PATH']}"}
    ws1, ws2 = (_workspace(tmp_path, n, root, store, key, pub) for n in (1, 2))

    for ws in (ws1, ws2):
        r = _run(ws, "configure", "--no-install", env=env)
        assert r.returncode == 7, r.stderr  # the CBE is not installed yet
        r = _run(ws, "cbe", "install", env=env)
        assert r.returncode == 0, r.stderr
        assert _run(ws, "configure", env=env).returncode == 0

    procs = [subprocess.Popen([sys.executable, "-m", "pib", "-C", str(ws), "build", "-q", "--no-image"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              stdin=subprocess.DEVNULL) for ws in (ws1, ws2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for n, ws in ((1, ws1), (2, ws2)):
        assert _built(ws, "version.txt") == f"flagcc tool v{n}"
        assert _built(ws, "which.txt") == str(root / str(n) / "bin" / "tool")
        logs = "".join(p.read_text() for p in (ws / "log").glob("a.*.log"))
        assert f"flagcc tool v{n}" in logs
        other = 2 if n == 1 else 1
        assert f"flagcc tool v{other}" not in logs and "DECOY" not in logs
        # The log records the exact environment: only this version's prefix, no decoy, no /opt/local.
        assert f"{root}/{n}/bin" in logs and f"{root}/{other}/" not in logs
        assert str(decoy) not in logs and "/opt/local" not in logs

    ws3 = _workspace(tmp_path, 3, root, store, key, pub)
    assert _run(ws3, "cbe", "install", env=env).returncode == 0
    for n, ws in ((1, ws1), (2, ws2)):
        r = _run(ws, "build", "-q", "--no-image", "--force", env=env)
        assert r.returncode == 0, r.stderr
        assert _built(ws, "version.txt") == f"flagcc tool v{n}"

    listing = json.loads(_run(ws1, "cbe", "ls", "--json", env=env).stdout)
    users = {v["version"]: v["users"] for v in listing["versions"]}
    assert users == {"1": [str(ws1.resolve())], "2": [str(ws2.resolve())], "3": [str(ws3.resolve())]}
    assert [v["version"] for v in listing["versions"] if v["current"]] == ["1"]

    r = _run(ws1, "cbe", "rm", "2", env=env)
    assert r.returncode == 7 and (root / "2").is_dir()
    assert _run(ws1, "cbe", "rm", "2", "--force", env=env).returncode == 0
    assert not (root / "2").exists()
    assert _run(ws2, "build", "-q", "--no-image", "--force", env=env).returncode == 7


@pytest.mark.integration
def test_cli_verify_catches_a_hand_edit_and_install_update_repairs(tmp_path: Path) -> None:
    make_repo(tmp_path / "repos" / "a", {"build.sh": BUILD_SH})
    root, store = tmp_path / "cbe-root", tmp_path / "store"
    key, pub = _keys(tmp_path)
    ws = _workspace(tmp_path, 1, root, store, key, pub)
    env = dict(os.environ)
    r = _run(ws, "cbe", "install", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["installed"] is True
    r = _run(ws, "cbe", "verify", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["check"] == "cheap"
    tool = root / "1" / "bin" / "tool"
    st = tool.stat()
    tool.write_text(tool.read_text().replace("v1", "v9"))  # same size
    os.utime(tool, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _run(ws, "cbe", "verify", env=env).returncode == 0  # the cheap check cannot see it
    r = _run(ws, "cbe", "verify", "--full", env=env)
    assert r.returncode == 7 and "--update" in r.stderr
    assert _run(ws, "cbe", "install", "--update", env=env).returncode == 0
    assert _run(ws, "cbe", "verify", "--full", env=env).returncode == 0
    assert pib(ws, "cbe", "ls").returncode == 0


def test_cli_outside_a_workspace(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "PIB_SIGNING_KEY"}
    base = [sys.executable, "-m", "pib"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                              stdin=subprocess.DEVNULL)

    r = cli("cbe", "publish", str(src), "--version", "1", "--name", "x", "--store", str(tmp_path / "store"))
    assert r.returncode == 7, r.stderr  # no signing key anywhere
    key, _pub = _keys(tmp_path)
    r = cli("cbe", "publish", str(tmp_path / "nope"), "--version", "1", "--name", "x",
            "--store", str(tmp_path / "store"), "--key", str(key))
    assert r.returncode == 7
    r = cli("cbe", "publish", str(src), "--version", "1", "--name", "x", "--store", str(tmp_path / "store"),
            "--key", str(key))
    assert r.returncode == 0 and 'provider = "tarball"' in r.stdout
    r = cli("cbe", "ls", "--root", str(tmp_path / "empty-root"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["versions"] == []
    assert cli("cbe").returncode == 2
