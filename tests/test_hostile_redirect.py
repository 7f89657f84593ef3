"""An HTTP store that redirects or sends a gzip-encoded body, through the real CLI: pib must never follow a
redirect (off the store's origin, to file://, in a loop) and never decompress a transfer encoding into
memory (a gzip bomb as metadata or as the archive). Each ends in a store or verify warning and a local
build. The store is a small loopback server holding what `pib build --publish` put there; afterwards it
answers the case's way."""

from __future__ import annotations

import contextlib
import gzip
import json
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pib.artifacts.signing import generate_keypair
from tests.gitutil import core_workspace
from tests.reliability import tally

pytestmark = pytest.mark.integration

BUILD = "#!/bin/sh\nset -e\nmkdir -p \"$DESTDIR/etc\"\necho root:x:0:0::/:/bin/sh > \"$DESTDIR/etc/passwd\"\n"
BOMB_BYTES = 256 << 20  # what the gzip body would decompress to


@cache
def _bomb() -> bytes:
    return gzip.compress(b"\0" * BOMB_BYTES, compresslevel=9)  # about 250 KiB: under the metadata limit


class _Store(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.mode = "plain"
        self.log: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: _Store

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, head: bool) -> None:
        self.server.log.append(f"{self.command} {self.path}")
        mode, path = self.server.mode, self.path
        target = ("head" if head else "meta") if path.endswith(".json") else "archive" if path.endswith(".tar.zst") \
            else ""
        body = self.server.files.get(path)
        if body is None:
            self._send(404, b"")
            return
        case, _, what = mode.partition(":")
        if what != target or case == "plain":
            self._send(200, body, head=head)
        elif case.startswith("redirect"):
            port = self.server.server_address[1]
            location = {"redirect-file": "file:///etc/passwd", "redirect-loop": path}.get(
                case, f"http://localhost:{port}/record{path}")
            status = int(case.rpartition("-")[2]) if case[-1].isdigit() else 302
            self._send(status, b"moved\n", {"Location": location}, head=head)
        elif case == "gzip":
            self._send(200, _bomb(), {"Content-Encoding": "gzip"}, head=head)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            with contextlib.suppress(OSError):  # pib hangs up on what it refuses
                self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.files[self.path] = self.rfile.read(length)
        self.server.log.append(f"PUT {self.path}")
        self._send(201, b"")

    def do_DELETE(self) -> None:
        found = self.server.files.pop(self.path, None) is not None
        self._send(204 if found else 404, b"")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, _Store]]:
    """A workspace whose component is published to the loopback store (and to no local store)."""
    root = tmp_path_factory.mktemp("redirect")
    server = _Store()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    generate_keypair(root / "key.priv", root / "key.pub")
    ws = core_workspace(root, BUILD, f"""\
[[store]]
name = "remote"
type = "http"
url = "http://127.0.0.1:{server.server_address[1]}/s"
timeout = 2
retries = 1
[trust]
public_keys = ["{root}/key.pub"]
signing_key = "{root}/key.priv"
publish = "always"
""")
    assert _pib(ws, "configure").returncode == 0
    r = _pib(ws, "build", "--publish", "--json")
    assert r.returncode == 0, r.stderr
    assert any(p.endswith(".tar.zst") for p in server.files), server.log
    try:
        yield ws, server
    finally:
        server.shutdown()
        server.server_close()


def _pib(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pib", "-C", str(ws), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


MEASURE = """\
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
sys.stderr.write(r.stderr)
sys.stdout.write(r.stdout)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(r.returncode)
"""

CASES = [f"redirect-{n}:{what}" for n in (301, 302, 307) for what in ("meta", "archive")] + [
    "redirect-302:head", "redirect-file:meta", "redirect-loop:meta", "redirect-loop:archive", "gzip:meta", "gzip:archive"]


@pytest.mark.parametrize("case", CASES)
def test_a_store_that_redirects_or_gzips(published: tuple[Path, _Store], case: str) -> None:
    ws, server = published
    with tally("hostile store", f"HTTP store answers {case.replace(':', ' for the ')}"):
        # The restore may only come from the remote store: the local one and the proto area go.
        shutil.rmtree(ws / "store", ignore_errors=True)
        assert _pib(ws, "clobber", "core").returncode == 0
        server.mode = case
        seen = len(server.log)
        r = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "pib", "-C", str(ws), "build",
                            "--json"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=180)
        server.mode = "plain"
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        report = json.loads(r.stdout)
        assert report["components"][0]["action"] == "built", report
        assert any("remote" in w for w in report["warnings"]), report["warnings"]
        asked = server.log[seen:]
        assert asked and not [line for line in asked if "/record/" in line], asked
        # The bomb stays bytes: pib never decompressed it (its maximum resident set stays far below it).
        assert int(r.stderr.strip().splitlines()[-1]) * 1024 < BOMB_BYTES // 2
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < 4 * BOMB_BYTES
