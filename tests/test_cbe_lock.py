"""Lock files: parsing, file:line errors, the digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from pib.cbe.pins import load, parse
from pib.errors import CbeError, Reason

SHA = "a" * 64
GOOD = f"""\
format = 1
name = "smartos-cbe"
version = "2024.1"
provider = "debian"

[path]
bin = ["bin", "usr/bin"]

[env]
CC = "${{PREFIX}}/bin/cc"

[[packages]]
name = "gcc-12"
version = "12.2.0-14"
arch = "amd64"
sha256 = "{SHA}"

[[files]]
path = "bin/cc"
mode = "0755"
content = '''#!/bin/sh
exec gcc "$@"
'''
"""


def test_good_lock_parses() -> None:
    lock = parse(GOOD, Path("cbe.lock.toml"))
    assert (lock.name, lock.version, lock.provider) == ("smartos-cbe", "2024.1", "debian")
    assert lock.bin_dirs == ("bin", "usr/bin")
    assert lock.env == (("CC", "${PREFIX}/bin/cc"),)
    assert lock.packages[0].sha256 == (SHA,) and lock.packages[0].where.line == 12
    assert lock.files[0].mode == 0o755 and lock.files[0].content.startswith("#!/bin/sh")


def test_digest_ignores_layout_but_not_values() -> None:
    base = parse(GOOD, Path("a")).digest
    assert parse("# a comment\n" + GOOD.replace(" = ", "   =   "), Path("b")).digest == base
    assert parse(GOOD.replace("12.2.0-14", "12.2.0-15"), Path("c")).digest != base
    assert parse(GOOD.replace('exec gcc', 'exec  gcc'), Path("d")).digest != base


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        ('provider = "debian"', 'provider = "rpm"', 4),
        ('version = "2024.1"', 'version = "../x"', 3),
        (f'sha256 = "{SHA}"', 'sha256 = "abc"', 16),
        (f'sha256 = "{SHA}"', f'sha256 = ["{SHA}", "{SHA}"]', 16),
        ('arch = "amd64"', 'arch = "amd64"\ncolour = "red"', 16),
        ('path = "bin/cc"', 'path = "../escape"', 19),
        ('mode = "0755"', 'mode = "rwx"', 20),
        ('bin = ["bin", "usr/bin"]', 'bin = ["/usr/bin"]', 7),
        ('CC = "${PREFIX}/bin/cc"', 'PATH = "/opt/local/bin"', 10),
        ('format = 1', 'format = 2', 1),
        ('name = "gcc-12"', 'name = 12', 13),
        ('[env]', '[env\n', 9),
    ],
)
def test_errors_name_the_line(old: str, new: str, line: int) -> None:
    text = GOOD.replace(old, new)
    assert text != GOOD
    with pytest.raises(CbeError) as exc:
        parse(text, Path("cbe.lock.toml"))
    assert exc.value.reason is Reason.CBE
    assert exc.value.where is not None
    assert (exc.value.where.path, exc.value.where.line) == ("cbe.lock.toml", line)
    assert exc.value.hint


def test_missing_package_hash_and_duplicate_package() -> None:
    with pytest.raises(CbeError) as exc:
        parse(GOOD.replace(f'sha256 = "{SHA}"\n', ""), Path("l"))
    assert exc.value.where is not None and exc.value.where.line == 12
    dup = GOOD.replace("[[files]]", f'[[packages]]\nname = "gcc-12"\nversion = "1"\nsha256 = "{SHA}"\n\n[[files]]')
    with pytest.raises(CbeError) as exc:
        parse(dup, Path("l"))
    assert exc.value.where is not None and exc.value.where.line == 18


def test_provider_specific_tables() -> None:
    with pytest.raises(CbeError):
        parse('format = 1\nname = "x"\nversion = "1"\nprovider = "tarball"\n', Path("l"))
    tb = parse(f'format = 1\nname = "x"\nversion = "1"\nprovider = "tarball"\n[tarball]\nsha256 = "{SHA}"\nsize = 10\n',
               Path("l"))
    assert tb.tarball is not None and tb.tarball.size == 10 and tb.bin_dirs == ("bin",)
    with pytest.raises(CbeError) as exc:
        parse(GOOD + f'\n[tarball]\nsha256 = "{SHA}"\nsize = 1\n', Path("l"))
    assert exc.value.where is not None and exc.value.where.line == 25
    with pytest.raises(CbeError):
        parse('format = 1\nname = "x"\nversion = "1"\nprovider = "pip"\n', Path("l"))  # no packages


def test_missing_lock_file(tmp_path: Path) -> None:
    with pytest.raises(CbeError) as exc:
        load(tmp_path / "nope.toml")
    assert exc.value.reason is Reason.CBE and exc.value.hint
