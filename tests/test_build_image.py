"""`pib build` makes the image after the components, and only when its inputs changed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.gitutil import make_repo, pib

BUILD = """\
#!/bin/sh
set -e
mkdir -p "$DESTDIR/bin" "$DESTDIR/boot"
printf '#!/bin/sh\\necho hello\\n' > "$DESTDIR/bin/hello"
chmod 755 "$DESTDIR/bin/hello"
echo kernel > "$DESTDIR/boot/vmlinuz"
"""
MANIFEST = "d bin 0755 root root\nf bin/hello 0755 root bin\n"
PASSWD = "root:x:0:0:root:/:/bin/sh\nbin:x:2:2:bin:/:/bin/false\n"
GROUP = "root:x:0:\nbin:x:2:\n"
OVERLAY_MANIFEST = "d etc 0755 root root\nf etc/passwd 0644 root root\nf etc/group 0644 root root\n"


def _ws(tmp_path: Path) -> Path:
    make_repo(tmp_path / "repos" / "core", {"build.sh": BUILD, "manifest": MANIFEST})
    ws = tmp_path / "ws"
    (ws / "overlay" / "etc").mkdir(parents=True)
    (ws / "overlay" / "etc" / "passwd").write_text(PASSWD)
    (ws / "overlay" / "etc" / "group").write_text(GROUP)
    (ws / "overlay" / "manifest").write_text(OVERLAY_MANIFEST)
    (ws / "pib.toml").write_text("""\
[platform]
min_version = "1"
[components.core]
source = "../repos/core"
build = ["./build.sh"]
manifest = "manifest"
[image]
kernel = ["core:boot/vmlinuz"]
overlays = [{ path = "overlay", manifest = "overlay/manifest" }]
compression = "gzip"
""")
    assert pib(ws, "configure").returncode == 0
    return ws


def _build(ws: Path) -> dict[str, object]:
    r = pib(ws, "build", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_image_follows_its_inputs(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    first = _build(ws)
    image = first["image"]
    assert isinstance(image, dict) and image["action"] == "built"
    listing = subprocess.run(["sh", "-c", f"gzip -dc {image['boot_archive']} | cpio -t -v --numeric-uid-gid"],
                             capture_output=True, text=True, check=True).stdout
    assert any(ln.startswith("-rwxr-xr-x") and " 0 " in ln and "bin/hello" in ln for ln in listing.splitlines())
    build_json = json.loads((Path(image["dir"]) / "build.json").read_text())
    assert "core" in json.dumps(build_json)

    again = _build(ws)
    assert again["image"]["action"] == "up-to-date"  # type: ignore[index]

    (ws / "overlay" / "etc" / "group").write_text(GROUP + "staff:x:50:\n")
    third = _build(ws)
    assert third["image"]["action"] == "built"  # type: ignore[index]
    assert third["image"]["sha256"] != image["sha256"]  # type: ignore[index]
    assert (ws / "output" / "platform-latest").resolve() == Path(third["image"]["dir"]).resolve()  # type: ignore[index]
