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
from pathlib import Path
from typing import Any

import pytest

from pib.fetch import download_cache
from tests.cifixture import (
    NO_NETWORK,
    OWN_CBE,
    Platform,
    example_platform,
    own_cbe,
    passed,
    pib_cmd,
    run_pipeline,
)
from tests.services.seaweed import Seaweed

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

PREBUILT = ("kernel", "extra", "boot", "lib")


def shared_env(cache: Path) -> dict[str, str]:
    return {"PIB_CACHE": str(cache), **NO_NETWORK}


def machine(plat: Platform, name: str, cache: Path) -> tuple[Path, Path]:
    """A machine outside the runner: a checkout, its own HOME and CBE root, configured."""
    ws = plat.workspace()
    home = plat.root / f"home-{name}"
    own_cbe(ws, home)
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
    r = subprocess.run([sys.executable, "-m", "pib", "-C", str(seed), "fetch"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
    assert r.returncode == 0, r.stderr

    # The generating job: a checkout, `pib plan --format gitlab`.
    project, home = machine(plat, "generator", cache)
    pipeline = project / "pib-child.yml"
    r = pib_cmd(project, {**plat.env(home), **shared_env(cache)}, "plan", "--format", "gitlab", "-o", str(pipeline),
                "--setup", OWN_CBE)
    assert r.returncode == 0, r.stderr
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load(pipeline.read_text())
    assert {k for k in doc if k.startswith("build:")} == {f"build:{n}" for n in PREBUILT}  # core: no job
    assert doc["image:boot"]["script"][-1] == "pib build --deps-from-store --boot"

    run = run_pipeline(plat, project, pipeline, concurrency=4, extra_env=shared_env(cache), timeout=2000)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-3000:]
    assert passed(run) == {f"build:{n}" for n in PREBUILT} | {"image:boot"}
    state = project / ".gitlab-ci-local"
    for job in (*(f"build:{n}" for n in PREBUILT), "image:boot"):
        safe = job.replace(":", "Og")  # how gitlab-ci-local names a job's directories
        log = (state / "output" / f"{safe}.log").read_text()
        # Its own machine: the CBE installed under its own HOME, from the shared cache (no network).
        assert f"at {state / 'builds' / safe / '.home' / 'cbe'}/" in log, log[-3000:]
    # The image job restored every prebuilt component, built core and booted the image.
    log = (state / "output" / "imageOgboot.log").read_text()
    table = {parts[0]: parts[1] for parts in (line.split() for line in log.splitlines())
             if len(parts) > 1 and parts[0] in (*PREBUILT, "core") and parts[1] in ("restored", "built")}
    assert table == {**dict.fromkeys(PREBUILT, "restored"), "core": "built"}, log[-3000:]
    marker = next((line for line in log.splitlines() if "boot: PASS" in line and "PIB-BOOT-OK" in line), "")
    assert marker, log[-3000:]
    booted = dict(f.split("=", 1) for f in marker.split("PIB-BOOT-OK", 1)[1].split() if "=" in f)
    booted.pop("buildstamp")

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
    # The image the pipeline booted holds exactly these components: core built again from the same commit
    # on the same restored lib has the same key.
    assert booted == {c["component"]: c["key"] for c in built["components"]}
