"""pib.toml loading: values, provenance, and bad input with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pib.config.loader import load, topo_order
from pib.errors import ConfigError, Reason

GOOD = """\
[workspace]
name = "demo"
jobs = 3

[platform]
min_version = "20180329T002515Z"
detector = "smartos"

[components.illumos]
source = "https://example.invalid/illumos.git"
branch = "master"
build = ["./build.sh"]
key_files = ["keys/illumos-compat"]

[components.extra]
source = "../extra"
build = "make install"
depends = ["illumos"]
prebuilt = true
env = { OPT = "-O2" }
"""


def ws(tmp_path: Path, text: str, local: str | None = None) -> Path:
    (tmp_path / "pib.toml").write_text(text)
    if local is not None:
        (tmp_path / "pib.local.toml").write_text(local)
    return tmp_path


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load(ws(tmp_path, GOOD))
    assert cfg.workspace.jobs == 3
    assert cfg.platform.min_version == "20180329T002515Z"
    extra = cfg.component("extra")
    assert extra.build == ("make install",)
    assert extra.proto == tmp_path / "proto.extra"
    assert extra.checkout == tmp_path / "projects" / "extra"
    assert extra.source == str(tmp_path / "../extra")
    assert extra.env == (("OPT", "-O2"),)
    assert [c.name for c in topo_order(cfg)] == ["illumos", "extra"]
    assert str(cfg.sources["components.extra.prebuilt"]) == f"{tmp_path / 'pib.toml'}:19"


def test_local_override_wins_and_is_named(tmp_path: Path) -> None:
    cfg = load(ws(tmp_path, GOOD, local='[components.illumos]\nbranch = "PR-42"\n'))
    assert cfg.component("illumos").branch == "PR-42"
    assert str(cfg.sources["components.illumos.branch"]) == f"{tmp_path / 'pib.local.toml'}:2"
    assert cfg.component("illumos").build == ("./build.sh",)


BAD = [
    # (name, text, line, fragment of message)
    ("unknown top key", GOOD + "\n[imagee]\nx = 1\n", 22, "unknown key 'imagee'"),
    ("unknown component key", GOOD.replace('prebuilt = true', 'prebuilt = true\nprebuild = 1'), 20, "prebuild"),
    ("wrong type", GOOD.replace("jobs = 3", 'jobs = "3"'), 3, "must be an integer"),
    ("bool as string", GOOD.replace("prebuilt = true", 'prebuilt = "yes"'), 19, "true or false"),
    ("missing build", GOOD.replace('build = "make install"\n', ""), 15, "no build command"),
    ("unknown dependency", GOOD.replace('depends = ["illumos"]', 'depends = ["illumos", "kernel"]'), 18,
     "unknown component 'kernel'"),
    ("cycle", GOOD.replace('key_files = ["keys/illumos-compat"]', 'depends = ["extra"]'), 18, "dependency cycle"),
    ("source and path", GOOD.replace('source = "../extra"', 'source = "../extra"\npath = "x"'), 15, "exactly one of"),
    ("bad detector", GOOD.replace('"smartos"', '"uname"'), 7, "not one of"),
    ("bad name", GOOD.replace("[components.extra]", "[components.Extra]"), 15, "not allowed"),
    ("syntax", GOOD.replace('name = "demo"', 'name = "demo'), 2, "not valid TOML"),
    ("secret in store", GOOD + '\n[[store]]\ntype = "http"\nurl = "http://x"\ntoken_env = "abc def"\n', 25,
     "environment variable"),
    ("http store without url", GOOD + '\n[[store]]\ntype = "http"\n', 22, "needs url"),
    ("both branch and ref", GOOD.replace('branch = "master"', 'branch = "master"\nref = "v1"'), 12, "both branch and ref"),
    ("shared proto", GOOD.replace('prebuilt = true', 'prebuilt = true\nproto = "proto.illumos"'), 15, "share the proto"),
    ("bad size", GOOD + '\n[image]\nmax_size = "lots"\n', 23, "a size"),
    ("bad duplicates rule", GOOD + '\n[image]\nduplicates = "loose"\n', 23, "not one of"),
    ("proto is its own checkout", GOOD.replace('prebuilt = true', 'prebuilt = true\nproto = "projects/extra"'), 20,
     "is its own checkout"),
    ("proto is another's checkout", GOOD.replace('prebuilt = true', 'prebuilt = true\nproto = "projects/illumos"'),
     20, "is the checkout of 'illumos'"),
    ("proto contains checkouts", GOOD.replace('prebuilt = true', 'prebuilt = true\nproto = "projects"'), 20,
     "contains"),
    ("proto inside .git", GOOD.replace('prebuilt = true', 'prebuilt = true\nproto = "projects/illumos/.git/p"'), 20,
     "inside a .git directory"),
    ("bad sandbox mode", GOOD + '\n[sandbox]\nmode = "jail"\n', 23, "not one of"),
    ("sandbox sees everything", GOOD + '\n[sandbox]\nro_paths = ["/usr", "/"]\n', 23, "cannot hold /"),
    ("unknown sandbox key", GOOD + '\n[sandbox]\nnetwork = true\n', 23, "unknown key 'sandbox.network'"),
    ("network as string", GOOD.replace("prebuilt = true", 'network = "yes"'), 19, "true or false"),
]


@pytest.mark.parametrize(("name", "text", "line", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_file_and_line(tmp_path: Path, name: str, text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(ws(tmp_path, text))
    err = info.value
    assert err.reason is Reason.CONFIG
    assert err.where is not None and err.where.path == str(tmp_path / "pib.toml")
    assert err.where.line == line, str(err)
    assert fragment in err.message
    assert err.hint or "TOML" in err.message


def test_bad_value_in_local_file_points_there(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(ws(tmp_path, GOOD, local="[workspace]\n\njobs = 0\n"))
    assert info.value.where is not None
    assert info.value.where.path.endswith("pib.local.toml") and info.value.where.line == 3


def test_sizes_parse(tmp_path: Path) -> None:
    cfg = load(ws(tmp_path, GOOD + '\n[image]\nmax_size = "64M"\n'))
    assert cfg.image is not None and cfg.image.max_size == 64 << 20
