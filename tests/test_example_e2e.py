"""The example platform end to end, through the real CLI: component git repositories,
the gcc-12 CBE, busybox built from its upstream tarball, an image booted in QEMU."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from examples.platform.make_workspace import make_workspace
from pib.artifacts.signing import generate_keypair
from pib.run import minimal_env, run
from tests.services.seaweed import Seaweed

REPO = Path(__file__).resolve().parent.parent

# The first test also runs the story (CBE install, a sandboxed busybox build, a boot): minutes on 2 cores.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]




def pib(ws: Path, *args: str, check: bool = True, creds: Seaweed | None = None,
        extra_env: dict[str, str] | None = None) -> Any:
    """Run the real CLI with --json and return its parsed output."""
    env = minimal_env({"PYTHONPATH": str(REPO)})
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "PIB_CACHE"):
        if var in os.environ:
            env[var] = os.environ[var]
    env.update(extra_env or {})
    if creds is not None:
        env.update(AWS_ACCESS_KEY_ID=creds.access_key, AWS_SECRET_ACCESS_KEY=creds.secret_key)
    res = run([sys.executable, "-m", "pib", "-C", str(ws), *args, "--json"], env=env, capture=True,
              check=check, timeout=900, what=f"pib {args[0]}")
    return json.loads(res.stdout)


def actions(report: dict[str, Any]) -> dict[str, str]:
    return {c["component"]: c["action"] for c in report["components"]}


def keys(report: dict[str, Any]) -> dict[str, str]:
    return {c["component"]: c["key"] for c in report["components"]}


def marker_keys(line: str) -> dict[str, str]:
    fields = dict(f.split("=", 1) for f in line.split()[1:])
    fields.pop("buildstamp")
    return fields


BUCKET = "pib-e2e"


def isolate(ws: Path, store: Path, s3: Seaweed, key: Path, *, publish: bool) -> None:
    """The workspace's own local store and CBE root (the test neither reads nor fills the machine's,
    so the CBE is installed from its pinned packages every run), and the SeaweedFS S3 server as its
    shared remote, trusting (and with `publish`, signing with) `key`."""
    text = (f'[local_store]\npath = "{store}"\n\n[cbe]\nroot = "{store.parent / "cbe"}"\n\n'
            f'[trust]\npublic_keys = ["{key}.pub"]\n')
    if publish:
        text += f'signing_key = "{key}.key"\npublish = "always"\n'
    text += (f'\n[[store]]\nname = "s3"\ntype = "s3"\nbucket = "{BUCKET}"\nprefix = "example"\n'
             f'endpoint_url = "{s3.endpoint_url}"\nregion = "us-east-1"\n')
    (ws / "pib.local.toml").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, seaweed: Seaweed) -> dict[str, Any]:
    """From scratch: configure, build (publishing to S3), boot; the tests below only read it."""
    root = tmp_path_factory.mktemp("e2e")
    key = root / "keys" / "ci"
    key.parent.mkdir()
    generate_keypair(key.with_suffix(".key"), key.with_suffix(".pub"))
    client: Any = seaweed.client()
    client.create_bucket(Bucket=BUCKET)
    ws = make_workspace(root)
    isolate(ws, root / "store", seaweed, key, publish=True)
    configured = pib(ws, "configure", creds=seaweed)
    first = pib(ws, "build", "--publish", creds=seaweed)
    booted = pib(ws, "boot")
    return {"root": root, "ws": ws, "key": key, "s3": seaweed,
            "configured": configured, "first": first, "boot": booted}


def test_from_scratch_everything_is_built_and_boots(story: dict[str, Any]) -> None:
    assert {c["component"]: c["action"] for c in story["configured"]["components"]} == {
        "kernel": "cloned", "extra": "cloned", "boot": "cloned", "lib": "cloned", "core": "cloned"}
    first = story["first"]
    assert first["ok"] and actions(first) == {
        "kernel": "built", "extra": "built", "boot": "built", "lib": "built", "core": "built"}
    boot = story["boot"]
    assert boot["passed"] and boot["outcome"] == "marker"
    # The marker names exactly the keys this build produced: the image holds this build.
    assert marker_keys(boot["marker_line"]) == keys(first)
    console = Path(boot["log"]).read_text(errors="replace")
    assert "rc: pib-example up on 6.1.0-" in console  # the overlay's rc ran, on the pinned kernel
    assert f"buildstamp {boot['stamp']}" in console  # core's pib-info read the release file


def test_image_contents_and_toolchain(story: dict[str, Any]) -> None:
    ws: Path = story["ws"]
    pdir = (ws / "output" / "platform-latest").resolve()
    manifest = (pdir / "boot_archive.manifest").read_text()
    for path in ("sbin/init", "usr/bin/pib-info", "bin/busybox", "etc/rc", "etc/pib-release"):
        assert path in manifest
    # Components were built with the CBE's compiler, never the host's.
    prefix = story["configured"]["cbe"].rsplit(" at ", 1)[1]
    for comp in ("extra", "core"):
        log = next((ws / "log").glob(f"{comp}.2*.log")).read_text(errors="replace")
        cc = next(line for line in log.splitlines() if line.strip().startswith("env: CC="))
        assert cc.split("=", 1)[1].startswith(prefix + "/")
    for binary in ("proto.extra/bin/busybox", "proto.core/sbin/init"):
        assert not _has_interpreter(ws / binary), f"{binary} is not static"


def _has_interpreter(path: Path) -> bool:
    """Whether an ELF64 file asks for a dynamic loader (has a PT_INTERP program header)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    types = [int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little") for i in range(phnum)]
    return 3 in types


def test_noop_then_one_line_change_in_core(story: dict[str, Any]) -> None:
    ws: Path = story["ws"]
    first = story["first"]
    noop = pib(ws, "build")
    assert set(actions(noop).values()) == {"up-to-date"} and len(actions(noop)) == 5
    assert keys(noop) == keys(first)

    # A one-line, uncommitted change in core's checkout.
    src = ws / "projects" / "core" / "src" / "pib-info.c"
    text = src.read_text()
    assert 'printf("uptime %.2fs\\n", up);' in text
    src.write_text(text.replace('printf("uptime %.2fs\\n", up);', 'printf("uptime (changed) %.2fs\\n", up);'))
    changed = pib(ws, "build")
    assert actions(changed) == {"kernel": "up-to-date", "extra": "up-to-date", "boot": "up-to-date",
                               "lib": "up-to-date", "core": "built"}
    assert keys(changed)["core"] != keys(first)["core"]
    assert {k: v for k, v in keys(changed).items() if k != "core"} == {
        k: v for k, v in keys(first).items() if k != "core"}
    assert [c["dirty"] for c in changed["components"] if c["component"] == "core"] == [True]

    booted = pib(ws, "boot")
    assert booted["passed"] and marker_keys(booted["marker_line"]) == keys(changed)
    assert "uptime (changed)" in Path(booted["log"]).read_text(errors="replace")

    # Committing the same change keeps the content, so the key and the build stand.
    env = minimal_env({"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@pib.invalid",
                       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@pib.invalid"})
    run(["git", "commit", "-q", "-am", "pib-info: say it changed"], cwd=src.parent.parent, env=env)
    committed = pib(ws, "build")
    assert actions(committed)["core"] == "up-to-date"
    assert keys(committed)["core"] == keys(changed)["core"]


def _second_workspace(story: dict[str, Any], name: str, store: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    root: Path = story["root"]
    ws = make_workspace(root, name=name, repos=root / "repos")
    isolate(ws, store, story["s3"], story["key"], publish=False)
    pib(ws, "configure", creds=story["s3"])
    built = pib(ws, "build", creds=story["s3"])
    return built, pib(ws, "boot")


def test_first_build_published_the_prebuilt_components(story: dict[str, Any]) -> None:
    published = {c["component"]: c["published"] for c in story["first"]["components"]}
    assert published == {"kernel": ["s3"], "extra": ["s3"], "boot": ["s3"], "lib": ["s3"], "core": []}  # core is not prebuilt


def test_second_workspace_restores_from_the_warm_local_store(story: dict[str, Any]) -> None:
    built, booted = _second_workspace(story, "second", story["root"] / "store")
    assert actions(built) == {"kernel": "restored", "extra": "restored", "boot": "restored", "lib": "restored",
                              "core": "built"}
    assert {c["component"]: c["store"] for c in built["components"] if c["action"] == "restored"} == {
        "kernel": "local", "extra": "local", "boot": "local", "lib": "local"}
    assert keys(built) == keys(story["first"])
    assert booted["passed"] and marker_keys(booted["marker_line"]) == keys(story["first"])


def test_empty_local_store_restores_from_s3(story: dict[str, Any]) -> None:
    built, booted = _second_workspace(story, "third", story["root"] / "empty-store")
    assert actions(built) == {"kernel": "restored", "extra": "restored", "boot": "restored", "lib": "restored",
                              "core": "built"}
    assert {c["component"]: c["store"] for c in built["components"] if c["action"] == "restored"} == {
        "kernel": "s3", "extra": "s3", "boot": "s3", "lib": "s3"}
    assert booted["passed"] and marker_keys(booted["marker_line"]) == keys(story["first"])


def test_first_build_mirrored_every_pinned_file_to_s3(story: dict[str, Any]) -> None:
    uploaded = set(story["first"]["sources_uploaded"]["s3"])
    # The declared sources of kernel, extra and boot, and the CBE's Debian packages.
    assert {"busybox_1.35.0.orig.tar.bz2", "busybox_1.35.0-4+deb12u1.debian.tar.xz"} <= uploaded
    assert {"grub-pc-bin_2.06-13+deb12u2_amd64.deb", "grub-efi-amd64-bin_2.06-13+deb12u2_amd64.deb"} <= uploaded
    assert any(n.startswith("linux-image-6.1.0-50-amd64_") for n in uploaded)
    assert any(n.startswith("gcc-12_") for n in uploaded) and len(uploaded) > 30


def test_fetch_then_offline_from_scratch_with_upstream_unreachable(story: dict[str, Any]) -> None:
    """`pib fetch` on a connected machine, then configure and build with no network at all: a fresh
    CBE root, an empty local store, no remote, and Debian's archive pointed at a dead address."""
    root: Path = story["root"]
    ws = make_workspace(root, name="offline", repos=root / "repos")
    fetched = pib(story["ws"], "fetch")
    assert {f["came_from"] for f in fetched["files"]} == {"cache"}  # the story fetched them all
    (ws / "pib.local.toml").write_text(
        f'[local_store]\npath = "{root / "offline-store"}"\n\n[cbe]\nroot = "{root / "offline-cbe"}"\n\n'
        '[apt]\nuris = ["http://127.0.0.1:9/debian"]\n\n'
        '[[store]]\nname = "unreachable"\ntype = "http"\nurl = "http://127.0.0.1:9/pib"\ntimeout = 1\nretries = 0\n',
        encoding="utf-8")
    configured = pib(ws, "configure", "--offline")
    assert configured["cbe"].endswith(str(root / "offline-cbe" / "gcc12-1"))
    built = pib(ws, "build", "--offline")
    assert set(actions(built).values()) == {"built"} and len(actions(built)) == 5
    assert not any("unreachable" in w for w in built["warnings"])  # never even asked
    assert {k: v for k, v in keys(built).items() if k != "core"} == {
        k: v for k, v in keys(story["first"]).items() if k != "core"}
    log = Path(next(c["log"] for c in built["components"] if c["component"] == "extra")).read_text()
    assert "busybox_1.35.0.orig.tar.bz2 (sha256" in log and "from cache" in log
    booted = pib(ws, "boot")
    assert booted["passed"] and marker_keys(booted["marker_line"]) == keys(built)


def test_first_build_published_the_cbe_prefix(story: dict[str, Any]) -> None:
    assert story["first"]["cbe_published"] == ["s3"]


def test_new_machine_installs_the_cbe_as_a_binary_from_s3(story: dict[str, Any]) -> None:
    """A fresh CBE root and download cache: configure takes the signed prefix of this lock from S3."""
    root: Path = story["root"]
    ws = make_workspace(root, name="binary-cbe", repos=root / "repos")
    isolate(ws, root / "binary-store", story["s3"], story["key"], publish=False)
    text = (ws / "pib.local.toml").read_text().replace(f'root = "{root / "cbe"}"', f'root = "{root / "binary-cbe-root"}"')
    (ws / "pib.local.toml").write_text(text)
    fresh = {"PIB_CACHE": str(root / "binary-cache")}
    configured = pib(ws, "configure", creds=story["s3"], extra_env=fresh)
    assert configured["cbe"].endswith(str(root / "binary-cbe-root" / "gcc12-1"))
    log = (ws / "log" / "configure.log").read_text()
    assert "installed from the prebuilt prefix in s3" in log
    assert not (root / "binary-cache" / "sha256").exists()  # no package was fetched
    # Every file of the installed prefix matches the install record made from it.
    res = run([sys.executable, "-m", "pib", "-C", str(ws), "cbe", "verify", "--full"],
              env=minimal_env({"PYTHONPATH": str(REPO), **fresh}), capture=True, check=False)
    assert res.returncode == 0 and res.stdout.startswith("ok:"), res.stdout
    built = pib(ws, "build", creds=story["s3"], extra_env=fresh)
    assert keys(built) == {**keys(story["first"]), "core": keys(built)["core"]}


def test_example_image_verifies_and_core_rebuilds_identically(story: dict[str, Any]) -> None:
    """The example's image carries signed provenance and SBOMs that `pib verify` accepts, and core is
    reproducible: `pib rebuild --check` builds it again and finds the same bytes."""
    ws: Path = story["ws"]
    env = minimal_env({"PYTHONPATH": str(REPO)})
    res = run([sys.executable, "-m", "pib", "-C", str(ws), "verify", str(ws / "output" / "platform-latest"),
               "--file", "sbin/init", "--json"], env=env, capture=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["file"]["component"] == "core"
    res = run([sys.executable, "-m", "pib", "-C", str(ws), "rebuild", "--check", "core", "--json"], env=env,
              capture=True, check=False, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["identical"]


def test_comment_in_lib_is_cut_off_before_core_and_the_image(story: dict[str, Any]) -> None:
    """Early cutoff on the example: core is keyed by lib's output digest, so a comment in lib rebuilds
    lib alone; a change to lib's code rebuilds core and remakes the image."""
    ws: Path = story["ws"]
    before = pib(ws, "build")
    src = ws / "projects" / "lib" / "src" / "release.c"
    text = src.read_text()
    src.write_text("/* Only a comment: the archive's bytes do not change. */\n" + text)
    after = pib(ws, "build")
    assert actions(after)["lib"] == "built" and keys(after)["lib"] != keys(before)["lib"]
    assert actions(after)["core"] == "up-to-date" and keys(after)["core"] == keys(before)["core"]
    assert after["cutoff"] == {"lib": ["core"]}
    assert after["image"]["action"] == "up-to-date"
    assert after["image"]["buildstamp"] == before["image"]["buildstamp"]

    src.write_text(text + "\nint release_version(void) { return 2; }\n")
    real = pib(ws, "build")
    assert actions(real)["lib"] == "built" and actions(real)["core"] == "built"
    assert keys(real)["core"] != keys(before)["core"] and not real["cutoff"]
    assert real["image"]["action"] == "built"
