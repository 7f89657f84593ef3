"""Bootable media of the example platform (examples/platform): making them and booting them.

From a built platform: the time `pib media iso` and `pib media usb` take and the
size of each medium, whether every make of a medium gave the same bytes, and
for the four cells (iso and usb, each under SeaBIOS and OVMF) the time from
QEMU's start to the boot marker, beside the direct kernel boot of `pib boot`.
QEMU runs with TCG.

Run: python3 bench/media.py [--runs N] [--workspace DIR]
  --workspace: an example workspace that is configured and built already
  (e.g. the one scripts/demo leaves in _work/demo/example); without it a fresh
  one is laid out, configured and built first (not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import ROOT, write_section
from examples.platform.make_workspace import make_workspace
from pib.fsutil import human_size
from pib.run import minimal_env, run

CELLS = [("iso", "bios"), ("iso", "uefi"), ("usb", "bios"), ("usb", "uefi")]


def pib(ws: Path, *args: str) -> tuple[Any, float]:
    env = minimal_env({"PYTHONPATH": str(ROOT)})
    for var in ("XDG_CACHE_HOME", "PIB_CACHE"):
        if var in os.environ:
            env[var] = os.environ[var]
    t0 = time.monotonic()
    res = run([sys.executable, "-m", "pib", "-C", str(ws), *args, "--json"], env=env, capture=True, timeout=1800,
              what=f"pib {' '.join(args)}")
    return json.loads(res.stdout), time.monotonic() - t0


def fresh_workspace(root: Path) -> Path:
    ws = make_workspace(root)
    pib(ws, "configure")
    pib(ws, "build")
    return ws


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workspace", type=Path)
    args = ap.parse_args()
    ws = args.workspace.resolve() if args.workspace else fresh_workspace(Path(tempfile.mkdtemp(prefix="pib-bench-media-")))

    made: dict[str, list[dict[str, Any]]] = {"iso": [], "usb": []}
    walls: dict[str, list[float]] = {"iso": [], "usb": []}
    for _ in range(args.runs):
        for kind in ("iso", "usb"):
            out, wall = pib(ws, "media", kind)
            made[kind].append(out["media"][0])
            walls[kind].append(wall)

    boots: dict[str, list[float]] = {}
    direct = []
    for _ in range(args.runs):
        out, _ = pib(ws, "boot")
        assert out["passed"], out
        direct.append(out["seconds"])
        for kind, fw in CELLS:
            out, _ = pib(ws, "boot", "--media", kind, "--firmware", fw)
            assert out["passed"], out
            boots.setdefault(f"{kind} × {fw}", []).append(out["seconds"])

    med = statistics.median
    rows = ["| medium | make (pib's step) | make (whole command) | size | same bytes every make |",
            "|---|---:|---:|---:|---|"]
    for kind in ("iso", "usb"):
        ms = made[kind]
        same = len({m["sha256"] for m in ms}) == 1
        rows.append(f"| {kind} | {med(m['seconds'] for m in ms):.2f} s | {med(walls[kind]):.2f} s | "
                    f"{human_size(ms[0]['size'])} | {'yes' if same else 'NO'} ({len(ms)} makes) |")
    rows += ["", "| boot (QEMU TCG, start to marker) | median | runs |", "|---|---:|---|",
             f"| direct kernel + boot archive (`pib boot`) | {med(direct):.1f} s | "
             f"{', '.join(f'{s:.1f}' for s in direct)} |"]
    for cell, secs in boots.items():
        rows.append(f"| {cell} | {med(secs):.1f} s | {', '.join(f'{s:.1f}' for s in secs)} |")
    body = "\n".join(rows) + (
        "\n\nMedians of the runs. \"pib's step\" is the time `pib media` reports for making the medium "
        "(GRUB images, file systems, partition table or ISO, SHA-256); the whole command adds Python start-up, "
        "the configuration and the workspace lock. Media are made from a built platform "
        f"(kernel {human_size(_kernel_size(ws))}); the example's `boot` component supplies GRUB. "
        "The ISO boots as an IDE CD-ROM and the USB image as a USB stick on xHCI; UEFI is OVMF with 512 MiB "
        "(BIOS boots use [boot] memory, 256 MiB). The machine's 2 cores were shared with other work."
    )
    write_section("media", "python3 bench/media.py" + (f" --runs {args.runs}" if args.runs != 3 else ""), body)
    print(body)
    return 0


def _kernel_size(ws: Path) -> int:
    pdir = (ws / "output" / "platform-latest").resolve()
    return max((p.stat().st_size for p in pdir.iterdir() if p.name.startswith("vmlinuz")), default=0)


if __name__ == "__main__":
    raise SystemExit(main())
