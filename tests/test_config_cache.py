"""The parsed configuration kept in .pib/config-cache: used when the files are the same bytes, never when
they are not, whatever their stat data says; what depends on the file system is checked every time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pib.config import cache, loader
from pib.config.loader import load
from pib.errors import ConfigError

BODY = """\
[platform]
min_version = "1"

[components.a]
path = "src/a"
build = ["./one.sh"]

[components.b]
path = "src/b"
build = ["./two.sh"]
depends = ["a"]
"""


@pytest.fixture()
def ws(tmp_path: Path) -> Path:
    (tmp_path / ".pib").mkdir()
    (tmp_path / "pib.toml").write_text(BODY)
    return tmp_path


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("parsed pib.toml although the cache holds it")

    monkeypatch.setattr(loader, "toml_loads", refuse)


def _same_stat(path: Path, text: str) -> None:
    """Rewrite `path` with text of the same size and give it back its old mtime (same second, same size)."""
    st = path.stat()
    assert len(text.encode()) == st.st_size
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_an_unchanged_pib_toml_is_not_parsed_again(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load(ws)
    assert (ws / ".pib" / "config-cache").is_file()
    _no_parsing(monkeypatch)
    again = load(ws)
    assert again == first
    assert str(again.sources["components.b.depends"]) == f"{ws / 'pib.toml'}:11"  # file:line survive the cache


def test_an_edit_in_the_same_second_to_the_same_size_is_seen(ws: Path) -> None:
    load(ws)
    _same_stat(ws / "pib.toml", BODY.replace("./one.sh", "./uno.sh"))
    assert load(ws).component("a").build == ("./uno.sh",)


def test_a_file_replaced_by_a_rename_is_seen(ws: Path) -> None:
    load(ws)
    new = ws / "pib.toml.new"
    new.write_text(BODY.replace("./two.sh", "./dos.sh"))
    os.utime(new, ns=(0, (ws / "pib.toml").stat().st_mtime_ns))
    os.replace(new, ws / "pib.toml")
    assert load(ws).component("b").build == ("./dos.sh",)


def test_a_clock_set_back_does_not_hide_an_edit(ws: Path) -> None:
    load(ws)
    (ws / "pib.toml").write_text(BODY.replace("./one.sh", "./ein.sh"))
    os.utime(ws / "pib.toml", (1_000_000, 1_000_000))  # older than the cache entry
    os.utime(ws / ".pib" / "config-cache", None)
    assert load(ws).component("a").build == ("./ein.sh",)


def test_pib_local_toml_added_and_removed_is_seen(ws: Path) -> None:
    assert load(ws).component("a").env == ()
    (ws / "pib.local.toml").write_text('[components.a]\nenv = { X = "1" }\n')
    got = load(ws)
    assert got.component("a").env == (("X", "1"),)
    assert str(got.sources["components.a.env"]) == f"{ws / 'pib.local.toml'}:2"
    assert load(ws, local=False).component("a").env == ()
    (ws / "pib.local.toml").unlink()
    assert load(ws).component("a").env == ()


def test_home_is_part_of_the_key(ws: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    (ws / "pib.local.toml").write_text('[local_store]\npath = "~/store"\n')
    homes = [tmp_path_factory.mktemp("home1"), tmp_path_factory.mktemp("home2")]
    for home in homes:
        monkeypatch.setenv("HOME", str(home))
        assert load(ws).local_store.path == home / "store"


def test_the_file_system_checks_run_on_a_cached_configuration(ws: Path) -> None:
    (ws / "pib.toml").write_text(BODY + 'proto = "out"\n')
    load(ws)
    (ws / "out").symlink_to(ws.parent)  # the proto area would now hold the workspace
    with pytest.raises(ConfigError) as err:
        load(ws)
    assert "would contain the workspace" in err.value.message
    assert err.value.where is not None and err.value.where.line == 12


def test_a_torn_or_foreign_cache_is_a_miss(ws: Path) -> None:
    want = load(ws)
    entry = ws / ".pib" / "config-cache"
    for junk in (b"", b"garbage", entry.read_bytes()[:-20], b"\0" * 100):
        entry.write_bytes(junk)
        assert load(ws) == want


def test_a_bad_configuration_is_not_kept(ws: Path) -> None:
    (ws / "pib.toml").write_text(BODY + "bogus = 1\n")
    with pytest.raises(ConfigError):
        load(ws)
    assert not (ws / ".pib" / "config-cache").exists()
    with pytest.raises(ConfigError):
        load(ws)


def test_no_pib_directory_no_cache(tmp_path: Path) -> None:
    (tmp_path / "pib.toml").write_text(BODY)
    load(tmp_path)
    assert not (tmp_path / ".pib").exists()
    assert cache.path_for(tmp_path) is None


def test_licenses_are_checked_again_on_a_cached_configuration(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SPDX list is the installed package's: one that no longer knows an identifier refuses it."""
    from pib.config import license as spdx

    (ws / "pib.toml").write_text(BODY + 'license = "MIT"\n')
    assert load(ws).component("b").license == "MIT"
    monkeypatch.setattr(spdx, "_spdx_ids", lambda: frozenset({"apache-2.0"}))
    with pytest.raises(ConfigError) as err:
        load(ws)
    assert err.value.where is not None and err.value.where.line == 12
