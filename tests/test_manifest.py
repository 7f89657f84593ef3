"""Manifest parsing, validation, union and diff."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pib.errors import Reason
from pib.image.manifest import (
    Kind,
    ManifestError,
    Record,
    check,
    diff,
    diff_records,
    format_image_manifest,
    parse_file,
    parse_image_manifest,
    parse_text,
    union,
)

REAL = Path(__file__).parent / "data" / "smartos-manifests"  # real SmartOS manifests, vendored
REAL_FILES = sorted(REAL.glob("smartos-live*.manifest"))


def test_real_manifests_are_present() -> None:
    assert len(REAL_FILES) == 3


def test_smartos_duplicates_the_later_line_wins_where_the_first_stood() -> None:
    text = "d etc 0755 root sys\nf etc/motd 0644 root sys\nd etc 0750 root bin\ns etc/motd=issue\n"
    with pytest.raises(ManifestError) as info:
        parse_text(text, "m")
    assert str(info.value.where) == "m:3"
    m = parse_text(text, "m", duplicates="smartos")
    assert [e.to_line() for e in m.entries] == ["d etc 0750 root bin", "s etc/motd=issue"]
    assert [str(e.where) for e in m.entries] == ["m:3", "m:4"]
    assert len(m.warnings) == 2 and "m:3" in m.warnings[0] and "m:1" in m.warnings[0]
    # Across files too: the later manifest's line wins, and identical lines warn about nothing.
    other = parse_text("d etc 0755 root sys\nd etc/x 0755 root sys\n", "n", duplicates="smartos")
    warnings: list[str] = []
    out = union([m, other], "smartos", warnings)
    assert [e.to_line() for e in out] == ["d etc 0755 root sys", "s etc/motd=issue", "d etc/x 0755 root sys"]
    assert len(warnings) == 3 and "n:1" in warnings[2] and "m:3" in warnings[2]
    with pytest.raises(ManifestError):
        union([m, other])


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_real_manifest_parses_and_round_trips(path: Path) -> None:
    m = parse_file(path, "smartos")
    data_lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(m.entries) > 0
    assert len(m.entries) <= len(data_lines)
    again = parse_text(m.to_text(), "again", "smartos")
    assert again.entries == m.entries
    assert again.to_text() == m.to_text()
    # Every entry remembers the line it came from.
    first = m.entries[0]
    assert first.where.path == str(path)
    assert path.read_text().splitlines()[first.where.line - 1].split()[0] == first.kind.value


def test_real_manifests_have_all_kinds_and_union() -> None:
    ms = [parse_file(p) for p in REAL_FILES]
    kinds = {e.kind for m in ms for e in m.entries}
    assert kinds == {Kind.FILE, Kind.DIR, Kind.SYMLINK}
    all_paths = {e.path for m in ms for e in m.entries}
    assert len(union(ms)) == len(all_paths)


def test_real_dir_with_trailing_slash_is_normalised() -> None:
    m = parse_file(REAL / "smartos-live.src.manifest")
    paths = {e.path for e in m.entries}
    assert "usr/vm/node_modules/macaddr" in paths
    assert not any(p.endswith("/") for p in paths)


def test_fields_are_parsed() -> None:
    m = parse_text("# c\n\nf usr/bin/x 4755 root bin\nd usr 0755 root sys\ns a=../b/c\nh y=usr/bin/x\n", "m")
    f, d, s, h = m.entries
    assert (f.kind, f.path, f.mode, f.user, f.group) == (Kind.FILE, "usr/bin/x", 0o4755, "root", "bin")
    assert f.where.line == 3
    assert (d.kind, d.mode) == (Kind.DIR, 0o755)
    assert (s.kind, s.path, s.target) == (Kind.SYMLINK, "a", "../b/c")
    assert (h.kind, h.path, h.target, h.where.line) == (Kind.HARDLINK, "y", "usr/bin/x", 6)


BAD_LINES = [
    ("x etc/motd 0644 root sys", "unknown type"),
    ("f etc/motd 0644 root", "too few fields"),
    ("f etc/motd 0644 root sys extra", "too many fields"),
    ("f etc/motd 10000 root sys", "mode above 07777"),
    ("f etc/motd 0684 root sys", "non-octal mode"),
    ("f etc/motd rw-r root sys", "symbolic mode"),
    ("f /etc/motd 0644 root sys", "absolute path"),
    ("f etc/../motd 0644 root sys", "dotdot"),
    ("d ../etc 0755 root sys", "leading dotdot"),
    ("f etc//motd 0644 root sys", "double slash"),
    ("f ./etc/motd 0644 root sys", "dot component"),
    ("s etc/link", "symlink without target"),
    ("s etc/link=", "symlink with empty target"),
    ("s /etc/link=x", "absolute symlink path"),
    ("h etc/hl=/etc/motd", "absolute hard link target"),
    ("h etc/hl=../motd", "dotdot hard link target"),
    ("s a=b c=d", "symlink with two fields"),
    ("f etc/motd 0644 ro:ot sys", "colon in user"),
]


@pytest.mark.parametrize(("line", "why"), BAD_LINES, ids=[w for _, w in BAD_LINES])
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "bad.manifest"
    path.write_text(f"# header\nd etc 0755 root sys\n{line}\nf etc/ok 0644 root sys\n")
    with pytest.raises(ManifestError) as exc:
        parse_file(path)
    assert exc.value.reason is Reason.MANIFEST
    assert exc.value.where is not None
    assert (exc.value.where.path, exc.value.where.line) == (str(path), 3)
    assert exc.value.hint
    assert f"{path}:3" in str(exc.value)


def test_mode_boundary() -> None:
    assert parse_text("d a 07777 root root\n", "m").entries[0].mode == 0o7777
    assert parse_text("d a 755 root root\n", "m").entries[0].mode == 0o755


def test_identical_duplicates_are_accepted() -> None:
    m = parse_text("d etc 0755 root sys\nd etc 0755 root sys\ns a=b\ns a=b\n", "m")
    assert [e.path for e in m.entries] == ["etc", "a"]
    assert m.entries[0].where.line == 1  # the first occurrence is kept


@pytest.mark.parametrize("second", [
    "d etc 0700 root sys",   # mode
    "d etc 0755 adm sys",    # user
    "d etc 0755 root adm",   # group
    "f etc 0755 root sys",   # type
    "s etc=elsewhere",       # type
])
def test_conflicting_duplicates_name_the_later_line(second: str) -> None:
    with pytest.raises(ManifestError) as exc:
        parse_text(f"d etc 0755 root sys\nf x 0644 root root\n{second}\n", "m.manifest")
    assert exc.value.where is not None
    assert (exc.value.where.path, exc.value.where.line) == ("m.manifest", 3)
    assert "m.manifest:1" in exc.value.message  # and the earlier line


def test_conflicts_across_manifests(tmp_path: Path) -> None:
    a = tmp_path / "a.manifest"
    b = tmp_path / "b.manifest"
    a.write_text("d etc 0755 root sys\n")
    b.write_text("d usr 0755 root sys\nd etc 0755 root root\n")
    with pytest.raises(ManifestError) as exc:
        check([a, b])
    assert exc.value.where is not None
    assert (exc.value.where.path, exc.value.where.line) == (str(b), 2)
    b.write_text("d usr 0755 root sys\nd etc 0755 root sys\n")
    assert [len(m.entries) for m in check([a, b])] == [1, 2]


def test_not_utf8_names_line(tmp_path: Path) -> None:
    p = tmp_path / "m"
    p.write_bytes(b"d etc 0755 root sys\nf etc/\xff 0644 root sys\n")
    with pytest.raises(ManifestError) as exc:
        parse_file(p)
    assert exc.value.where is not None and exc.value.where.line == 2


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as exc:
        parse_file(tmp_path / "nope")
    assert exc.value.reason is Reason.MANIFEST


def _rec(path: str, kind: Kind = Kind.FILE, mode: int = 0o644, owner: str = "root:root",
         sha: str | None = "a" * 64, target: str = "", size: int | None = 1) -> Record:
    return Record(path, kind, mode, owner, "0:0", size, sha, target)


def test_diff_reports_added_removed_and_what_changed() -> None:
    old = {r.path: r for r in [
        _rec("same"), _rec("gone"), _rec("mode"), _rec("owner"), _rec("content"),
        _rec("type"), _rec("link", Kind.SYMLINK, 0o777, sha=None, target="a"),
    ]}
    new = {r.path: r for r in [
        _rec("same"), _rec("new"), _rec("mode", mode=0o755), _rec("owner", owner="root:sys"),
        _rec("content", sha="b" * 64), _rec("type", Kind.DIR, sha=None, size=None),
        _rec("link", Kind.SYMLINK, 0o777, sha=None, target="b"),
    ]}
    changes = {c.path: c for c in diff_records(old, new)}
    assert "same" not in changes
    assert changes["gone"].status == "removed"
    assert changes["new"].status == "added"
    assert changes["mode"].fields == ("mode",)
    assert changes["owner"].fields == ("owner",)
    assert changes["content"].fields == ("content",)
    assert "type" in changes["type"].fields
    assert changes["link"].fields == ("target",)


def test_image_manifest_round_trip_and_diff_files(tmp_path: Path) -> None:
    recs = [_rec("a/b"), _rec("a", Kind.DIR, 0o755, sha=None, size=None),
            _rec("l", Kind.SYMLINK, 0o777, sha=None, target="a/b", size=3)]
    text = format_image_manifest(recs)
    parsed = parse_image_manifest(text, "x")
    assert parsed == {r.path: r for r in recs}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "boot_archive.manifest").write_text(text)
    newer = format_image_manifest([*recs[:2], _rec("l", Kind.SYMLINK, 0o777, sha=None, target="zz", size=2)])
    (tmp_path / "new.manifest").write_text(newer)
    changes = diff(tmp_path / "old", tmp_path / "new.manifest")
    assert [(c.path, c.status, c.fields) for c in changes] == [("l", "changed", ("target", "content"))]


def test_diff_of_source_manifests(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.write_text("d etc 0755 root sys\nf etc/motd 0644 root sys\n")
    b.write_text("d etc 0755 root sys\nf etc/motd 0444 root sys\nf etc/issue 0644 root sys\n")
    changes = diff(a, b)
    assert [(c.path, c.status, c.fields) for c in changes] == [
        ("etc/issue", "added", ()), ("etc/motd", "changed", ("mode",))]


def test_malformed_image_manifest_names_line() -> None:
    with pytest.raises(ManifestError) as exc:
        parse_image_manifest("# pib boot_archive.manifest 1\na f 0644\n", "bm")
    assert exc.value.where is not None and exc.value.where.line == 2


_seg = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-+", min_size=1, max_size=8).filter(
    lambda s: s not in (".", ".."))
_path = st.lists(_seg, min_size=1, max_size=4).map("/".join)
_name = st.sampled_from(["root", "bin", "sys", "adm", "other", "netadm", "1234"])
_entry = st.one_of(
    st.builds(lambda k, p, m, u, g: f"{k} {p} {m:04o} {u} {g}", st.sampled_from("fd"), _path,
              st.integers(0, 0o7777), _name, _name),
    st.builds(lambda p, t: f"s {p}={t}", _path, st.one_of(_path, _path.map(lambda p: "../" + p),
                                                           _path.map(lambda p: "/" + p))),
    st.builds(lambda p, t: f"h {p}={t}", _path, _path),
)


@given(st.lists(_entry, max_size=30))
def test_any_valid_manifest_round_trips(lines: list[str]) -> None:
    # Keep the first line per path so the input has no conflicting duplicates.
    seen: dict[str, str] = {}
    for line in lines:
        seen.setdefault(line.split()[1].split("=")[0], line)
    text = "".join(line + "\n" for line in seen.values())
    m = parse_text(text, "gen")
    assert len(m.entries) == len(seen)
    assert parse_text(m.to_text(), "again").entries == m.entries
    assert m.to_text() == text
