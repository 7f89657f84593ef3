"""Random (often hostile) member lists through unpack: either refused with nothing
written, or extracted with every path and every symlink inside the tree."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pib.artifacts import archive
from pib.errors import VerifyError
from tests.tarcraft import Entry, write_archive

EXAMPLES = int(os.environ.get("PIB_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

parts = st.sampled_from(["a", "b", "c", "..", ".", "", "d"])
paths = st.lists(parts, min_size=1, max_size=4).map("/".join) | st.sampled_from(["/abs", "/", "a/", "./a"])
entries = st.lists(
    st.builds(
        Entry,
        name=paths,
        kind=st.sampled_from(["file", "dir", "symlink", "hardlink"]),
        data=st.sampled_from([b"", b"x", b"y" * 600]),
        target=paths,
        mode=st.sampled_from([0o644, 0o755, 0o4755, 0o700]),
    ),
    min_size=1,
    max_size=6,
)


def _fix(e: Entry) -> Entry:
    # tarfile only stores data for regular files
    return e if e.kind == "file" else Entry(e.name, e.kind, b"", e.target, e.mode)


@FUZZ
@given(entries)
def test_unpack_is_refused_or_contained(members: list[Entry]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        outside = base / "outside"
        outside.mkdir()
        (outside / "victim").write_text("v")
        arc = write_archive(base / "x.tar.zst", [_fix(e) for e in members])
        stage = base / "stage"
        stage.mkdir()
        dest = stage / "proto"
        try:
            archive.unpack(arc, dest)
        except VerifyError:
            event("refused")
            assert list(stage.iterdir()) == []
        else:
            event("extracted")
            for e in members:  # everything accepted really is there: no silent skips by tar
                rel = "/".join(x for x in e.name.split("/") if x not in ("", "."))
                assert os.path.lexists(dest / rel) if rel else dest.is_dir(), e
            assert [p.name for p in stage.iterdir()] == ["proto"]
            root = os.path.realpath(dest)
            for dirpath, dirnames, filenames in os.walk(dest):
                for name in dirnames + filenames:
                    p = os.path.join(dirpath, name)
                    if os.path.islink(p):
                        real = os.path.realpath(p)
                        assert os.path.commonpath([real, root]) == root, (p, os.readlink(p))
                    assert not (os.lstat(p).st_mode & 0o6000)
        assert sorted(p.name for p in base.iterdir()) == ["outside", "stage", "x.tar.zst"]
        assert [p.name for p in outside.iterdir()] == ["victim"]
        assert (outside / "victim").read_text() == "v"
