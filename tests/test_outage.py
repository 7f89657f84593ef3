"""Store outages through the whole `pib build` path: bounded time, a warning, a local build.

Real servers (a private nginx and a private SeaweedFS, so they can be
stopped and killed) hold a published artifact of the `big` component; the
protocol-level cases use the misbehaving server on loopback. Every build
must succeed by building `big` locally, say which store failed, and finish
within a bound set by the store's time-out and retries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pib.artifacts.signing import generate_keypair
from tests.gitutil import make_repo
from tests.reliability import tally
from tests.services.badhttp import MODES, BadHttp
from tests.services.nginx import start_nginx
from tests.services.ports import stop
from tests.services.seaweed import ACCESS_KEY, SECRET_KEY, start_seaweed
from tests.test_kill import LAUNCHER, REPO, kill_tree

pytestmark = pytest.mark.integration

TIMEOUT, RETRIES = 2, 1
BOUND = 45.0  # seconds for a whole build against a failing store (the build itself takes about one)

BIG_BUILD = """\
#!/bin/sh
set -e
mkdir -p "$DESTDIR/share"
head -c 30000000 /dev/urandom > "$DESTDIR/share/blob"
"""


@dataclass
class Env:
    root: Path
    env: dict[str, str]
    launcher: Path
    counter: list[int]

    def ws(self, store: str) -> Path:
        self.counter[0] += 1
        ws = self.root / f"ws{self.counter[0]}"
        ws.mkdir()
        (ws / "pib.toml").write_text(f"""\
[platform]
min_version = "1"

[local_store]
path = "store"

[components.big]
source = "{self.root}/repos/big"
build = ["./build.sh"]
prebuilt = true

{store}

[trust]
public_keys = ["{self.root}/key.pub"]
signing_key = "{self.root}/key.priv"
publish = "always"
""")
        r = self.pib(ws, "configure")
        assert r.returncode == 0, r.stderr
        return ws

    def pib(self, ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pib", "-C", str(ws), *args], capture_output=True, text=True,
                              env=self.env, stdin=subprocess.DEVNULL, timeout=300)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("outage")
    make_repo(root / "repos" / "big", {"build.sh": BIG_BUILD})
    generate_keypair(root / "key.priv", root / "key.pub")
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PIB_", "XDG_", "AWS_"))}
    e.update(HOME=str(root / "home"), XDG_CACHE_HOME=str(root / "home" / "cache"),
             XDG_CONFIG_HOME=str(root / "home" / "config"), PYTHONPATH=str(REPO))
    launcher = root / "launch.py"
    launcher.write_text(LAUNCHER.format(repo=str(REPO)))
    return Env(root, e, launcher, [0])


def http_store(url: str) -> str:
    return f'[[store]]\nname = "remote"\ntype = "http"\nurl = "{url}"\ntimeout = {TIMEOUT}\nretries = {RETRIES}\n'


def s3_store(endpoint: str, bucket: str) -> str:
    return (f'[[store]]\nname = "remote"\ntype = "s3"\nbucket = "{bucket}"\nendpoint_url = "{endpoint}"\n'
            f'region = "us-east-1"\ntimeout = {TIMEOUT}\nretries = {RETRIES}\n')


def publish(env: Env, store: str) -> None:
    ws = env.ws(store)
    r = env.pib(ws, "build", "--publish", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["components"][0]["published"] == ["remote"]


def check_local_build(r: subprocess.CompletedProcess[str], seconds: float, ws: Path) -> None:
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    data = json.loads(r.stdout)
    assert data["components"][0]["action"] == "built"
    assert any("remote" in w for w in data["warnings"]), data["warnings"]
    assert seconds < BOUND, f"a failing store cost {seconds:.1f}s"
    assert (ws / "proto.big" / "share" / "blob").stat().st_size == 30_000_000
    assert not [p.name for p in ws.iterdir() if p.name.startswith(".proto.")]


def timed_build(env: Env, ws: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = env.pib(ws, "build", "--json")
    return r, time.monotonic() - t0


def build_killing_server_mid_transfer(env: Env, ws: Path, hook: str, kill: subprocess.Popen[bytes]) -> tuple[
        subprocess.CompletedProcess[str], float]:
    """Run pib until the archive download has started, SIGKILL the server, let pib carry on."""
    mark, go = ws / "at-download", ws / "go"
    e = dict(env.env, PIB_KILL_AT=hook, PIB_KILL_MARK=str(mark), PIB_KILL_GO=str(go))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(env.launcher), "-C", str(ws), "build", "--json"], env=e,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() - t0 < 120, "the download never started"
            time.sleep(0.01)
        paused = time.monotonic()
        os.killpg(kill.pid, signal.SIGKILL)
        kill.wait(timeout=30)
        go.touch()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    # The time pib spent paused while the server was being killed is not the store's cost.
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - paused


@pytest.fixture(scope="module")
def private_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, server = start_nginx(tmp_path_factory.mktemp("nginx-outage"))
    try:
        yield proc, server.url + "/pib"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def private_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, server, _ = start_seaweed(tmp_path_factory.mktemp("seaweed-outage"))
    try:
        server.client().create_bucket(Bucket="outage")  # type: ignore[attr-defined]
        yield proc, server.endpoint_url
    finally:
        stop(proc)


def test_nginx_killed_mid_transfer_then_stopped(env: Env, private_nginx: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = private_nginx
    store = http_store(url)
    publish(env, store)
    with tally("outage", "nginx killed mid-transfer"):
        ws = env.ws(store)
        r, seconds = build_killing_server_mid_transfer(env, ws, "pib.store.http|HttpStore._stream_to|1", proc)
        check_local_build(r, seconds, ws)
    with tally("outage", "nginx stopped (connection refused)"):
        ws = env.ws(store)
        r, seconds = timed_build(env, ws)
        check_local_build(r, seconds, ws)


def test_seaweedfs_killed_mid_transfer_then_stopped(env: Env,
                                                    private_seaweed: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, endpoint = private_seaweed
    store = s3_store(endpoint, "outage")
    env.env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    publish(env, store)
    with tally("outage", "SeaweedFS killed mid-transfer"):
        ws = env.ws(store)
        r, seconds = build_killing_server_mid_transfer(env, ws, "pib.store.s3|S3Store._read_body|1|.tar.zst", proc)
        check_local_build(r, seconds, ws)
    with tally("outage", "SeaweedFS stopped (connection refused)"):
        ws = env.ws(store)
        r, seconds = timed_build(env, ws)
        check_local_build(r, seconds, ws)


@pytest.mark.parametrize("mode", [*MODES, "refused"])
def test_misbehaving_server(env: Env, badhttp: BadHttp, mode: str) -> None:
    with tally("outage", f"HTTP server: {mode}"):
        url = badhttp.refused_url if mode == "refused" else f"{badhttp.url}/{mode}/pib"
        ws = env.ws(http_store(url))
        r, seconds = timed_build(env, ws)
        check_local_build(r, seconds, ws)
