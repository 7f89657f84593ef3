"""Hostile configuration values through the real CLI: a config error at pib.toml:LINE, fast, never a
traceback (deep arrays, 4,300-digit integers, inf and nan, ports past 65535, NUL bytes, a key file that
is /dev/zero or a fifo, a million retries)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pib.errors import EXIT_CODES, Reason
from tests.gitutil import make_repo
from tests.reliability import tally

HEAD = '[platform]\nmin_version = "1"\n[components.a]\nsource = "repos/a"\nbuild = ["./build.sh"]\n'
STORE = '[[store]]\nname = "w"\ntype = "http"\nurl = "http://127.0.0.1:1/pib"\n'
S3 = '[[store]]\nname = "s"\ntype = "s3"\nbucket = "b"\n'


def _nest(n: int) -> str:
    return "[" * n + "]" * n


# case -> (pib.toml text, the line the error must name)
CASES: dict[str, tuple[str, int]] = {
    "an array nested 5,000 deep": (f"[workspace]\nname = {_nest(5000)}\n", 2),
    "a 4,300-digit integer": ("[workspace]\njobs = " + "9" * 4300 + "\n", 2),
    "a 4,301-digit integer": ("[workspace]\n\njobs = " + "9" * 4301 + "\n", 3),
    "jobs = 100000": ("[workspace]\njobs = 100000\n", 2),
    "source_date_epoch = 2**40": (f"[workspace]\nsource_date_epoch = {1 << 40}\n", 2),
    "timeout = inf": (HEAD + STORE + "timeout = inf\n", 10),
    "timeout = nan": (HEAD + STORE + "timeout = nan\n", 10),
    "timeout = 1e999": (HEAD + STORE + "timeout = 1e999\n", 10),
    "boot timeout = inf": (HEAD + "[boot]\ntimeout = inf\n", 7),
    "retries = 1000000": (HEAD + STORE + "retries = 1000000\n", 10),
    "port 99999 in a store URL": (HEAD + STORE.replace(":1/", ":99999/"), 9),
    "port 99999 in an S3 endpoint": (HEAD + S3 + 'endpoint_url = "http://127.0.0.1:99999"\n', 10),
    "a quota of 10**30 T": (HEAD + '[local_store]\nquota = "' + "1" * 30 + 'T"\n', 7),
    "boot memory = 10**12": (HEAD + f"[boot]\nmemory = {10 ** 12}\n", 7),
    "NUL in a source path": (HEAD.replace('"repos/a"', '"repos/a\\u0000b"'), 4),
    "NUL in a proto path": (HEAD + 'proto = "p\\u0000q"\n', 6),
    "NUL in an environment value": (HEAD + 'env = { CC = "c\\u0000c" }\n', 6),
    "trust.public_keys = [\"/dev/zero\"]": (HEAD + '[trust]\npublic_keys = ["/dev/zero"]\n', 7),
    "a public key that is a fifo": (HEAD + '[trust]\npublic_keys = ["key.fifo"]\n', 7),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("badconfig")
    make_repo(root / "repos" / "a", {"build.sh": "#!/bin/sh\nmkdir -p $DESTDIR/x\n"})
    os.mkfifo(root / "key.fifo")
    return root


def _pib(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pib", "-C", str(ws), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_config_value_is_a_config_error_at_its_line(base: Path, case: str) -> None:
    text, line = CASES[case]
    with tally("bad config", case):
        ws = base  # relative paths (repos/a, key.fifo) resolve against the workspace
        (ws / "pib.toml").write_text(text)
        for command in (("config", "show", "--json"), ("configure", "--json")):
            start = time.monotonic()
            r = _pib(ws, *command)
            assert time.monotonic() - start < 20, "took too long"
            assert "Traceback" not in r.stderr, r.stderr
            if command[0] == "config" and r.returncode == 0:
                continue  # only read when used: a key file, say
            assert r.returncode == EXIT_CODES[Reason.CONFIG], (command, r.stderr)
            err = json.loads(r.stdout)["error"]
            assert err["reason"] == "config"
            assert err["where"] == f"{ws / 'pib.toml'}:{line}", (err, r.stderr)
            assert err["hint"]
