"""A real nginx (Debian nginx-light) serving a WebDAV-style artifact store on a free loopback port.

`/` is open (PUT/DELETE via dav_methods, JSON autoindex for listing);
`/private/` answers 401 unless the request carries `Bearer <token>`,
`/basic/` unless it carries basic credentials BASIC_USER:BASIC_PASSWORD.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.ports import free_ports, stop, wait_listening

TOKEN = "pib-test-token"
BASIC_USER, BASIC_PASSWORD = "pib", "s3cret"
_BASIC = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()

_DAV = """
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            autoindex on;
            autoindex_format json;
"""


@dataclass(frozen=True)
class Nginx:
    url: str
    root: Path
    token: str


def nginx_binary() -> str:
    for candidate in ("/usr/sbin/nginx", shutil.which("nginx")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("nginx not found: apt-get install nginx-light")


def start_nginx(workdir: Path) -> tuple[subprocess.Popen[bytes], Nginx]:
    www = workdir / "www"
    www.mkdir(parents=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "tmp" / sub).mkdir(parents=True)
    (port,) = free_ports(1)
    user = "user root;" if os.geteuid() == 0 else ""
    conf = workdir / "nginx.conf"
    t = workdir / "tmp"
    conf.write_text(f"""
{user}
daemon off;
worker_processes 2;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    client_max_body_size 0;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location / {{
{_DAV}
        }}
        location /private/ {{
            if ($http_authorization != "Bearer {TOKEN}") {{ return 401; }}
{_DAV}
        }}
        location /basic/ {{
            if ($http_authorization != "Basic {_BASIC}") {{ return 401; }}
{_DAV}
        }}
    }}
}}
""")
    log = workdir / "error.log"
    log.touch()
    proc = subprocess.Popen([nginx_binary(), "-p", str(workdir), "-c", str(conf), "-e", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_listening(port, proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc, Nginx(f"http://127.0.0.1:{port}", www, TOKEN)


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    proc, server = start_nginx(tmp_path_factory.mktemp("nginx"))
    try:
        yield server
    finally:
        stop(proc)
