"""Four builds at once: two workspaces × two build-environment versions, one local store, one remote.

Workspace sources differ in one component (so some keys are shared and some
are not), the two CBE versions install side by side into one shared root
while the builds start, every build publishes to the same nginx store, and
all of them keep artifacts in the same local store. Afterwards every image
must equal the one a lone clean build of the same inputs makes, and every
entry of both stores must verify.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pib.artifacts.metadata import read_metadata
from pib.artifacts.signing import generate_keypair, load_public_key
from pib.config.types import HttpStoreSpec
from pib.fsutil import sha256_file
from pib.store.backends import open_store
from pib.store.local import LocalStore
from tests.gitutil import commit, make_repo, write
from tests.reliability import tally
from tests.services.nginx import Nginx
from tests.test_cbe_pip import make_wheel
from tests.test_kill import REPO

pytestmark = pytest.mark.integration

BASE = {
    "build.sh": """\
        #!/bin/sh
        set -e
        mkdir -p "$DESTDIR/etc" "$DESTDIR/share"
        printf 'root:x:0:0::/root:/bin/sh\\n' > "$DESTDIR/etc/passwd"
        printf 'root::0:\\n' > "$DESTDIR/etc/group"
        seq 1 200000 > "$DESTDIR/share/numbers"
        """,
    "manifest": "d etc 0755 root root\nf etc/passwd 0644 root root\nf etc/group 0644 root root\n"
                "d share 0755 root root\nf share/numbers 0644 root root\n",
}
APP = {
    "build.sh": """\
        #!/bin/sh
        set -e
        mkdir -p "$DESTDIR/etc"
        tinytool > "$DESTDIR/etc/tool-version"
        cat flavour "$PIB_DEP_BASE/etc/passwd" > "$DESTDIR/etc/app"
        """,
    "manifest": "f etc/tool-version 0644 root root\nf etc/app 0644 root root\n",
    "flavour": "one\n",
}


def _toml(root: Path, ws_name: str, branch: str, version: str, remote: str | None) -> str:
    store = f'\n[[store]]\nname = "remote"\ntype = "http"\nurl = "{remote}"\ntimeout = 10\n' if remote else ""
    return f"""\
[platform]
min_version = "1"

[cbe]
name = "pytools"
version = "{version}"
root = "{root}/cbe-root"
lock = "{root}/pytools-{version}.lock.toml"

[local_store]
path = "{root}/{'shared-store' if remote else 'clean-store-' + ws_name}"

[components.base]
source = "{root}/repos/base"
build = ["./build.sh"]
manifest = "manifest"
prebuilt = true

[components.app]
source = "{root}/repos/app"
branch = "{branch}"
build = ["./build.sh"]
manifest = "manifest"
depends = ["base"]
prebuilt = true

[image]
compression = "zstd"

[sandbox]
# A pip CBE's scripts run on the interpreter that installed them, which is not in its prefix.
ro_paths = ["{sys.prefix}", "{sys.base_prefix}"]
{store}
[trust]
public_keys = ["{root}/key.pub"]
signing_key = "{root}/key.priv"
publish = "always"
"""


def _lock(root: Path, version: str, sha: str) -> None:
    (root / f"pytools-{version}.lock.toml").write_text(
        f'format = 1\nname = "pytools"\nversion = "{version}"\nprovider = "pip"\n\n'
        f'[pip]\nfind_links = ["{root}/wheels"]\n\n'
        f'[[packages]]\nname = "tinytool"\nversion = "{version}.0"\nsha256 = "{sha}"\n')


def _popen(ws: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pib", "-C", str(ws), *args], env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _verify_store(store: object, keys: list[object], tmp: Path) -> int:
    n = 0
    from pib.cbe.providers.tarball import read_prefix_metadata

    for e in store.list():  # type: ignore[attr-defined]
        raw = store.get_meta(e.component, e.key)  # type: ignore[attr-defined]
        if e.component.startswith("cbe-"):  # a published CBE prefix, keyed by its lock digest
            doc = read_prefix_metadata(raw, keys, e.component)  # type: ignore[arg-type]
            sha, size = str(doc["archive_sha256"]), int(doc["archive_size"])
        else:
            meta = read_metadata(raw, keys, component=e.component, key=e.key)  # type: ignore[arg-type]
            sha, size = meta.archive_sha256, meta.archive_size
        archive = tmp / f"{e.component}-{e.key}"
        store.get_archive(e.component, e.key, sha, archive, size)  # type: ignore[attr-defined]
        assert sha256_file(archive) == (sha, size)
        n += 1
    return n


ROUNDS = {
    "fresh: build, install CBEs, publish": (),
    "again with --force: rebuild and re-publish the same keys": ("--force",),
    "after clobber: restore from the shared stores": (),
}


def test_four_builds_two_workspaces_two_cbe_versions(tmp_path: Path, nginx: Nginx) -> None:
    root = tmp_path
    make_repo(root / "repos" / "base", BASE)
    app = make_repo(root / "repos" / "app", APP)
    subprocess.run(["git", "-C", str(app), "checkout", "-q", "-b", "two"], check=True)
    write(app, {"flavour": "two\n"})
    commit(app, "flavour two")
    subprocess.run(["git", "-C", str(app), "checkout", "-q", "main"], check=True)
    for v in ("1", "2"):
        _lock(root, v, make_wheel(root / "wheels", "tinytool", f"{v}.0")[1])
    generate_keypair(root / "key.priv", root / "key.pub")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIB_", "XDG_", "CI"))}
    env.update(HOME=str(root / "home"), XDG_CACHE_HOME=str(root / "home" / "cache"),
               XDG_CONFIG_HOME=str(root / "home" / "config"), SOURCE_DATE_EPOCH="1767225600",
               PYTHONPATH=str(REPO))
    remote = f"{nginx.url}/concurrency-{os.getpid()}"
    combos = [(w, v) for w in ("one", "two") for v in ("1", "2")]

    def make(prefix: str, w: str, v: str, with_remote: bool) -> Path:
        ws = root / f"{prefix}-{w}-{v}"
        ws.mkdir()
        branch = "main" if w == "one" else "two"
        (ws / "pib.toml").write_text(_toml(root, ws.name, branch, v, remote if with_remote else None))
        return ws

    def run(ws: Path, *args: str) -> dict[str, object]:
        r = subprocess.run([sys.executable, "-m", "pib", "-C", str(ws), *args], env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout) if "--json" in args else {}

    # What a lone clean build of each combination makes, with its own empty store and no remote.
    expected = {}
    for c in combos:
        ws = make("clean", *c, with_remote=False)
        run(ws, "configure")
        expected[c] = run(ws, "build", "--json")["image"]["sha256"]  # type: ignore[index]
    assert len(set(expected.values())) == 4  # two sources and two CBEs: four different images
    # The shared workspaces install the CBEs into a root of their own, all at once.
    shared = {c: make("ws", *c, with_remote=True) for c in combos}
    for ws in shared.values():
        (ws / "pib.toml").write_text((ws / "pib.toml").read_text().replace(
            f'root = "{root}/cbe-root"', f'root = "{root}/shared-cbe-root"'))
    procs = {c: _popen(ws, env, "configure") for c, ws in shared.items()}
    for c, p in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{c}: {err}"

    machine = load_public_key(root / "home" / "config" / "pib" / "machine.pub")
    publisher = load_public_key(root / "key.pub")
    for n, (name, extra) in enumerate(ROUNDS.items()):
        with tally("concurrency", f"4 builds at once (2 workspaces x 2 CBE versions), {name}"):
            if name.startswith("after clobber"):
                for ws in shared.values():
                    run(ws, "clobber", "--all")
            procs = {c: _popen(ws, env, "build", "--publish", "--json", *extra) for c, ws in shared.items()}
            results = {}
            for c, p in procs.items():
                out, err = p.communicate(timeout=300)
                assert p.returncode == 0, f"{c}: {err}"
                results[c] = json.loads(out)
            for c in combos:
                assert results[c]["image"]["sha256"] == expected[c], c
                tool = (shared[c] / "proto.app" / "etc" / "tool-version").read_text()
                assert tool == f"tinytool {c[1]}.0\n"
            if name.startswith("after clobber"):
                acts = {a["action"] for r in results.values() for a in r["components"]}
                assert acts == {"restored"}, acts
            local_n = _verify_store(LocalStore(root / "shared-store"), [machine, publisher], root / f"chk-l{n}")
            remote_n = _verify_store(open_store(HttpStoreSpec("remote", remote)), [publisher], root / f"chk-r{n}")
            # base differs per CBE (2 keys); app per source and CBE (4 keys); the remote also holds each
            # CBE version's installed prefix (2), published by the first publishing build.
            assert local_n == 6 and remote_n == 8, (local_n, remote_n)
