from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pib.artifacts.signing import load_public_key, load_signer
from pib.cli import main
from pib.cli.store import parse_size
from pib.errors import PibError, Reason
from pib.store.local import LocalStore

K1, K2 = "1" * 64, "2" * 64


def test_keygen_writes_a_usable_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", str(tmp_path / "ci.key")]) == 0
    pub = load_public_key(tmp_path / "ci.key.pub")
    assert load_signer(tmp_path / "ci.key").public == pub
    assert pub.id in capsys.readouterr().out
    assert main(["keygen", str(tmp_path / "ci.key")]) == 2  # never overwrites (usage error)


def test_cache_ls_gc_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = LocalStore(tmp_path / "s")
    arc = tmp_path / "a"
    arc.write_bytes(b"x" * 1000)
    store.put("illumos", K1, arc, b"{}")
    store.put("extra", K2, arc, b"{}")
    os.utime(store.root / "illumos" / f"{K1}.json", (1000, 1000))
    capsys.readouterr()
    assert main(["cache", "ls", "--store", str(store.root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["component"], e["key"]) for e in listed["entries"]] == [("illumos", K1), ("extra", K2)]
    assert main(["cache", "gc", "--store", str(store.root), "--quota", "1500"]) == 0
    assert {e.key for e in store.list()} == {K2}
    assert main(["cache", "rm", "extra", "--store", str(store.root)]) == 0
    assert store.list() == []
    assert main(["cache", "rm", "extra", "--store", str(store.root)]) == 2


def test_parse_size() -> None:
    assert parse_size("1500") == 1500
    assert parse_size("2K") == 2048
    assert parse_size("1.5G") == int(1.5 * 1024**3)
    assert parse_size("20GiB") == 20 * 1024**3
    assert parse_size("20Gi") == 20 * 1024**3  # as pib.toml's local_store.quota reads it
    with pytest.raises(PibError) as exc:
        parse_size("lots")
    assert exc.value.reason is Reason.USAGE


def test_cache_gc_takes_the_sizes_pib_toml_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "pib.toml").write_text(f'[local_store]\npath = "{tmp_path / "s"}"\nquota = "20Gi"\n')
    store = LocalStore(tmp_path / "s")
    arc = tmp_path / "a"
    arc.write_bytes(b"x" * 1000)
    store.put("extra", K1, arc, b"{}")
    assert main(["-C", str(ws), "cache", "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quota"] == 20 * 1024**3
    assert main(["cache", "gc", "--store", str(store.root), "--quota", "20Gi", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == []
    assert {e.key for e in store.list()} == {K1}
    assert main(["cache", "gc", "--store", str(store.root), "--quota", "0.5Ki"]) == 0
    assert store.list() == []
