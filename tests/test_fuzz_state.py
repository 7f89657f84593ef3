"""pib's own records and a store's metadata under hypothesis, through the real loaders and the real CLI.

The loaders (build records, the image record, signed store metadata) may only answer "no record" (set
aside) or pib's own error. Through `pib.cli.main` in-process, a build over a fuzzed record, private index
memo, pib.toml or CBE lock ends with 0 or a PibError exit code, never a traceback or the internal-error
safety net, and leaves nothing half-written. The normal suite runs a few examples per property;
PIB_FUZZ_EXAMPLES (bench/reliability.py) runs many.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import string
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pib.artifacts.metadata import ArtifactInfo, make_metadata, read_metadata, sign
from pib.artifacts.signing import generate_keypair, load_signer
from pib.build import state
from pib.errors import EXIT_CODES, PibError, Reason
from tests.gitutil import make_repo
from tests.reliability import tally

EXAMPLES = int(os.environ.get("PIB_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150,
                suppress_health_check=list(HealthCheck))
# A whole build per example: a hundredth of the loaders' count (at least five).
CLI_EXAMPLES = max(5, EXAMPLES // 100)
CLI_FUZZ = settings(FUZZ, max_examples=CLI_EXAMPLES)

# --------------------------------------------------------------------------
# JSON documents: what pib wrote, with fields swapped for hostile values

hostile_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10 ** 300, max_value=10 ** 400),
    st.floats(), st.text(max_size=20), st.sampled_from(["", "\0", "/", "..", "x" * 300, "-1", "1e999"]),
)
hostile: Any = st.recursive(hostile_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=10)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


@st.composite
def mutated_json(draw: st.DrawFn, good: dict[str, Any]) -> bytes:
    """`good` with some fields replaced, removed or added, then perhaps cut short or nested deep."""
    doc: Any = json.loads(json.dumps(good))
    for _ in range(draw(st.integers(0, 3))):
        target = doc
        # Sometimes one level down (image.json's "image", a record's "proto" or "files").
        inner = [k for k, v in target.items() if isinstance(v, dict)] if isinstance(target, dict) else []
        if inner and draw(st.booleans()):
            target = target[draw(st.sampled_from(inner))]
        keys = sorted(target) or ["x"]
        op = draw(st.integers(0, 2))
        k = draw(st.sampled_from(keys))
        if op == 0:
            target[k] = draw(hostile)
        elif op == 1:
            target.pop(k, None)
        else:
            target[draw(st.text(max_size=6))] = draw(hostile)
    if draw(st.integers(0, 9)) == 0:
        doc = draw(st.one_of(hostile, st.just(json.loads(_deep(draw(st.integers(60, 900)))))))
    raw = json.dumps(doc, allow_nan=True).encode()
    cut = draw(st.integers(0, 12))
    if cut == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif cut == 1:
        raw = draw(st.binary(max_size=80))
    elif cut == 2:
        raw = b"[" * draw(st.integers(1000, 100_000))
    return raw


# --------------------------------------------------------------------------
# Loaders

GOOD_RECORD: dict[str, Any] = {
    "component": "a", "key": "k" * 64, "doc": {"tree": "t", "depends": {"b": "o"}}, "action": "built",
    "finished": 1.5, "seconds": 0.25, "proto": {"inode": 1, "mtime_ns": 2, "entries": 3}, "dirty": False,
    "store": None, "files": {"x": [1, 2, 0o100644]}, "output": "sha256:" + "0" * 64, "head": "h" * 40,
}


def test_build_record_loader() -> None:
    from pib import keys

    d = Path(tempfile.mkdtemp(prefix="pib-fuzz-state-"))
    proto = d / "proto"
    (proto / "x").mkdir(parents=True)
    path = d / "state" / "a.json"
    path.parent.mkdir()
    with tally("fuzz", "build record loader (.pib/state/NAME.json)") as t:
        t.tried = 0

        @FUZZ
        @given(mutated_json(GOOD_RECORD))
        def prop(raw: bytes) -> None:
            t.tried += 1
            path.write_bytes(raw)
            rec = state.load(d, "a")
            if rec is None:
                return
            # What loads is usable by what reads it: staleness and the key diff.
            rec.proto_changes(proto)
            keys.diff(rec.doc, GOOD_RECORD["doc"])
            assert isinstance(rec.key, str) and isinstance(rec.doc, dict)

        prop()
        state.set_aside_corrupt(d)  # the loader's notes, not left for other tests


def test_image_record_loader() -> None:
    from pib.image.step import _last_image

    d = Path(tempfile.mkdtemp(prefix="pib-fuzz-image-"))
    good = {"inputs": "i" * 64, "image": {
        "dir": str(d), "buildstamp": "20240101T000000Z", "boot_archive": str(d / "boot_archive"), "sha256": "0" * 64,
        "size": 5, "tarball": str(d / "t.tgz"), "kernels": [], "outputs": {"a": "b"}, "entries": 3,
        "warnings": [], "timings": {"total": 0.5}}}

    class Cfg:  # the one field _last_image reads
        class workspace:
            state_dir = d

    with tally("fuzz", "image record loader (.pib/image.json)") as t:
        t.tried = 0

        @FUZZ
        @given(mutated_json(good))
        def prop(raw: bytes) -> None:
            t.tried += 1
            (d / "image.json").write_bytes(raw)
            notes: list[str] = []
            last = _last_image(Cfg, notes)  # type: ignore[arg-type]
            if last is None:
                for p in d.glob("image.json.corrupt-*"):
                    p.unlink()
                return
            assert not notes
            Path(last["image"]["boot_archive"]).is_file()  # what make_image asks of it
            dict(last["image"])

        prop()


@pytest.fixture(scope="module")
def signer_and_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    d = tmp_path_factory.mktemp("fuzzkeys")
    public = generate_keypair(d / "k.priv", d / "k.pub")
    return load_signer(d / "k.priv"), public


def test_store_metadata_reader(signer_and_key: tuple[Any, Any]) -> None:
    signer, public = signer_and_key
    key = "a" * 64
    good_bytes = make_metadata(ArtifactInfo("extra", key, {"tree": "t"}, False, "x", None, "sha256:" + "1" * 64),
                               "2" * 64, 554, signer)
    good = json.loads(good_bytes)
    unsigned = {k: v for k, v in good.items() if k != "signature"}
    with tally("fuzz", "store metadata reader (signed, and re-signed by a trusted key)") as t:
        t.tried = 0

        @FUZZ
        @given(mutated_json(unsigned), st.booleans())
        def prop(raw: bytes, resign: bool) -> None:
            t.tried += 1
            if resign:  # a trusted key signing hostile values: the checks after the signature
                try:
                    doc = json.loads(raw)
                except (ValueError, RecursionError):
                    return
                if not isinstance(doc, dict):
                    return
                try:
                    raw = sign(doc, signer)
                except (ValueError, TypeError, RecursionError):
                    return  # not canonical JSON: nothing pib could have signed
            try:
                meta = read_metadata(raw, [public], component="extra", key=key)
            except PibError as exc:
                assert exc.reason is Reason.VERIFY, exc
                return
            assert meta.archive_size >= 0 and len(meta.archive_sha256) == 64

        prop()


# --------------------------------------------------------------------------
# The real CLI, in-process

TOML = """\
[platform]
min_version = "1"

[local_store]
path = "store"

[components.a]
source = "{root}/repos/a"
build = ["./build.sh"]
manifest = "manifest"
prebuilt = true

[image]
compression = "zstd"

[sandbox]
mode = "none"
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A workspace built once (records, index memos, an image), copied afresh for every example."""
    root = tmp_path_factory.mktemp("fuzzcli")
    make_repo(root / "repos" / "a", {
        "build.sh": '#!/bin/sh\nset -e\nmkdir -p "$DESTDIR/etc"\n'
                    "printf 'root:x:0:0::/root:/bin/sh\\n' > \"$DESTDIR/etc/passwd\"\n"
                    "printf 'root::0:\\nsys::3:\\n' > \"$DESTDIR/etc/group\"\n",
        "manifest": "d etc 0755 root sys\nf etc/passwd 0644 root sys\nf etc/group 0644 root sys\n"})
    ws = root / "ws"
    ws.mkdir()
    (ws / "pib.toml").write_text(TOML.format(root=root))
    assert _cli(ws, "configure") == 0
    assert _cli(ws, "build") == 0
    yield ws


def _cli(ws: Path, *args: str) -> int:
    from pib.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["-C", str(ws), *args])
    assert "Traceback" not in err.getvalue(), err.getvalue()
    assert rc != EXIT_CODES[Reason.INTERNAL], err.getvalue()  # the safety net must never be reached
    assert rc == 0 or rc in EXIT_CODES.values(), (rc, err.getvalue())
    return rc


def _copy(ws: Path) -> Path:
    dest = ws.parent / "example"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(ws, dest, symlinks=True)
    return dest


def _nothing_half_written(ws: Path) -> None:
    left = [str(p.relative_to(ws)) for p in ws.rglob("*")
            if p.parent.name == ".tmp" or (p.name.endswith((".tmp", ".pib-new")) and p.name != ".tmp") or ".pib-tmp-" in p.name or ".publish-" in p.name
            or ".fetch-" in p.name or ".unpack-" in p.name]
    assert left == [], left
    for rec in (ws / ".pib" / "state").glob("*.json"):
        assert state.load(ws / ".pib", rec.stem) is not None, f"{rec} was left corrupt"


TARGETS: dict[str, Callable[[Path], Path]] = {
    "state/a.json": lambda ws: ws / ".pib" / "state" / "a.json",
    "image.json": lambda ws: ws / ".pib" / "image.json",
    "index/a.trees": lambda ws: ws / ".pib" / "index" / "a.trees",
    "index/a.tree": lambda ws: ws / ".pib" / "index" / "a.tree",
    "index/a (the private git index)": lambda ws: ws / ".pib" / "index" / "a",
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_cli_build_over_fuzzed_workspace_files(workspace: Path, target: str) -> None:
    with tally("fuzz", f"pib build over a fuzzed {target}") as t:
        t.tried = 0
        original = TARGETS[target](workspace)
        good: Any = {}
        if original.suffix == ".json":
            good = json.loads(original.read_text())
        seeds = st.one_of(mutated_json(good), st.binary(max_size=200),
                          st.binary(max_size=64).map(lambda b: original.read_bytes()[: len(b)] + b)
                          if original.exists() else st.binary(max_size=10))

        @CLI_FUZZ
        @given(seeds)
        @example(b"\x80")  # found by the fuzzer: a non-ASCII byte in a tree memo crashed pib build
        def prop(raw: bytes) -> None:
            t.tried += 1
            ws = _copy(workspace)
            path = TARGETS[target](ws)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(raw)
            rc = _cli(ws, "build", "--json")
            assert rc == 0, f"a damaged {target} failed the build (exit {rc})"
            _nothing_half_written(ws)

        prop()


_CONFIG_JUNK = st.one_of(
    st.sampled_from(["inf", "nan", "-inf", "1e999", "9" * 4300, "9" * 4301, _deep(40), _deep(3000),
                     '"\\u0000"', '"a\\u0000b"', '"http://127.0.0.1:99999/x"', '["/dev/zero"]', "1000000",
                     "{ a = { b = { c = 1 } } }", '"../.."', '"/"', '""', "-1", "0", "true"]),
    st.integers().map(str), st.text(string.printable, max_size=12).map(json.dumps),
)
_CONFIG_KEYS = ["jobs", "timeout", "retries", "source", "proto", "path", "url", "public_keys", "memory", "quota",
                "max_size", "build", "manifest", "depends", "env", "source_date_epoch", "compression", "name"]


@st.composite
def hostile_config(draw: st.DrawFn, text: str) -> str:
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines)))
        line = f"{draw(st.sampled_from(_CONFIG_KEYS))} = {draw(_CONFIG_JUNK)}"
        if i < len(lines) and "=" in lines[i] and draw(st.booleans()):
            line = lines[i].split("=", 1)[0] + "= " + draw(_CONFIG_JUNK)
            lines[i] = line
        else:
            lines.insert(i, line)
    return "\n".join(lines) + "\n"


def test_cli_over_hostile_config_values(workspace: Path) -> None:
    text = (workspace / "pib.toml").read_text() + '\n[[store]]\nname = "w"\ntype = "http"\n' \
        'url = "http://127.0.0.1:1/pib"\ntimeout = 1\nretries = 0\n\n[boot]\nmemory = 256\n'
    with tally("fuzz", "pib config show and pib build over hostile pib.toml values") as t:
        t.tried = 0

        @CLI_FUZZ
        @given(hostile_config(text))
        def prop(toml: str) -> None:
            t.tried += 1
            ws = _copy(workspace)
            (ws / "pib.toml").write_text(toml)
            for command in (("config", "show", "--json"), ("build", "--json", "--offline")):
                rc = _cli(ws, *command)
                assert rc in (0, EXIT_CODES[Reason.CONFIG], EXIT_CODES[Reason.SOURCE], EXIT_CODES[Reason.BUILD],
                              EXIT_CODES[Reason.MANIFEST], EXIT_CODES[Reason.IMAGE]), (command, rc)
                if rc:
                    break
            _nothing_half_written(ws)

        prop()
