"""A misbehaving HTTP server on loopback, for testing that stores fail fast and cleanly.

The first path segment picks the behaviour for every request under it:
  /500/...      answers 500          /503/...   answers 503
  /stall/...    reads the request, never answers
  /truncated/...  promises 100000 bytes, sends 10, closes
  /shortlength/...  sends more bytes than its Content-Length says
  /drip/...     sends headers, then one byte every 0.2 s for as long as the client listens
  /drip554/...  the same with `Content-Length: 554` (a small archive's exact size)
  /dripheaders/...  sends its status line and headers one byte every 0.2 s, forever
  /nolength/... answers 200 with no Content-Length and sends bytes until the client hangs up
  /chunked/...  answers 200 with a chunked body that never ends
  /escape/...   answers 500 with terminal escape sequences in its reason phrase
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.services.ports import free_ports

MODES = ("500", "503", "stall", "truncated", "shortlength", "drip", "drip554", "dripheaders", "nolength", "chunked")
# Retitles the terminal, clears the screen and (on terminals that allow it) sets the clipboard.
ESCAPES = b"\x1b]0;pwned\x07\x1b[2J\x1b]52;c;cm0gLXJmIH4K\x07\x9b31m"


@dataclass(frozen=True)
class BadHttp:
    url: str
    refused_url: str  # a loopback port where nothing listens
    requests: list[str]


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
        except OSError:
            return
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        self.server.log.append(line)
        parts = line.split(" ")
        path = parts[1] if len(parts) > 1 else "/"
        mode = path.strip("/").split("/", 1)[0]
        stop = self.server.stopping
        try:
            if mode in ("500", "503"):
                body = b"broken\n"
                sock.sendall(f"HTTP/1.1 {mode} Oops\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                             .encode() + body)
            elif mode == "escape":
                sock.sendall(b"HTTP/1.1 500 " + ESCAPES + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            elif mode == "stall":
                stop.wait(60)
            elif mode == "truncated":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n0123456789")
            elif mode == "shortlength":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{\"a\": \"bcdefgh\"}")
            elif mode in ("drip", "drip554"):
                length = 554 if mode == "drip554" else 100000
                sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode())
                for _ in range(length):
                    if stop.wait(0.2):
                        break
                    sock.sendall(b"x")
            elif mode == "dripheaders":
                head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n" + b"X-Slow: " + b"y" * 100000
                for i in range(len(head)):
                    if stop.wait(0.2):
                        break
                    sock.sendall(head[i:i + 1])
            elif mode == "nolength":
                sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                while not stop.is_set():
                    sock.sendall(b"z" * 65536)
            elif mode == "chunked":
                sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                while not stop.is_set():
                    sock.sendall(b"10000\r\n" + b"z" * 65536 + b"\r\n")
            else:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.log: list[str] = []
        self.stopping = threading.Event()


@pytest.fixture(scope="session")
def badhttp() -> Iterator[BadHttp]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    (refused,) = free_ports(1)
    try:
        yield BadHttp(f"http://127.0.0.1:{server.server_address[1]}", f"http://127.0.0.1:{refused}", server.log)
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
