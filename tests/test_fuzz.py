"""The manifest parser and the config loader under hypothesis: pib's own errors, never a traceback.

The normal suite runs a modest number of examples per property; a dedicated
run sets PIB_FUZZ_EXAMPLES (bench/reliability.py uses 10000).
"""

from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pib.config import loader as config_mod
from pib.errors import ConfigError, ManifestError, PibError, Reason
from pib.image import manifest
from tests.reliability import tally

EXAMPLES = int(os.environ.get("PIB_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# --------------------------------------------------------------------------
# Manifests

_PATH_CHARS = string.ascii_lowercase + "/._- \t\\:=\0é"
paths = st.one_of(
    st.text(_PATH_CHARS, max_size=20),
    st.lists(st.sampled_from(["etc", "usr", "bin", "..", ".", "", "lib", "a b", "x=y"]), max_size=5).map("/".join),
)
modes = st.one_of(st.sampled_from(["0644", "0755", "4755", "07777", "10000", "0x1", "", "-1", "0888"]),
                  st.integers(0, 0o77777).map(lambda m: f"{m:04o}"), st.text("0123456789abc", max_size=6))
names = st.one_of(st.sampled_from(["root", "sys", "bin", "", "a:b", "daemon"]), st.text(max_size=5))
kinds = st.one_of(st.sampled_from(["f", "d", "s", "h", "#", "x", "F", "ff"]), st.text(max_size=3))


@st.composite
def manifest_line(draw: st.DrawFn) -> str:
    kind = draw(kinds)
    path = draw(paths)
    if kind in ("s", "h") or (draw(st.booleans()) and kind not in ("f", "d")):
        return f"{kind} {path}={draw(paths)}"
    fields = [kind, path, draw(modes), draw(names), draw(names)]
    cut = draw(st.integers(1, 6))
    sep = draw(st.sampled_from([" ", "\t", "  ", " \t "]))
    return sep.join(fields[:cut])


manifest_texts = st.one_of(
    st.lists(manifest_line(), max_size=12).map("\n".join),
    st.text(max_size=200),
    st.lists(st.one_of(manifest_line(), st.text(max_size=30)), max_size=8).map("\n".join),
)


def _check_manifest_error(exc: ManifestError, text: str) -> None:
    assert exc.reason is Reason.MANIFEST
    assert exc.where is not None and exc.where.path == "fuzz.manifest"
    assert 1 <= exc.where.line <= max(1, len(text.splitlines()))
    assert exc.hint


def test_manifest_parser_raises_only_manifest_errors() -> None:
    with tally("fuzz", "manifest parser (text)") as t:
        t.tried = 0

        @FUZZ
        @given(manifest_texts)
        def prop(text: str) -> None:
            t.tried += 1
            try:
                m = manifest.parse_text(text, "fuzz.manifest", "c")
            except ManifestError as exc:
                _check_manifest_error(exc, text)
                return
            # What parses, round-trips.
            again = manifest.parse_text(m.to_text(), "again", "c")
            assert again.entries == m.entries

        prop()


def test_manifest_files_of_any_bytes() -> None:
    d = Path(tempfile.mkdtemp(prefix="pib-fuzz-"))
    f = d / "manifest"
    with tally("fuzz", "manifest parser (raw bytes)") as t:
        t.tried = 0

        @FUZZ
        @given(st.one_of(st.binary(max_size=200), manifest_texts.map(lambda s: s.encode("utf-8", "surrogatepass"))))
        def prop(data: bytes) -> None:
            t.tried += 1
            f.write_bytes(data)
            try:
                manifest.parse_file(f, "c")
            except ManifestError as exc:
                assert exc.where is not None and exc.where.path == str(f)

        prop()


def test_image_manifest_parser() -> None:
    line = st.lists(st.one_of(st.text(" abcdfhs0123456789-:/", max_size=12), paths), min_size=1, max_size=9).map(
        " ".join)
    with tally("fuzz", "boot_archive.manifest parser") as t:
        t.tried = 0

        @FUZZ
        @given(st.lists(line, max_size=6).map("\n".join))
        def prop(text: str) -> None:
            t.tried += 1
            try:
                manifest.parse_image_manifest(text, "fuzz.manifest")
            except ManifestError as exc:
                assert exc.where is not None and exc.where.line >= 1

        prop()


# --------------------------------------------------------------------------
# Config

GOOD = """\
[workspace]
name = "w"
jobs = 2

[platform]
min_version = "1"
detector = "auto"

[cbe]
name = "c"
version = "1"
lock = "cbe.lock.toml"

[components.a]
source = "../repos/a"
build = ["make"]
manifest = "manifest"
prebuilt = true
env = { CC = "cc" }

[components.b]
path = "b"
build = "./build.sh"
depends = ["a"]
key_files = ["compat"]

[local_store]
path = "store"
quota = "1G"

[[store]]
name = "web"
type = "http"
url = "http://127.0.0.1:1/pib"
timeout = 2.5

[trust]
public_keys = ["k.pub"]
publish = "ci"

[image]
kernel = ["a:boot/vmlinuz"]
overlays = ["overlay", { path = "o2", manifest = "o2/manifest" }]
compression = "zstd"
max_size = "16M"

[boot]
memory = 256
"""

_KEYS = ["workspace", "platform", "cbe", "components", "local_store", "store", "trust", "image", "boot",
         "name", "jobs", "min_version", "detector", "command", "version", "lock", "root", "system_path", "source",
         "path", "branch", "ref", "build", "depends", "key_files", "env", "prebuilt", "manifest", "proto", "dir",
         "quota", "type", "url", "bucket", "prefix", "timeout", "retries", "publish", "public_keys", "signing_key",
         "signing_key_env", "kernel", "overlays", "compression", "max_size", "archive_command", "memory", "marker",
         "a", "b", "A B", "1", ""]

scalars = st.one_of(
    st.booleans(), st.integers(-5, 1 << 40), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(["../repos/a", "/abs", "a:b", "16M", "lots", "http", "s3", "local",
                                           "zstd", "command", "..", "a", "b", "PIB_X", "bad name"]),
)
values: Any = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(_KEYS), values, max_size=6)


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else '"' + _esc(k) + '"'


def _esc(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch) if ord(ch) < 0xD800 else 0xFFFD:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + _esc(v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"


def to_toml(doc: dict[str, Any]) -> str:
    """Top-level tables as [sections], everything else inline (valid TOML for any generated doc)."""
    head, tables = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append(f"[{_toml_key(k)}]\n" + "".join(f"{_toml_key(a)} = {_toml_value(b)}\n" for a, b in v.items()))
        else:
            head.append(f"{_toml_key(k)} = {_toml_value(v)}\n")
    return "".join(head) + "\n".join(tables)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """The good config with a few line-level edits: deletions, duplicates, replaced values, junk."""
    lines = GOOD.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.integers(0, 4))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2 and "=" in lines[i]:
            k = lines[i].split("=", 1)[0]
            lines[i] = f"{k}= {_toml_value(draw(values))}"
        elif op == 3:
            lines.insert(i, draw(st.text(max_size=20)))
        elif op == 4:
            lines[i] = f"{draw(st.sampled_from(_KEYS))} = {_toml_value(draw(scalars))}"
        if not lines:
            lines.append("")
    return "\n".join(lines) + "\n"


_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="pib-fuzz-config-"))


def _load(text: str | bytes) -> None:
    path = _CONFIG_DIR / config_mod.CONFIG_NAME
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    path.write_bytes(text)
    try:
        config_mod.load(_CONFIG_DIR)
    except ConfigError as exc:
        assert exc.reason is Reason.CONFIG
        assert exc.where is None or exc.where.path.endswith(config_mod.CONFIG_NAME) or exc.where.path.endswith(
            "pib.local.toml"), exc.where
    except PibError as exc:  # pragma: no cover - a reason other than CONFIG is still pib's own error
        raise AssertionError(f"config load raised {exc.reason}, not a config error: {exc}") from exc


def test_good_config_loads() -> None:
    # The base of the mutations is valid, so the mutations start from real structure.
    (_CONFIG_DIR / config_mod.CONFIG_NAME).write_text(GOOD)
    cfg = config_mod.load(_CONFIG_DIR)
    assert [c.name for c in cfg.components] == ["a", "b"]


def test_config_loader_generated_documents() -> None:
    with tally("fuzz", "config loader (generated documents)") as t:
        t.tried = 0

        @FUZZ
        @given(documents)
        def prop(doc: dict[str, Any]) -> None:
            t.tried += 1
            _load(to_toml(doc))

        prop()


def test_config_loader_mutated_config() -> None:
    with tally("fuzz", "config loader (mutated valid config)") as t:
        t.tried = 0

        @FUZZ
        @given(mutated())
        def prop(text: str) -> None:
            t.tried += 1
            _load(text)

        prop()


def test_config_loader_any_bytes() -> None:
    with tally("fuzz", "config loader (raw bytes)") as t:
        t.tried = 0

        @FUZZ
        @given(st.one_of(st.binary(max_size=120), mutated().map(lambda s: s.encode("utf-8", "surrogatepass")[:-7])))
        def prop(data: bytes) -> None:
            t.tried += 1
            _load(data)

        prop()


def test_non_utf8_config_is_a_config_error_with_line() -> None:
    (_CONFIG_DIR / config_mod.CONFIG_NAME).write_bytes(b'[workspace]\nname = "\xff"\n')
    try:
        config_mod.load(_CONFIG_DIR)
    except ConfigError as exc:
        assert exc.where is not None and exc.where.line == 2
    else:
        raise AssertionError("invalid UTF-8 was accepted")


# --------------------------------------------------------------------------
# CBE lock files (they come from a repository, so they are input too)

LOCK = """\
format = 1
name = "smartos-cbe"
version = "1"
provider = "pkgsrc"

[path]
bin = ["bin", "sbin"]

[pkgsrc]
bootstrap_url = "file:///k.tgz"
bootstrap_sha256 = "{}"
prefix = "/opt/smartos-cbe/1"
repository = "https://pkgsrc.smartos.org/packages/SmartOS/2024Q4/x86_64/All"
packages = ["gcc13-13.2.0", "gmake-4.4.1"]

[[packages]]
name = "tinytool"
version = "1.0"
sha256 = "{}"
""".format("b" * 64, "a" * 64)

_LOCK_KEYS = ["format", "name", "version", "provider", "path", "bin", "pkgsrc", "pip", "tarball", "debian",
              "packages", "sha256", "bootstrap_url", "bootstrap_sha256", "prefix", "repository", "find_links",
              "index_url", "files", "env", "url", "a", ""]


@st.composite
def mutated_lock(draw: st.DrawFn) -> str:
    lines = LOCK.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.integers(0, 3))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2 and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + _toml_value(draw(values))
        else:
            lines[i] = f"{draw(st.sampled_from(_LOCK_KEYS))} = {_toml_value(draw(scalars))}"
        if not lines:
            lines.append("")
    return "\n".join(lines) + "\n"


def test_cbe_lock_parser() -> None:
    from pib.cbe.pins import load as load_lock
    from pib.errors import CbeError

    path = _CONFIG_DIR / "cbe.lock.toml"
    path.write_text(LOCK)
    assert load_lock(path).name == "smartos-cbe"
    lock_docs = st.dictionaries(st.sampled_from(_LOCK_KEYS), values, max_size=6).map(to_toml)
    with tally("fuzz", "CBE lock parser") as t:
        t.tried = 0

        @FUZZ
        @given(st.one_of(mutated_lock(), lock_docs, st.binary(max_size=100).map(lambda b: b.decode("latin-1"))))
        def prop(text: str) -> None:
            t.tried += 1
            path.write_bytes(text.encode("utf-8", "surrogatepass"))
            try:
                load_lock(path)
            except CbeError as exc:
                assert exc.reason is Reason.CBE

        prop()
