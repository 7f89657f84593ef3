"""A hostile build script, through the real CLI in the real sandbox (bubblewrap).

The sandbox keeps the machine's signing key out of a build's sight, but what a build leaves in its
proto area is read afterwards by steps that run outside the sandbox: the image writer, the packer,
dependents. A build that leaves a symlink to the key, with a manifest line for it, must not get the
key into the image; one that leaves a special file or a setuid bit must not get it kept or published
(every restore would refuse it). Each case: refused (reason build), nothing put in place, kept in the
local store or written to output/, and the secret's bytes nowhere in the workspace.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pib.artifacts.policy import machine_key_paths, machine_signer
from pib.errors import EXIT_CODES, Reason
from tests.gitutil import commit, make_repo, pib, write
from tests.reliability import tally

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (scripts/setup)"),
]

GOOD = """\
#!/bin/sh
set -e
mkdir -p "$DESTDIR/bin" "$DESTDIR/boot" "$DESTDIR/etc"
echo kernel > "$DESTDIR/boot/vmlinuz"
printf 'root:x:0:0:root:/:/bin/sh\\n' > "$DESTDIR/etc/passwd"
printf 'root:x:0:\\n' > "$DESTDIR/etc/group"
echo hello > "$DESTDIR/bin/hello"
ln -s hello "$DESTDIR/bin/hi"
"""
MANIFEST = ("d bin 0755 root root\nf bin/hello 0755 root root\nd etc 0755 root root\n"
            "f etc/passwd 0644 root root\nf etc/group 0644 root root\n")

# What a hostile build.sh adds to the good one; $STEAL is the machine key's path (the build cannot
# read it, but it can name it).
CASES = {
    "symlink to the machine key, listed in the manifest": ('ln -s "$STEAL" "$DESTDIR/bin/key"\n',
                                                           "f bin/key 0644 root root\n"),
    "directory symlink to the key's directory, listed in the manifest": (
        'ln -s "$(dirname "$STEAL")" "$DESTDIR/etc/k"\n', "d etc/k 0755 root root\nf etc/k/machine.key 0600 root root\n"),
    "relative symlink climbing out of the proto area": (
        'ln -s ../../../../../../../../../../../../../../..$STEAL "$DESTDIR/bin/key"\n', "f bin/key 0644 root root\n"),
    "symlink chain out through a directory link": (
        'ln -s .. "$DESTDIR/bin/up"\nln -s up/../x "$DESTDIR/bin/out"\n', ""),
    "kernel path a symlink to the machine key": ('rm "$DESTDIR/boot/vmlinuz"\nln -s "$STEAL" "$DESTDIR/boot/vmlinuz"\n',
                                                 ""),
    "fifo": ('mkfifo "$DESTDIR/bin/fifo"\n', ""),
    "unix socket": ('python3 -c "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])" '
                    '"$DESTDIR/bin/sock"\n', ""),
    "setuid file": ('chmod 4755 "$DESTDIR/bin/hello"\n', ""),
    "setgid directory": ('chmod 2755 "$DESTDIR/bin"\n', ""),
    "sticky directory": ('mkdir -m 1777 "$DESTDIR/tmp"\n', ""),
}


def _ws(tmp_path: Path) -> Path:
    machine_signer()  # the machine key exists, as on any machine that built a prebuilt component
    make_repo(tmp_path / "repos" / "core", {"build.sh": GOOD, "manifest": MANIFEST})
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "pib.toml").write_text(f"""\
[platform]
min_version = "1"
[sandbox]
mode = "required"
[components.core]
source = "../repos/core"
build = ["./build.sh"]
manifest = "manifest"
prebuilt = true
env = {{ STEAL = "{machine_key_paths()[0]}" }}
[image]
kernel = ["core:boot/vmlinuz"]
compression = "gzip"
""")
    r = pib(ws, "configure")
    assert r.returncode == 0, r.stderr
    return ws


def _build(ws: Path, *args: str) -> tuple[int, dict[str, object]]:
    r = pib(ws, "build", "--json", *args)
    return r.returncode, json.loads(r.stdout)


def _files(root: Path) -> dict[str, bytes]:
    """Every regular file under root (symlinks not followed)."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_build_is_refused_and_leaks_nothing(tmp_path: Path, case: str) -> None:
    with tally("hostile build", case):
        ws = _ws(tmp_path)
        rc, first = _build(ws)
        assert rc == 0, first
        proto_before = _files(ws / "proto.core")
        assert list(Path(os.environ["HOME"]).rglob(f"*{first['components'][0]['key']}*"))  # type: ignore[index]
        images_before = sorted(p.name for p in (ws / "output").iterdir())
        script, lines = CASES[case]
        repo = ws / "projects" / "core"
        write(repo, {"build.sh": GOOD + script, "manifest": MANIFEST + lines})
        commit(repo, "hostile")
        rc, report = _build(ws)
        assert rc == EXIT_CODES[Reason.BUILD], report
        assert report["error"]["reason"] == "build"  # type: ignore[index]
        [comp] = report["components"]  # type: ignore[misc]
        assert comp["action"] == "failed"
        # The last good proto area stays; nothing half-built beside it; no new image.
        assert _files(ws / "proto.core") == proto_before
        assert not (ws / ".proto.core.pib-new").exists()
        assert sorted(p.name for p in (ws / "output").iterdir()) == images_before
        # Nothing kept under the hostile key in the local store.
        key = comp["key"]
        assert not [p for p in Path(os.environ["HOME"]).rglob(f"*{key}*")]
        # The secret's bytes are nowhere in the workspace.
        secret = machine_key_paths()[0].read_bytes()
        assert not [name for name, data in _files(ws).items() if secret in data]


def test_the_image_reads_no_link_out_of_a_proto_area(tmp_path: Path) -> None:
    """A proto area that holds a link out of it anyway (planted after its build, or left by an older pib):
    `pib image` refuses the file (reason manifest) and the kernel (reason image); the key goes nowhere."""
    with tally("hostile build", "link out of a proto area planted after the build: pib image"):
        ws = _ws(tmp_path)
        repo = ws / "projects" / "core"
        write(repo, {"manifest": MANIFEST + "f bin/key 0644 root root\n",
                     "build.sh": GOOD + 'echo placeholder > "$DESTDIR/bin/key"\n'})
        commit(repo, "key")
        rc, report = _build(ws)
        assert rc == 0, report
        secret_path = machine_key_paths()[0]
        secret = secret_path.read_bytes()
        key_file = ws / "proto.core" / "bin" / "key"
        key_file.unlink()
        key_file.symlink_to(secret_path)
        r = pib(ws, "image", "--json")
        assert r.returncode == EXIT_CODES[Reason.MANIFEST], r.stdout
        err = json.loads(r.stdout)["error"]
        assert err["reason"] == "manifest" and err["where"].endswith("manifest:6")
        key_file.unlink()
        key_file.write_text("placeholder\n")
        kernel = ws / "proto.core" / "boot" / "vmlinuz"
        kernel.unlink()
        kernel.symlink_to(secret_path)
        r = pib(ws, "image", "--json")
        assert r.returncode == EXIT_CODES[Reason.IMAGE], r.stdout
        assert not [name for name, data in _files(ws).items() if secret in data]


UNKEYED = """\
#!/bin/sh
# What of the checkout this build can see, beside what its key covers.
for p in local.cfg out/stale.o vendor/lib.c; do
  if [ -s "$p" ]; then echo "$p seen"; else echo "$p hidden"; fi
done > "$DESTDIR/seen.txt"
"""


@pytest.mark.parametrize("writable", [False, True], ids=["read-only", "writable_source"])
def test_a_build_sees_nothing_its_key_does_not_cover(tmp_path: Path, writable: bool) -> None:
    """Ignored files (a local configuration, products of an earlier in-tree build) and a nested repository
    in a checkout are hidden from its build: were they visible, they would change the bytes an
    artifact holds without changing its key, and `build --publish` would share them under that key.
    A build that writes into its checkout (writable_source) works on a copy of what its key covers."""
    case = "files no key covers (ignored, a nested repository) in a " + ("writable_source " if writable else "") + \
        "checkout"
    with tally("hostile build", case):
        script = UNKEYED + ("mkdir -p out && echo product > out/new.o && echo changed > build.sh\n" if writable else "")
        make_repo(tmp_path / "repos" / "u", {"build.sh": script, ".gitignore": "*.cfg\nout/\n"})
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "pib.toml").write_text('[platform]\nmin_version = "1"\n[sandbox]\nmode = "required"\n'
                                     '[components.u]\nsource = "../repos/u"\nbuild = ["./build.sh"]\n'
                                     + ("writable_source = true\n" if writable else ""))
        assert pib(ws, "configure").returncode == 0
        rc, clean = _build(ws)
        assert rc == 0, clean
        checkout = ws / "projects" / "u"
        (checkout / "local.cfg").write_text("a developer's setting\n")
        (checkout / "out").mkdir(exist_ok=True)
        (checkout / "out" / "stale.o").write_text("an object of an earlier build\n")
        make_repo(checkout / "vendor", {"lib.c": "int lib;\n"})
        rc, again = _build(ws, "--force")
        assert rc == 0, again
        assert again["components"][0]["key"] == clean["components"][0]["key"]  # type: ignore[index]
        assert (ws / "proto.u" / "seen.txt").read_text().split("\n")[:3] == [
            "local.cfg hidden", "out/stale.o hidden", "vendor/lib.c hidden"]
        # Hidden, not touched; and what a writable build wrote stayed in its copy.
        assert (checkout / "local.cfg").read_text() == "a developer's setting\n"
        assert (checkout / "vendor" / "lib.c").is_file() and (checkout / "out" / "stale.o").is_file()
        assert not (checkout / "out" / "new.o").exists() and (checkout / "build.sh").read_text() == script
        assert not (ws / ".pib" / "source" / "u").exists()
