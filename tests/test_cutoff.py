"""Early cutoff: a dependency rebuilt into the same bytes leaves its dependents and the image up to date."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from pib.artifacts.metadata import sign
from pib.artifacts.signing import load_signer
from pib.build.output import output_digest
from pib.errors import VerifyError
from pib.store import META_SUFFIX
from tests.gitutil import commit, make_repo, pib, write
from tests.services.nginx import Nginx
from tests.services.seaweed import Seaweed

LIB_BUILD = """\
#!/bin/sh
# the library's headers
set -e
mkdir -p "$DESTDIR/include"
echo 'int lib(void);' > "$DESTDIR/include/lib.h"
"""
CORE_BUILD = """\
#!/bin/sh
set -e
mkdir -p "$DESTDIR/bin" "$DESTDIR/boot"
{ echo '#!/bin/sh'; sed 's/^/# /' "$PIB_DEP_LIB/include/lib.h"; } > "$DESTDIR/bin/core"
chmod 755 "$DESTDIR/bin/core"
echo kernel > "$DESTDIR/boot/vmlinuz"
"""
MANIFEST = "d bin 0755 root root\nf bin/core 0755 root bin\n"


def _ws(tmp_path: Path, lib_build: str = LIB_BUILD) -> Path:
    make_repo(tmp_path / "repos" / "lib", {"build.sh": lib_build})
    make_repo(tmp_path / "repos" / "core", {"build.sh": CORE_BUILD, "manifest": MANIFEST})
    ws = tmp_path / "ws"
    (ws / "overlay" / "etc").mkdir(parents=True)
    (ws / "overlay" / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\nbin:x:2:2:bin:/:/bin/false\n")
    (ws / "overlay" / "etc" / "group").write_text("root:x:0:\nbin:x:2:\n")
    (ws / "overlay" / "manifest").write_text(
        "d etc 0755 root root\nf etc/passwd 0644 root root\nf etc/group 0644 root root\n")
    (ws / "pib.toml").write_text("""\
[platform]
min_version = "1"
[components.lib]
source = "../repos/lib"
build = ["./build.sh"]
[components.core]
source = "../repos/core"
build = ["./build.sh"]
depends = ["lib"]
manifest = "manifest"
[image]
kernel = ["core:boot/vmlinuz"]
overlays = [{ path = "overlay", manifest = "overlay/manifest" }]
compression = "gzip"
""")
    assert pib(ws, "configure").returncode == 0
    return ws


def _build(ws: Path, *args: str) -> dict[str, object]:
    r = pib(ws, "build", "--json", *args)
    assert r.returncode == 0, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    data["_stdout"] = r.stdout
    return data


def _actions(data: dict[str, object]) -> dict[str, str]:
    return {c["component"]: c["action"] for c in data["components"]}  # type: ignore[attr-defined,index]


def test_comment_change_rebuilds_the_dependency_only(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    first = _build(ws)
    assert _actions(first) == {"lib": "built", "core": "built"}
    assert first["image"]["action"] == "built"  # type: ignore[index]
    outputs = {c["component"]: c["output"] for c in first["components"]}  # type: ignore[attr-defined]
    assert outputs["lib"] == output_digest(ws / "proto.lib")

    # A comment in the dependency's build script: new input key, same bytes.
    lib = ws / "projects" / "lib"
    write(lib, {"build.sh": LIB_BUILD.replace("# the library's headers", "# the headers of the library")})
    commit(lib, "reword a comment")
    st = {c["component"]: c for c in json.loads(pib(ws, "status", "--json").stdout)["components"]}
    assert st["core"]["key_pending"] is True and st["core"]["depends"] == {"lib": "pending"}

    second = _build(ws)
    assert _actions(second) == {"lib": "built", "core": "up-to-date"}
    assert second["cutoff"] == {"lib": ["core"]}
    assert second["image"]["action"] == "up-to-date"  # type: ignore[index]
    keys = {c["component"]: c["key"] for c in second["components"]}  # type: ignore[attr-defined]
    assert keys["core"] == {c["component"]: c["key"] for c in first["components"]}["core"]  # type: ignore[attr-defined]
    r = pib(ws, "build")
    assert r.returncode == 0 and "output unchanged" not in r.stdout

    # The summary says so, too.
    write(lib, {"build.sh": LIB_BUILD.replace("# the library's headers", "# headers")})
    commit(lib, "again")
    r = pib(ws, "build")
    assert r.returncode == 0, r.stderr
    assert "lib rebuilt, output unchanged: 1 dependent kept" in r.stdout

    # A real change: the dependent and the image follow.
    write(lib, {"build.sh": LIB_BUILD.replace("int lib(void);", "long lib(void);")})
    commit(lib, "change the header")
    third = _build(ws)
    assert _actions(third) == {"lib": "built", "core": "built"}
    assert third["cutoff"] == {}
    assert third["image"]["action"] == "built"  # type: ignore[index]
    assert "long lib" in (ws / "proto.core" / "bin" / "core").read_text()


def test_a_non_reproducible_dependency_is_reported(tmp_path: Path) -> None:
    stamper = LIB_BUILD + 'date +%s%N > "$DESTDIR/include/built-at"\n'
    ws = _ws(tmp_path, stamper)
    assert _actions(_build(ws)) == {"lib": "built", "core": "built"}
    r = pib(ws, "build", "--json", "--force", "lib")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert any(w.startswith("lib is not reproducible") for w in data["warnings"]), data["warnings"]
    assert _actions(data) == {"lib": "built"}
    # Its dependent follows the new output: built again, never silently kept.
    assert _actions(_build(ws)) == {"lib": "up-to-date", "core": "built"}


# ---------------------------------------------------------------- equivalences shared through a store

STORE_TOML = """\
[platform]
min_version = "1"
[components.lib]
source = "../repos/lib"
build = ["./build.sh"]
prebuilt = true
[components.core]
source = "../repos/core"
build = ["./build.sh"]
depends = ["lib"]
prebuilt = true
[local_store]
path = "../store-{name}"
[[store]]
name = "ci"
{store}
[trust]
public_keys = ["{pub}"]
signing_key_env = "CI_SIGNING_KEY"
"""


def _machines(tmp_path: Path, url: str, *, store: str | None = None,
              creds: dict[str, str] | None = None) -> tuple[Path, Path, dict[str, str], dict[str, str]]:
    """Workspace a publishes as CI; workspace b (own local store, no state) only restores. The shared
    store is HTTP at `url`, or the [[store]] lines `store` (with `creds` in the environment)."""
    store = store or f'type = "http"\nurl = "{url}"\ntimeout = 5\nretries = 1'
    make_repo(tmp_path / "repos" / "lib", {"build.sh": LIB_BUILD})
    make_repo(tmp_path / "repos" / "core", {"build.sh": CORE_BUILD, "manifest": MANIFEST})
    keys = tmp_path / "keys"
    keys.mkdir()
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           **(creds or {})}
    assert pib(tmp_path, "keygen", str(keys / "ci.key"), env=env).returncode == 0
    out = []
    for name in ("a", "b"):
        ws = tmp_path / name
        ws.mkdir()
        (ws / "pib.toml").write_text(STORE_TOML.format(name=name, store=store, pub=keys / "ci.key.pub"))
        assert pib(ws, "configure", env=env).returncode == 0
        out.append(ws)
    r = pib(out[0], "ci", "--json", env={**env, "CI": "true", "CI_SIGNING_KEY": str(keys / "ci.key")})
    assert r.returncode == 0, r.stderr
    published = {c["component"]: c for c in json.loads(r.stdout)["components"]}
    assert {n: c["published"] for n, c in published.items()} == {"lib": ["ci"], "core": ["ci"]}
    return out[0], out[1], env, {n: c["key"] for n, c in published.items()}


def test_an_empty_machine_keys_dependents_through_signed_equivalences(tmp_path: Path, nginx: Nginx) -> None:
    _a, b, env, keys = _machines(tmp_path, f"{nginx.url}/cutoff-{uuid.uuid4().hex[:8]}")

    # Before anything is restored, b knows core's key through lib's signed equivalence.
    ex = json.loads(pib(b, "explain", "core", "--json", env=env).stdout)
    assert ex["key"] == keys["core"] and ex["depends"] == {"lib": "equivalence from store ci"}
    assert not (b / "proto.lib").exists()

    r = pib(b, "build", "--json", env=env)
    assert r.returncode == 0, r.stderr
    got = {c["component"]: c for c in json.loads(r.stdout)["components"]}
    assert {n: (c["action"], c["key"]) for n, c in got.items()} == {
        "lib": ("restored", keys["lib"]), "core": ("restored", keys["core"])}
    assert got["lib"]["output"] == output_digest(b / "proto.lib")


def test_an_empty_machine_keys_dependents_through_equivalences_in_s3(tmp_path: Path, seaweed: Seaweed) -> None:
    """The same through SeaweedFS: the dependent's key is known from lib's signed metadata in S3 before
    lib's archive is downloaded, and both are then restored from S3."""
    bucket = f"cutoff-{uuid.uuid4().hex[:8]}"
    client: Any = seaweed.client()
    client.create_bucket(Bucket=bucket)
    store = (f'type = "s3"\nbucket = "{bucket}"\nendpoint_url = "{seaweed.endpoint_url}"\n'
             'region = "us-east-1"\ntimeout = 5\nretries = 1')
    creds = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    _a, b, env, keys = _machines(tmp_path, "", store=store, creds=creds)

    ex = json.loads(pib(b, "explain", "core", "--json", env=env).stdout)
    assert ex["key"] == keys["core"] and ex["depends"] == {"lib": "equivalence from store ci"}
    assert not (b / "proto.lib").exists()
    r = pib(b, "build", "--json", env=env)
    assert r.returncode == 0, r.stderr
    got = {c["component"]: c for c in json.loads(r.stdout)["components"]}
    assert {n: (c["action"], c["key"], c["store"]) for n, c in got.items()} == {
        "lib": ("restored", keys["lib"], "ci"), "core": ("restored", keys["core"], "ci")}


def test_an_equivalence_the_artifact_does_not_match_is_refused(tmp_path: Path, nginx: Nginx) -> None:
    prefix = f"cutoff-{uuid.uuid4().hex[:8]}"
    _a, b, env, keys = _machines(tmp_path, f"{nginx.url}/{prefix}")
    # lib's metadata, validly signed by the CI key, claims another output than its archive holds.
    [meta] = list((nginx.root / prefix).rglob(f"{keys['lib']}{META_SUFFIX}"))
    doc = json.loads(meta.read_bytes())
    del doc["signature"]
    doc["output_digest"] = "o1:" + "0" * 64
    meta.write_bytes(sign(doc, load_signer(tmp_path / "keys" / "ci.key")))

    r = pib(b, "build", "--json", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    got = {c["component"]: c for c in data["components"]}
    # lib is built here instead; core is keyed by what lib really holds, so the published core still fits.
    assert got["lib"]["action"] == "built" and got["core"]["action"] == "restored"
    assert got["core"]["key"] == keys["core"]
    assert any("verify" in w and "lib" in w for w in data["warnings"]), data["warnings"]


def test_each_published_artifact_carries_its_own_signed_provenance(tmp_path: Path, nginx: Nginx) -> None:
    """The metadata of a published artifact holds a DSSE envelope (in-toto v1, SLSA provenance v1) signed
    by the CI key: its subject is the archive's SHA-256 and the output digest, its inputs the source tree
    and commit and the dependency's output digest. Another key does not open it."""
    from pib.artifacts.provenance import COMPONENT_BUILD_TYPE, open_envelope
    from pib.artifacts.signing import generate_keypair, load_public_key

    prefix = f"prov-{uuid.uuid4().hex[:8]}"
    a, _b, _env, keys = _machines(tmp_path, f"{nginx.url}/{prefix}")
    [meta_path] = list((nginx.root / prefix).rglob(f"{keys['core']}{META_SUFFIX}"))
    meta = json.loads(meta_path.read_bytes())
    ci = load_public_key(tmp_path / "keys" / "ci.key.pub")
    stmt = open_envelope(meta["provenance"].encode(), [ci], what="core's provenance").statement
    [subject] = stmt["subject"]
    assert subject["name"] == f"pib:artifact/core/{keys['core']}"
    assert subject["digest"] == {"sha256": meta["archive_sha256"], "pibOutput": meta["output_digest"]}
    build = stmt["predicate"]["buildDefinition"]
    assert build["buildType"] == COMPONENT_BUILD_TYPE
    assert build["internalParameters"]["keyDocument"] == meta["key_doc"]
    deps = {d["name"]: d["digest"] for d in build["resolvedDependencies"]}
    lib_out = json.loads(next((a / ".pib" / "state").glob("lib.json")).read_text())["output"]
    assert deps["output:lib"] == {"pibOutput": lib_out}
    assert set(deps["source:core"]) == {"gitTree", "gitCommit"} and len(deps["source:core"]["gitCommit"]) == 40

    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    with pytest.raises(VerifyError):
        open_envelope(meta["provenance"].encode(), [load_public_key(tmp_path / "other.pub")], what="core")
