"""What pib prints that others wrote reaches the terminal with its control characters escaped.

A build's log tail, a store's HTTP reason phrase and the key document of an unverified artifact in a
store are printed by `pib build` and `pib explain`; escape sequences in them would retitle the
terminal, clear it or set the clipboard. Through the real CLI: no ESC, BEL or C1 byte reaches stdout
or stderr, and the escaped text (\\x1b...) shows what was there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pib.errors import EXIT_CODES, Reason
from tests.gitutil import core_workspace, pib
from tests.reliability import tally
from tests.services.badhttp import BadHttp

pytestmark = pytest.mark.integration

CONTROL = {chr(c) for c in (*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0))}
EVIL = "\x1b]0;pwned\x07\x1b[2J\x1b]52;c;cm0gLXJmIH4K\x07\x9b31m"

BUILD = """\
#!/bin/sh
set -e
mkdir -p "$DESTDIR/etc"
echo root:x:0:0::/:/bin/sh > "$DESTDIR/etc/passwd"
"""


def _ws(tmp_path: Path, build: str = BUILD, store: str = "") -> Path:
    ws = core_workspace(tmp_path, build, store)
    r = pib(ws, "configure")
    assert r.returncode == 0, r.stderr
    return ws


def _clean(text: str) -> bool:
    return not (set(text) & CONTROL)


def test_a_build_log_tail_is_escaped(tmp_path: Path) -> None:
    with tally("hostile build", "escape sequences in a failing build's log tail"):
        ws = _ws(tmp_path, BUILD + f"printf '{EVIL.replace(chr(0x9b), '')}\\n'\nexit 1\n")
        r = pib(ws, "build")
        assert r.returncode == EXIT_CODES[Reason.BUILD]
        assert "\\x1b]0;pwned\\x07" in r.stderr  # the log tail is shown, escaped
        assert _clean(r.stdout) and _clean(r.stderr)


def test_an_http_reason_phrase_is_escaped(tmp_path: Path, badhttp: BadHttp) -> None:
    with tally("hostile build", "escape sequences in a store's HTTP reason phrase"):
        store = f'[[store]]\nname = "remote"\ntype = "http"\nurl = "{badhttp.url}/escape/pib"\ntimeout = 5\n'
        ws = _ws(tmp_path, store=store)
        r = pib(ws, "build")
        assert r.returncode == 0, r.stderr
        assert "warning:" in r.stderr and "\\x1b]0;pwned" in r.stderr
        assert _clean(r.stdout) and _clean(r.stderr)
        r = pib(ws, "status", "--remote")
        assert _clean(r.stdout) and _clean(r.stderr)


def test_an_unverified_key_document_is_escaped(tmp_path: Path) -> None:
    """`pib explain` shows the key document of the newest artifact in a store, unverified: a store (or
    anyone who can write to it) chooses its field names."""
    with tally("hostile build", "escape sequences in an unverified artifact's key document (pib explain)"):
        ws = _ws(tmp_path)
        r = pib(ws, "build")
        assert r.returncode == 0, r.stderr
        comp = ws / "store" / "core"
        [meta] = comp.glob("*.json")
        doc = json.loads(meta.read_bytes())
        doc["key_doc"][EVIL] = 1
        doc["created"] = "9999-12-31T00:00:00Z"
        evil_key = "e" * 64
        (comp / f"{evil_key}.json").write_text(json.dumps(doc))
        for archive in comp.glob(f"{meta.stem}.*.tar.zst"):
            os.link(archive, comp / archive.name.replace(meta.stem, evil_key))
        r = pib(ws, "explain", "core")
        assert r.returncode == 0, r.stderr
        assert "\\x1b]0;pwned" in r.stdout  # the field is shown, escaped
        assert _clean(r.stdout) and _clean(r.stderr)
