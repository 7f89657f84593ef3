"""The example platform's generated GitLab pipeline, run by a real GitLab CI runner.

gitlab-ci-local (shell executor, `--shell-isolation`) runs the child pipeline `pib plan --format gitlab`
writes for the example: a job per prebuilt component (kernel, extra, boot, lib), each its own HOME (its
own local store, CBE install and machine key), all sharing one SeaweedFS S3 bucket; then the image job,
which restores them, builds `core` (not prebuilt: never published) and boots the image in QEMU.

The jobs have no network: `http_proxy` points at a closed loopback port. Their CBE and pinned sources come
from one download cache (`PIB_CACHE`) filled before the pipeline by `pib fetch` (the session's cache,
which the e2e story fills too), as a runner's cache volume would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from examples.platform.make_workspace import make_workspace
from pib.artifacts.signing import generate_keypair
from pib.fetch import download_cache
from tests.cifixture import Platform, passed, pib_cmd, run_pipeline
from tests.gitutil import commit, sh, write
from tests.services.seaweed import Seaweed

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

PREBUILT = ("kernel", "extra", "boot", "lib")
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


def example_platform(root: Path, server: Seaweed) -> Platform:
    """The example as a CI project: its workspace a git repository with the shared S3 store and the
    publishing key's public half committed; component repositories at absolute paths (jobs run in copies)."""
    bucket = f"example-ci-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    plat = Platform(root, server, bucket, {})
    ws = make_workspace(root, name="workspace", repos=root / "repos")
    (root / "keys").mkdir()
    (ws / "keys").mkdir()
    generate_keypair(plat.key, ws / "keys" / "publish.pub")
    toml = ws / "pib.toml"
    text = toml.read_text().replace('"../repos/', f'"{root / "repos"}/')
    toml.write_text(text + f"""
[[store]]
name = "shared"
type = "s3"
bucket = "{bucket}"
endpoint_url = "{server.endpoint_url}"
region = "us-east-1"

[trust]
public_keys = ["keys/publish.pub"]
""")
    write(ws, {".gitignore": "/projects/\n/proto.*/\n/.proto.*\n/log/\n/output/\n/.pib/\n/.gitlab-ci-local/\n"})
    sh(["git", "init", "-q", "-b", "main"], ws)
    commit(ws, "the example platform")
    return plat


def shared_env(cache: Path) -> dict[str, str]:
    return {"PIB_CACHE": str(cache), **NO_NETWORK}


def machine(plat: Platform, name: str, cache: Path) -> tuple[Path, Path]:
    ws = plat.workspace()
    home = plat.root / f"home-{name}"
    r = pib_cmd(ws, {**plat.env(home), **shared_env(cache)}, "configure", timeout=900)
    assert r.returncode == 0, r.stderr
    return ws, home


def pib_json(plat: Platform, ws: Path, home: Path, cache: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = pib_cmd(ws, {**plat.env(home), **shared_env(cache)}, *args, "--json", timeout=900)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_example_pipeline_builds_publishes_and_boots_on_a_real_runner(tmp_path: Path, seaweed: Seaweed) -> None:
    plat = example_platform(tmp_path, seaweed)
    cache = download_cache()
    # Every pinned file the pipeline needs, in the cache the jobs share (the network only if it lacks them).
    seed = plat.workspace()
    r = subprocess.run([sys.executable, "-m", "pib", "-C", str(seed), "configure", "--no-install"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "pib", "-C", str(seed), "fetch"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
    assert r.returncode == 0, r.stderr

    # The generating job: a checkout, `pib plan --format gitlab`.
    project, home = machine(plat, "generator", cache)
    pipeline = project / "pib-child.yml"
    r = pib_cmd(project, {**plat.env(home), **shared_env(cache)}, "plan", "--format", "gitlab", "-o", str(pipeline))
    assert r.returncode == 0, r.stderr
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load(pipeline.read_text())
    assert {k for k in doc if k.startswith("build:")} == {f"build:{n}" for n in PREBUILT}  # core: no job
    assert doc["image:boot"]["script"][-1] == "pib build --deps-from-store --boot"

    run = run_pipeline(plat, project, pipeline, concurrency=4, extra_env=shared_env(cache), timeout=2000)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-3000:]
    assert passed(run) == {f"build:{n}" for n in PREBUILT} | {"image:boot"}
    image_job = next(p for p in (project / ".gitlab-ci-local" / "builds").iterdir() if p.name.startswith("image"))
    # The image job restored every prebuilt component, built core and booted the image.
    log = run.stdout
    assert "PIB-BOOT-OK" in log or "boot: passed" in log or (image_job / "output").exists(), log[-4000:]

    # A fresh machine restores every prebuilt component and builds only core.
    fresh, fresh_home = machine(plat, "fresh", cache)
    rc, planned = pib_json(plat, fresh, fresh_home, cache, "plan")
    assert {c["component"]: c["action"] for c in planned["components"]} == {
        **dict.fromkeys(PREBUILT, "restorable"), "core": "build"}
    rc, built = pib_json(plat, fresh, fresh_home, cache, "build")
    assert rc == 0, built
    assert {c["component"]: c["action"] for c in built["components"]} == {
        **dict.fromkeys(PREBUILT, "restored"), "core": "built"}
    assert {c["component"]: c["store"] for c in built["components"] if c["action"] == "restored"} == dict.fromkeys(
        PREBUILT, "shared")
