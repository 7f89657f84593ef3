"""Sandboxed builds, through the real CLI with real bubblewrap: a build.sh that tries to reach what it
must not (secrets, other checkouts, the user's files, pib's process, the network) and to write
outside its proto area and scratch directory."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pib.artifacts.policy import machine_key_paths, machine_signer
from pib.artifacts.signing import generate_keypair
from pib.errors import EXIT_CODES, Reason
from tests.gitutil import make_repo, pib

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (scripts/setup)"),
]

MARKER = "pib-secret-marker-7f3a"

# Each line of probe.txt: "<what> ok" when the build could do it, "<what> denied" when not.
PROBE = r"""#!/bin/sh
set -u
pib_pid=$PPID
report=$DESTDIR/probe.txt
try() {
	name=$1
	shift
	if "$@" >/dev/null 2>&1; then echo "$name ok"; else echo "$name denied"; fi >>"$report"
}
try read-signing-key test -s "$PROBE_SIGNING_KEY"
try read-machine-key test -s "$PROBE_MACHINE_KEY"
try read-other-checkout cat "$PROBE_OTHER/secret.txt"
try read-user-gitconfig cat "$PROBE_USER_HOME/.gitconfig"
try read-opt-local ls /opt/local
try list-opt sh -c '[ -n "$(ls -A /opt)" ]'
try read-pib-environ grep -q -a "$PROBE_MARKER" "/proc/$pib_pid/environ"
try any-environ sh -c 'cat /proc/[0-9]*/environ | grep -q -a "$PROBE_MARKER"'
try own-environ sh -c 'env | grep -q -a "$PROBE_MARKER"'
try connect curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$PROBE_PORT/"
# (removed again at once: a build that leaves files in its own checkout fails the key re-check)
try write-checkout sh -c 'touch ./escape && rm -f ./escape'
try write-workspace touch "$PIB_WORKSPACE/escape"
try write-other-checkout touch "$PROBE_OTHER/escape"
try write-dep-proto touch "$PIB_DEP_OTHER/escape"
try write-ro-path touch "$PROBE_SHARED/escape"
try write-tmp touch "/tmp/$PROBE_TMPNAME"
try read-own-checkout cat ./build.sh
try read-dep-proto cat "$PIB_DEP_OTHER/out.txt"
try read-ro-path cat "$PROBE_SHARED/shared.txt"
try write-destdir touch "$DESTDIR/written"
try write-build-dir touch "$PIB_BUILD_DIR/written"
try write-home touch "$HOME/written"
exit 0
"""

OTHER = """\
#!/bin/sh
set -e
echo other > "$DESTDIR/out.txt"
"""

DENIED = ("read-signing-key", "read-machine-key", "read-other-checkout", "read-user-gitconfig", "read-opt-local",
          "list-opt", "read-pib-environ", "any-environ", "own-environ", "connect", "write-checkout",
          "write-workspace", "write-other-checkout", "write-dep-proto", "write-ro-path")
ALLOWED = ("read-own-checkout", "read-dep-proto", "read-ro-path", "write-destdir", "write-build-dir", "write-home",
           "write-tmp")


class _Hits(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    """A loopback HTTP server; the list holds the paths it was asked for."""
    hits: ClassVar[list[str]] = []
    handler = type("Handler", (_Hits,), {"hits": hits})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1], hits
    srv.shutdown()
    srv.server_close()


def probe_workspace(tmp_path: Path, port: int, *, sandbox: str = "", network: bool = False) -> Path:
    """Components `probe` (the probing build.sh) and `other` (its dependency, with a secret in its checkout)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_keypair(keys / "ci.key", keys / "ci.pub")
    machine_signer()  # the machine key exists, as it does after any local build of a prebuilt component
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "shared.txt").write_text("shared\n")
    make_repo(tmp_path / "repos" / "probe", {"build.sh": PROBE})
    make_repo(tmp_path / "repos" / "other", {"build.sh": OTHER, "secret.txt": "other's secret\n"})
    home = Path(os.environ["HOME"])
    if not (home / ".gitconfig").exists():
        (home / ".gitconfig").write_text("[user]\n\tname = the user\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    env = {
        "PROBE_SIGNING_KEY": str(keys / "ci.key"),
        "PROBE_MACHINE_KEY": str(machine_key_paths()[0]),
        "PROBE_OTHER": str(ws / "projects" / "other"),
        "PROBE_USER_HOME": str(home),
        "PROBE_MARKER": MARKER[:10] + "[" + MARKER[10] + "]" + MARKER[11:],  # the pattern is not the marker
        "PROBE_PORT": str(port),
        "PROBE_SHARED": str(shared),
        "PROBE_TMPNAME": f"pib-probe-{tmp_path.name}",
    }
    env_toml = ", ".join(f'{k} = "{v}"' for k, v in env.items())
    (ws / "pib.toml").write_text(f"""\
[platform]
min_version = "1"

[sandbox]
ro_paths = ["{shared}"]
{sandbox}

[components.other]
source = "../repos/other"
build = ["./build.sh"]

[components.probe]
source = "../repos/probe"
build = ["./build.sh"]
depends = ["other"]
network = {str(network).lower()}
env = {{ {env_toml} }}
""")
    (ws / "pib.local.toml").write_text(f'[trust]\nsigning_key = "{keys / "ci.key"}"\n')
    r = pib(ws, "configure")
    assert r.returncode == 0, r.stderr
    return ws


def build(ws: Path, *args: str) -> tuple[int, dict[str, Any]]:
    # pib's own environment holds secrets a build must never see.
    r = pib(ws, "build", "--json", *args, env={"PIB_SIGNING_KEY": MARKER, "AWS_SECRET_ACCESS_KEY": MARKER,
                                                "STORE_TOKEN": MARKER})
    return r.returncode, json.loads(r.stdout)


def probe_results(ws: Path) -> dict[str, str]:
    lines = (ws / "proto.probe" / "probe.txt").read_text().split("\n")
    return dict(line.split(" ", 1) for line in lines if line)


def test_a_build_sees_its_declared_inputs_and_nothing_else(tmp_path: Path, server: tuple[int, list[str]]) -> None:
    port, hits = server
    ws = probe_workspace(tmp_path, port)
    rc, report = build(ws)
    assert rc == 0, report
    got = probe_results(ws)
    assert {k: got[k] for k in DENIED} == dict.fromkeys(DENIED, "denied")
    assert {k: got[k] for k in ALLOWED} == dict.fromkeys(ALLOWED, "ok")
    assert hits == []  # the server never heard from the build
    # Nothing the build wrote outside its proto area and scratch directory reached the host.
    assert not (ws / "projects" / "probe" / "escape").exists()
    assert not (ws / "escape").exists()
    assert not Path(f"/tmp/pib-probe-{tmp_path.name}").exists()
    assert (ws / ".pib" / "build" / "probe" / "written").exists()
    assert not (ws / ".pib" / "home" / "written").exists()  # HOME is fresh for every build
    assert report["warnings"] == []


def test_mode_none_builds_as_before(tmp_path: Path, server: tuple[int, list[str]]) -> None:
    port, hits = server
    ws = probe_workspace(tmp_path, port, sandbox='mode = "none"')
    rc, report = build(ws)
    assert rc == 0, report
    got = probe_results(ws)
    # Unisolated: the build reaches what a sandboxed one cannot.
    for what in ("read-signing-key", "read-other-checkout", "read-pib-environ", "connect", "write-workspace"):
        assert got[what] == "ok", what
    assert hits == ["/"]
    assert "bwrap" not in (ws / "log" / "probe.log").read_text()
    # The key says the build was not sandboxed.
    r = pib(ws, "explain", "probe", "--json")
    assert json.loads(r.stdout)["document"]["isolation"] == {"sandbox": "none"}


def test_network_is_declared_and_part_of_the_key(tmp_path: Path, server: tuple[int, list[str]]) -> None:
    port, hits = server
    ws = probe_workspace(tmp_path, port)
    rc, first = build(ws, "probe")
    assert rc == 0, first
    assert probe_results(ws)["connect"] == "denied"
    text = (ws / "pib.toml").read_text().replace("network = false", "network = true")
    (ws / "pib.toml").write_text(text)
    rc, second = build(ws, "probe")
    assert rc == 0, second
    assert probe_results(ws)["connect"] == "ok" and hits == ["/"]
    # Still sandboxed in every other way.
    assert probe_results(ws)["read-signing-key"] == "denied"
    probe = next(c for c in second["components"] if c["component"] == "probe")
    assert probe["action"] == "built" and probe["key"] != first["components"][-1]["key"]
    r = pib(ws, "explain", "probe", "--json")
    assert json.loads(r.stdout)["document"]["isolation"] == {"network": True}


def test_required_without_bubblewrap_is_an_error(tmp_path: Path, server: tuple[int, list[str]]) -> None:
    ws = probe_workspace(tmp_path, server[0], sandbox='mode = "required"\nbwrap = "/nonexistent/bwrap"')
    rc, report = build(ws)
    assert rc == EXIT_CODES[Reason.CONFIG]
    assert report["error"]["reason"] == "config"
    assert report["error"]["where"] == f"{ws / 'pib.toml'}:6"  # the mode line
    assert not (ws / "proto.other").exists() and not (ws / "proto.probe").exists()


def test_without_bubblewrap_builds_unisolated_with_one_warning(tmp_path: Path, server: tuple[int, list[str]]) -> None:
    ws = probe_workspace(tmp_path, server[0], sandbox='bwrap = "/nonexistent/bwrap"')
    rc, report = build(ws)
    assert rc == 0, report
    assert [c["action"] for c in report["components"]] == ["built", "built"]
    assert len(report["warnings"]) == 1 and "not sandboxed" in report["warnings"][0]
    assert probe_results(ws)["read-other-checkout"] == "ok"


def test_secrets_inside_bound_paths_are_hidden(tmp_path: Path, server: tuple[int, list[str]]) -> None:
    """A signing key that lies inside a path a build may read is replaced by an empty file."""
    ws = probe_workspace(tmp_path, server[0])
    text = (ws / "pib.toml").read_text().replace(f'ro_paths = ["{tmp_path / "shared"}"]',
                                                 f'ro_paths = ["{tmp_path / "shared"}", "{tmp_path / "keys"}"]')
    (ws / "pib.toml").write_text(text)
    rc, report = build(ws)
    assert rc == 0, report
    got = probe_results(ws)
    assert got["read-signing-key"] == "denied"
    assert (tmp_path / "keys" / "ci.pub").read_text()  # the directory itself was visible


def test_writable_source(tmp_path: Path) -> None:
    """A component that writes into its checkout says so; its .git stays read-only."""
    make_repo(tmp_path / "repos" / "w", {"build.sh": """\
        #!/bin/sh
        set -e
        echo built > generated.txt
        if touch .git/hooks/post-checkout 2>/dev/null; then echo git-writable > "$DESTDIR/git"; fi
        cp generated.txt "$DESTDIR/"
        """, ".gitignore": "generated.txt\n"})
    ws = tmp_path / "ws"
    ws.mkdir()
    base = '[platform]\nmin_version = "1"\n[components.w]\nsource = "../repos/w"\nbuild = ["./build.sh"]\n'
    (ws / "pib.toml").write_text(base)
    assert pib(ws, "configure").returncode == 0
    r = pib(ws, "build", "--json")
    assert r.returncode == EXIT_CODES[Reason.BUILD]  # read-only checkout
    (ws / "pib.toml").write_text(base + "writable_source = true\n")
    r = pib(ws, "build", "--json")
    assert r.returncode == 0, r.stdout
    assert (ws / "proto.w" / "generated.txt").read_text() == "built\n"
    assert not (ws / "proto.w" / "git").exists()
    assert not (ws / "projects" / "w" / ".git" / "hooks" / "post-checkout").exists()


def test_missing_ro_path_names_the_line(tmp_path: Path, server: tuple[int, list[str]]) -> None:
    ws = probe_workspace(tmp_path, server[0])
    shutil.rmtree(tmp_path / "shared")
    rc, report = build(ws)
    assert rc == EXIT_CODES[Reason.CONFIG]
    assert report["error"]["reason"] == "config" and report["error"]["where"] == f"{ws / 'pib.toml'}:5"
    assert not (ws / "proto.other").exists()


@pytest.mark.parametrize("place", [".pib/home", ".pib/sandbox"])
def test_unwritable_sandbox_directories_are_a_workspace_error(tmp_path: Path, server: tuple[int, list[str]],
                                                              place: str) -> None:
    # The build's private HOME and the sandbox's passwd/group/hosts live in the workspace; where they
    # cannot be written, the build stops before it starts, naming the directory, and goes on once fixed.
    ws = probe_workspace(tmp_path, server[0])
    target = ws / place
    target.mkdir(parents=True, exist_ok=True)
    for cmd in (["mount", "--bind", str(target), str(target)], ["mount", "-o", "remount,bind,ro", str(target)]):
        subprocess.run(cmd, check=True, capture_output=True)
    try:
        code, out = build(ws)
        assert code == EXIT_CODES[Reason.WORKSPACE], out
        assert out["error"]["reason"] == "workspace"
        assert str(target) in json.dumps(out["error"])
        assert not (ws / "proto.probe").exists() and not (ws / "proto.other").exists()
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
    code, out = build(ws)
    assert code == 0, out
