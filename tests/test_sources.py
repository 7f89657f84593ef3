"""Declared sources through the real CLI: pib.toml, keys, PIB_SOURCES, pib fetch, --offline, store mirrors."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from pib.config.loader import load
from pib.errors import EXIT_CODES, ConfigError, Reason
from tests.gitutil import make_repo, pib
from tests.services.nginx import Nginx

BUILD = """\
#!/bin/sh
set -e
: "${PIB_SOURCES:?}"
mkdir -p "$DESTDIR/share"
cp "$PIB_SOURCES/data.txt" "$DESTDIR/share/data.txt"
ls "$PIB_SOURCES" > "$DESTDIR/share/listing"
"""


def _workspace(root: Path, name: str, upstream: str, sha: str, *, extra: str = "") -> Path:
    ws = root / name
    ws.mkdir()
    (ws / "pib.toml").write_text(f"""\
[platform]
min_version = "1"
[components.comp]
source = "../repos/comp"
build = ["./build.sh"]
prebuilt = true
sources = [{{ url = "{upstream}", name = "data.txt", sha256 = "{sha}" }}]
[local_store]
path = "../store-{name}"
{extra}""")
    r = pib(ws, "configure")
    assert r.returncode == 0, r.stderr
    return ws


@pytest.fixture
def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, str]:
    monkeypatch.setenv("PIB_CACHE", str(tmp_path / "download-cache"))  # this test's machine
    make_repo(tmp_path / "repos" / "comp", {"build.sh": BUILD})
    up = tmp_path / "upstream" / "data-1.0.txt"
    up.parent.mkdir()
    up.write_bytes(b"pinned bytes\n")
    return tmp_path, up, hashlib.sha256(b"pinned bytes\n").hexdigest()


def test_build_sees_exactly_its_sources_and_the_key_holds_their_hash(kit: tuple[Path, Path, str]) -> None:
    root, up, sha = kit
    ws = _workspace(root, "a", up.as_uri(), sha)
    r = pib(ws, "build", "--json")
    assert r.returncode == 0, r.stderr
    comp = json.loads(r.stdout)["components"][0]
    assert comp["action"] == "built"
    assert (ws / "proto.comp" / "share" / "data.txt").read_bytes() == b"pinned bytes\n"
    assert (ws / "proto.comp" / "share" / "listing").read_text() == "data.txt\n"
    assert "from upstream" in Path(comp["log"]).read_text()
    doc = json.loads(pib(ws, "explain", "comp", "--json").stdout)
    assert doc["document"]["sources"] == {"data.txt": sha}


def test_new_upstream_url_for_the_same_bytes_keeps_the_key(kit: tuple[Path, Path, str]) -> None:
    root, up, sha = kit
    ws = _workspace(root, "a", up.as_uri(), sha)
    first = json.loads(pib(ws, "build", "--json").stdout)["components"][0]
    moved = up.with_name("moved.txt")
    moved.write_bytes(up.read_bytes())
    text = (ws / "pib.toml").read_text().replace(up.as_uri(), moved.as_uri())
    (ws / "pib.toml").write_text(text)
    again = json.loads(pib(ws, "build", "--json").stdout)["components"][0]
    assert again["action"] == "up-to-date" and again["key"] == first["key"]


def test_wrong_upstream_bytes_fail_the_build_and_leave_nothing(kit: tuple[Path, Path, str]) -> None:
    root, up, sha = kit
    up.write_bytes(b"tampered\n")
    ws = _workspace(root, "a", up.as_uri(), sha)
    r = pib(ws, "build")
    # A component that cannot get its inputs fails like any build, naming the cause.
    assert r.returncode == EXIT_CODES[Reason.BUILD], r.stderr
    assert f"the pin says {sha}" in r.stderr
    assert not (ws / "proto.comp").exists()


def test_fetch_then_offline_build_needs_no_upstream(kit: tuple[Path, Path, str]) -> None:
    root, up, sha = kit
    ws = _workspace(root, "a", up.as_uri(), sha)
    r = pib(ws, "fetch", "--json")
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)["files"]
    assert [(f["owner"], f["name"], f["came_from"]) for f in files] == [("comp", "data.txt", "upstream")]
    up.unlink()  # upstream gone, network down: the download cache has it
    r = pib(ws, "build", "--offline", "--json")
    assert r.returncode == 0, r.stderr
    assert "from cache" in Path(json.loads(r.stdout)["components"][0]["log"]).read_text()


def test_offline_without_a_fetch_says_what_to_do(kit: tuple[Path, Path, str]) -> None:
    root, up, sha = kit
    ws = _workspace(root, "a", up.as_uri(), sha)
    r = pib(ws, "build", "--offline")
    assert r.returncode == EXIT_CODES[Reason.BUILD]
    assert "offline" in r.stderr and "pib fetch" in r.stderr
    assert not (ws / "proto.comp").exists()


@pytest.mark.integration
def test_published_sources_are_served_by_the_store_when_upstream_drops_them(
        kit: tuple[Path, Path, str], nginx: Nginx, tmp_path: Path) -> None:
    root, up, sha = kit
    keys = root / "keys"
    keys.mkdir()
    r = pib(root, "keygen", str(keys / "ci.key"))
    assert r.returncode == 0, r.stderr
    url = f"{nginx.url}/sources-{uuid.uuid4().hex[:8]}"
    store = (f'[[store]]\nname = "team"\ntype = "http"\nurl = "{url}"\ntimeout = 5\nretries = 1\n'
             f'[trust]\npublic_keys = ["{keys / "ci.key.pub"}"]\nsigning_key = "{keys / "ci.key"}"\n'
             'publish = "always"\n')
    a = _workspace(root, "a", up.as_uri(), sha, extra=store)
    r = pib(a, "build", "--publish", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sources_uploaded"] == {"team": ["data.txt"]}
    assert (nginx.root / url.rsplit("/", 1)[1] / "sources" / "sha256" / sha).read_bytes() == b"pinned bytes\n"

    # Another machine (its own download cache), another key (not restorable), upstream gone.
    up.unlink()
    b = _workspace(root, "b", up.as_uri(), sha, extra=store)
    (b / "pib.local.toml").write_text('[components.comp]\nenv = { FLAVOUR = "b" }\n')
    other_cache = {"PIB_CACHE": str(tmp_path / "machine-b-cache")}
    r = pib(b, "build", "--json", env=other_cache)
    assert r.returncode == 0, r.stderr
    comp = json.loads(r.stdout)["components"][0]
    assert comp["action"] == "built"
    assert "data.txt (sha256" in Path(comp["log"]).read_text() and "from store team" in Path(comp["log"]).read_text()

    # A store that serves other bytes under the right name is refused; with nothing else, a clear error.
    blob = nginx.root / url.rsplit("/", 1)[1] / "sources" / "sha256" / sha
    blob.write_bytes(b"lies\n")
    r = pib(b, "build", "--force", "--json", env={"PIB_CACHE": str(tmp_path / "machine-c-cache")})
    assert r.returncode == EXIT_CODES[Reason.BUILD]
    assert "store team refused for data.txt" in r.stderr and "the pin says" in r.stderr


def test_config_errors_name_the_line(tmp_path: Path) -> None:
    cases = {
        'sources = [{ url = "https://x/a.tgz" }]': "sha256",
        'sources = [{ url = "https://x/a.tgz", sha256 = "abc" }]': "not a SHA-256",
        f'sources = [{{ url = "https://x/a.tgz", apt = "a=1", sha256 = "{"0" * 64}" }}]': "exactly one of",
        f'sources = [{{ url = "https://x/", name = "../up", sha256 = "{"0" * 64}" }}]': "plain file name",
        f'sources = [{{ apt = "busybox", sha256 = "{"0" * 64}" }}]': "NAME=VERSION",
        f'sources = [{{ apt = "busybox=1", sha256 = "{"0" * 64}" }}]': "no [apt]",
        'sources = [{ apt-source = "busybox=1", files = [] }]': "files",
    }
    for line, message in cases.items():
        ws = tmp_path / uuid.uuid4().hex[:8]
        ws.mkdir()
        (ws / "pib.toml").write_text(f'[components.c]\nsource = "x"\nbuild = "./b"\n{line}\n')
        with pytest.raises(ConfigError) as exc:
            load(ws)
        assert message in str(exc.value), (line, str(exc.value))
        assert exc.value.where is not None and exc.value.where.line == 4, (line, exc.value.where)
