"""`pib manifest check|diff` through the real command line entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pib.cli import main
from pib.errors import EXIT_CODES, Reason

REAL = Path("/work/shared/testdata/smartos-manifests")


def test_manifest_check_real_files(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in REAL.glob("*.manifest"))
    assert main(["manifest", "check", *files]) == 0
    assert capsys.readouterr().out.startswith("ok: 3 manifest(s)")


def test_manifest_check_bad_line_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.manifest"
    bad.write_text("d etc 0755 root sys\nf etc/x 0999 root sys\n")
    assert main(["manifest", "check", str(bad), "--json"]) == EXIT_CODES[Reason.MANIFEST]
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["reason"] == "manifest" and out["error"]["where"] == f"{bad}:2"


def test_manifest_diff_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("d etc 0755 root sys\nf etc/motd 0644 root sys\n")
    b.write_text("d etc 0755 root sys\nf etc/motd 0644 root root\ns etc/issue=motd\n")
    assert main(["manifest", "diff", str(a), str(b), "--json"]) == 0
    changes = {c["path"]: c for c in json.loads(capsys.readouterr().out)}
    assert changes["etc/motd"]["fields"] == ["owner"]
    assert changes["etc/issue"]["status"] == "added"
    assert main(["manifest", "diff", str(a), str(b)]) == 0
    assert capsys.readouterr().out.splitlines() == ["+ etc/issue", "~ etc/motd (owner)"]
