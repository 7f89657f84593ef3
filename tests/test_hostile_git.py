"""A repository's own .git/config cannot make different content look the same: with core.ignorecase set
there (git sets it when a repository is cloned onto a case-insensitive file system, and it travels
with a copy of the checkout), a new TOOL.sh beside a tracked tool.sh was no content at all: the tree
stayed clean and the key unchanged while the build could read it. Through the real CLI and real git."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gitutil import make_repo, pib, sh
from tests.reliability import tally

pytestmark = pytest.mark.integration


def _status(ws: Path) -> tuple[str, bool]:
    r = pib(ws, "status", "--json")
    assert r.returncode == 0, r.stderr
    comp = json.loads(r.stdout)["components"][0]
    return comp["key"], comp["dirty"]


def test_core_ignorecase_in_the_repository_does_not_hide_a_file(tmp_path: Path) -> None:
    with tally("hostile build", "core.ignorecase in the repository's .git/config hides a new file"):
        make_repo(tmp_path / "repos" / "core", {"build.sh": "#!/bin/sh\ncp *.sh \"$DESTDIR/\"\n",
                                                "tool.sh": "echo tool\n"})
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "pib.toml").write_text('[platform]\nmin_version = "1"\n[components.core]\n'
                                     'source = "../repos/core"\nbuild = ["./build.sh"]\n')
        assert pib(ws, "configure").returncode == 0
        checkout = ws / "projects" / "core"
        clean_key, dirty = _status(ws)
        assert not dirty
        sh(["git", "config", "core.ignorecase", "true"], checkout)
        assert _status(ws) == (clean_key, False)  # the setting alone changes nothing
        (checkout / "TOOL.sh").write_text("echo something else\n")
        key, dirty = _status(ws)
        assert dirty and key != clean_key
        (checkout / "TOOL.sh").unlink()
        assert _status(ws) == (clean_key, False)


def _attr_workspace(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    make_repo(tmp_path / "repos" / "core", {"build.sh": "#!/bin/sh\ncp data.txt \"$DESTDIR/\"\n", **files})
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "pib.toml").write_text('[platform]\nmin_version = "1"\n[components.core]\n'
                                 'source = "../repos/core"\nbuild = ["./build.sh"]\n')
    assert pib(ws, "configure").returncode == 0
    return ws, ws / "projects" / "core"


_CRLF = (b"one\ntwo\n", b"one\r\ntwo\r\n")


@pytest.mark.parametrize(("attributes", "before", "edited"), [
    ("* text=auto\n", *_CRLF), ("*.txt text\n", *_CRLF), ("*.txt eol=lf\n", *_CRLF), ("*.txt crlf\n", *_CRLF)])
def test_attributes_that_normalize_content_do_not_hide_an_edit(tmp_path: Path, attributes: str, before: bytes,
                                                               edited: bytes) -> None:
    # The key promises the bytes the build reads: a file edited to CRLF (or with an expanded $Id$) is
    # other bytes, though git's clean conversion gives the same blob.
    with tally("hostile build", f"committed .gitattributes {attributes.strip()!r} hides an edit"):
        ws, checkout = _attr_workspace(tmp_path, {".gitattributes": attributes, "data.txt": before.decode()})
        clean_key, dirty = _status(ws)
        assert not dirty
        (checkout / "data.txt").write_bytes(edited)
        key, dirty = _status(ws)
        assert dirty and key != clean_key
        r = pib(ws, "build", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert (ws / "proto.core" / "data.txt").read_bytes() == edited
        assert _status(ws) == (key, True)  # stable: the same bytes keep their key
        (checkout / "data.txt").write_bytes(before)
        assert _status(ws) == (clean_key, False)


def test_repository_filter_driver_and_fsmonitor_run_nothing(tmp_path: Path) -> None:
    # A filter driver or an fsmonitor hook in the repository's own .git/config is a command; computing a
    # key must not run it, and what the driver would clean away is still content.
    with tally("hostile build", "a filter driver or fsmonitor in .git/config runs during key computation"):
        ws, checkout = _attr_workspace(tmp_path, {".gitattributes": "*.txt filter=strip\n", "data.txt": "one\n"})
        clean_key, dirty = _status(ws)
        assert not dirty
        marker = tmp_path / "ran"
        hook = tmp_path / "hook.sh"
        hook.write_text(f"#!/bin/sh\necho $0 >> {marker}\nexec sed /SECRET/d\n")
        hook.chmod(0o755)
        sh(["git", "config", "filter.strip.clean", str(hook)], checkout)
        sh(["git", "config", "filter.strip.required", "true"], checkout)
        sh(["git", "config", "core.fsmonitor", str(hook)], checkout)
        (checkout / "data.txt").write_text("one\nSECRET\n")
        key, dirty = _status(ws)
        assert dirty and key != clean_key
        r = pib(ws, "build", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert (ws / "proto.core" / "data.txt").read_text() == "one\nSECRET\n"
        assert not marker.exists()


def test_an_ignored_gitattributes_is_content(tmp_path: Path) -> None:
    # git applies a .gitattributes that a .gitignore ignores all the same: it changes what git makes of
    # other files, so it is content, and an edit it would normalize away still changes the key.
    with tally("hostile build", "an ignored .gitattributes normalizes an edit away"):
        ws, checkout = _attr_workspace(tmp_path, {".gitignore": ".gitattributes\n", "data.txt": "one\ntwo\n"})
        clean_key, _ = _status(ws)
        (checkout / ".gitattributes").write_text("* text=auto\n")
        with_attributes, dirty = _status(ws)
        assert dirty and with_attributes != clean_key
        (checkout / "data.txt").write_bytes(b"one\r\ntwo\r\n")
        key, dirty = _status(ws)
        assert dirty and key not in (clean_key, with_attributes)
        (checkout / ".gitattributes").unlink()
        (checkout / "data.txt").write_bytes(b"one\ntwo\n")
        assert _status(ws) == (clean_key, False)
