"""Publishing from CI and restoring elsewhere, through the real CLI and a real nginx store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from pib.errors import EXIT_CODES, Reason
from tests.gitutil import make_repo, pib, write
from tests.reliability import tally
from tests.services.nginx import Nginx

pytestmark = pytest.mark.integration

BUILD = """\
#!/bin/sh
set -e
echo "compiling extra" >&2
mkdir -p "$DESTDIR/usr/bin"
printf '#!/bin/sh\\necho extra\\n' > "$DESTDIR/usr/bin/extra"
chmod 755 "$DESTDIR/usr/bin/extra"
ln -s extra "$DESTDIR/usr/bin/extra-link"
"""


def _workspace(root: Path, name: str, url: str, keys: Path) -> Path:
    ws = root / name
    ws.mkdir()
    (ws / "pib.toml").write_text(f"""\
[platform]
min_version = "1"
[components.extra]
source = "../repos/extra"
build = ["./build.sh"]
prebuilt = true
[local_store]
path = "../store-{name}"
[[store]]
name = "ci"
type = "http"
url = "{url}"
timeout = 5
retries = 1
[trust]
public_keys = ["{keys / 'ci.pub'}"]
signing_key_env = "CI_SIGNING_KEY"
""")
    r = pib(ws, "configure")
    assert r.returncode == 0, r.stderr
    return ws


@pytest.fixture
def setup(tmp_path: Path, nginx: Nginx) -> tuple[Path, Path, Path, dict[str, str]]:
    make_repo(tmp_path / "repos" / "extra", {"build.sh": BUILD})
    keys = tmp_path / "keys"
    keys.mkdir()
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    _keygen(tmp_path, keys, env)
    url = f"{nginx.url}/publish-{uuid.uuid4().hex[:8]}"
    a = _workspace(tmp_path, "a", url, keys)
    b = _workspace(tmp_path, "b", url, keys)
    return a, b, keys, env


def _keygen(cwd: Path, keys: Path, env: dict[str, str]) -> None:
    r = pib(cwd, "keygen", str(keys / "ci.key"), env=env)
    assert r.returncode == 0, r.stderr
    (keys / "ci.key.pub").rename(keys / "ci.pub")


def test_ci_publishes_and_another_workspace_restores(setup: tuple[Path, Path, Path, dict[str, str]]) -> None:
    a, b, keys, env = setup
    signing = {**env, "CI_SIGNING_KEY": str(keys / "ci.key")}

    # Outside CI, the default policy refuses to publish, before building anything.
    r = pib(a, "build", "--publish", env={**signing, "CI": ""})
    assert r.returncode == EXIT_CODES[Reason.PUBLISH] and "reserved for CI" in r.stderr
    assert not (a / "proto.extra").exists()

    # Without the key, CI cannot publish either.
    r = pib(a, "ci", env={**env, "CI": "true"})
    assert r.returncode == EXIT_CODES[Reason.PUBLISH] and "signing key" in r.stderr

    r = pib(a, "ci", "--json", env={**signing, "CI": "true"})
    assert r.returncode == 0, r.stderr
    comp = json.loads(r.stdout)["components"][0]
    assert comp["action"] == "built" and comp["published"] == ["ci"]
    report = json.loads((a / "output" / "ci-report.json").read_text())
    assert report["components"][0]["published"] == ["ci"]

    # Workspace b: empty local store, same sources: restored from the remote, not built.
    r = pib(b, "build", "--json", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)["components"][0]
    assert data["action"] == "restored" and data["store"] == "ci"
    assert (b / "proto.extra" / "usr" / "bin" / "extra-link").is_symlink()
    assert "compiling extra" not in (Path(data["log"]).read_text())

    # ...and kept in b's local store: clobbered and offline, it still restores.
    assert pib(b, "clobber", "extra", env=env).returncode == 0
    r = pib(b, "build", "--offline", "--json", env=env)
    data = json.loads(r.stdout)["components"][0]
    assert data["action"] == "restored" and data["store"] == "local"

    # pib explain compares with the newest artifact in the stores.
    r = pib(b, "explain", "extra", "--json", env=env)
    ex = json.loads(r.stdout)
    assert ex["nearest_artifact"]["key"] == ex["key"] and ex["nearest_artifact"]["differs"] == []


def test_dirty_trees_build_locally_and_never_publish(setup: tuple[Path, Path, Path, dict[str, str]],
                                                     nginx: Nginx) -> None:
    a, b, keys, env = setup
    signing = {**env, "CI_SIGNING_KEY": str(keys / "ci.key"), "CI": "true"}
    assert pib(a, "ci", env=signing).returncode == 0

    write(b / "projects" / "extra", {"NOTES": "local experiment\n"})
    r = pib(b, "build", "--json", env=env)
    data = json.loads(r.stdout)["components"][0]
    assert data["action"] == "built" and data["dirty"] is True

    r = pib(b, "publish", env=signing)
    assert r.returncode == EXIT_CODES[Reason.PUBLISH] and "uncommitted" in r.stderr
    r = pib(b, "build", "--publish", env=signing)
    assert r.returncode == EXIT_CODES[Reason.PUBLISH]

    # The dirty build is in b's local store (explain finds it there), and only the clean one is remote.
    st = json.loads(pib(b, "explain", "extra", "--json", env=env).stdout)
    assert st["dirty"] is True and st["nearest_artifact"]["store"] == "local"
    assert st["nearest_artifact"]["differs"] == []
    toml = (b / "pib.toml").read_text()
    prefix = toml.split('url = "', 1)[1].split('"', 1)[0].rsplit("/", 1)[1]
    remote = sorted(p.name for p in (nginx.root / prefix / "extra").glob("*.json"))
    assert remote == [f"{json.loads(pib(a, 'status', '--json', env=env).stdout)['components'][0]['key']}.json"]


def test_require_prebuilt_turns_a_miss_into_an_error(setup: tuple[Path, Path, Path, dict[str, str]]) -> None:
    a, _b, _keys, env = setup
    r = pib(a, "build", "--require-prebuilt", "--json", env=env)
    assert r.returncode == EXIT_CODES[Reason.PREBUILT_MISSING]
    assert not (a / "proto.extra").exists()


def test_an_unreachable_store_is_one_warning_and_a_local_build(tmp_path: Path) -> None:
    make_repo(tmp_path / "repos" / "extra", {"build.sh": BUILD})
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    _keygen(tmp_path, tmp_path, env)
    ws = _workspace(tmp_path, "w", "http://127.0.0.1:9/nothing-listens-here", tmp_path)
    r = pib(ws, "build", env=env)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "store ci" in warnings[0]
    assert (ws / "proto.extra" / "usr" / "bin" / "extra").exists()


def test_publish_fills_a_remote_that_lacks_an_up_to_date_component(
        setup: tuple[Path, Path, Path, dict[str, str]], nginx: Nginx) -> None:
    a, _b, keys, env = setup
    signing = {**env, "CI_SIGNING_KEY": str(keys / "ci.key"), "CI": "true"}
    assert pib(a, "ci", env=signing).returncode == 0
    # As if that upload had been interrupted: the remote lost the entry.
    prefix = (a / "pib.toml").read_text().split('url = "', 1)[1].split('"', 1)[0].rsplit("/", 1)[1]
    for f in (nginx.root / prefix / "extra").iterdir():
        f.unlink()
    r = pib(a, "ci", "--json", env=signing)
    assert r.returncode == 0, r.stderr
    comp = json.loads(r.stdout)["components"][0]
    assert comp["action"] == "up-to-date" and comp["published"] == ["ci"]
    assert len(list((nginx.root / prefix / "extra").glob("*.json"))) == 1
    # Once the remote has it, a further run uploads nothing.
    again = json.loads(pib(a, "ci", "--json", env=signing).stdout)["components"][0]
    assert again["published"] == []


def test_publishing_can_require_the_oldest_supported_platform(
        setup: tuple[Path, Path, Path, dict[str, str]]) -> None:
    a, _b, keys, env = setup
    signing = {**env, "CI_SIGNING_KEY": str(keys / "ci.key"), "CI": "true"}
    # This host (Debian 12 or newer) is newer than the floor "1": fine for building, not for publishing.
    (a / "pib.local.toml").write_text("[trust]\nrequire_oldest_platform = true\n")
    r = pib(a, "ci", env=signing)
    assert r.returncode == EXIT_CODES[Reason.PUBLISH]
    assert "oldest supported platform 1" in r.stderr
    assert pib(a, "build", env=env).returncode == 0
    # The metadata of every artifact records the platform it was built on.
    store = a.parent / "store-a" / "extra"
    meta = json.loads(next(store.glob("*.json")).read_text())
    assert "os-release" in meta["builder_platform"]


def test_ci_never_republishes_an_entry_signed_only_by_the_machine_key(
        setup: tuple[Path, Path, Path, dict[str, str]], nginx: Nginx) -> None:
    with tally("trust", "an entry signed only by the machine key is not republished by pib ci"):
        _machine_signed_not_republished(setup, nginx)


def _machine_signed_not_republished(setup: tuple[Path, Path, Path, dict[str, str]], nginx: Nginx) -> None:
    a, _b, keys, env = setup
    signing = {**env, "CI_SIGNING_KEY": str(keys / "ci.key"), "CI": "true"}
    prefix = (a / "pib.toml").read_text().split('url = "', 1)[1].split('"', 1)[0].rsplit("/", 1)[1]
    remote = nginx.root / prefix / "extra"
    # A local build: its entry in the local store is signed by this machine's key only.
    assert pib(a, "build", env=env).returncode == 0
    for how in ("up to date", "restored from the local store"):
        if how.startswith("restored"):
            assert pib(a, "clobber", "extra", env=env).returncode == 0
        r = pib(a, "ci", "--json", env=signing)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        comp = data["components"][0]
        assert comp["action"] == ("up-to-date" if how == "up to date" else "restored"), how
        assert comp["published"] == [], how
        assert any("not published" in w for w in data["warnings"]), data["warnings"]
        assert not list(remote.glob("*.json")) if remote.exists() else True, how
    # Built by this run: published, signed by the CI key.
    r = pib(a, "ci", "--force", "--json", env=signing)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["components"][0]["published"] == ["ci"]
    (meta,) = remote.glob("*.json")
    assert json.loads(meta.read_text())["signer"] == json.loads(
        (a.parent / "store-a" / "extra" / meta.name).read_text())["signer"]
