"""`pib media iso|usb`: make bootable media of the built platform."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from pib.cli.common import common_options
    from pib.config.types import MEDIA_KINDS

    m = sub.add_parser("media", help="make a bootable ISO or USB disk image of the built platform",
                       parents=[common_options()])
    m.add_argument("kinds", nargs="+", choices=(*MEDIA_KINDS, "all"), metavar="KIND",
                   help="iso (hybrid: CD or disk, BIOS and UEFI), usb (GPT disk image), or all")
    m.add_argument("--stamp", help="of output/platform-STAMP (default: platform-latest)")
    m.add_argument("--wait", action="store_true", help="wait for a build of this workspace to end")
    m.set_defaults(func=_cmd_media)


def _cmd_media(args: argparse.Namespace) -> int:
    from pib.build.commands import workspace_lock
    from pib.cli.common import emit_json, load_config, want_json
    from pib.cli.ui import seconds
    from pib.config.types import MEDIA_KINDS
    from pib.fsutil import human_size
    from pib.image.media import make

    cfg = load_config(args)
    kinds = list(dict.fromkeys(k for a in args.kinds for k in (MEDIA_KINDS if a == "all" else (a,))))
    done = []
    with workspace_lock(cfg) as lock:
        lock.acquire(wait=args.wait)
        for kind in kinds:
            done.append(make(cfg, kind, args.stamp))
    if want_json(args):
        emit_json({"media": [m.to_json() for m in done]})
        return 0
    for m in done:
        print(f"{m.kind}: {m.path} ({human_size(m.size)}, sha256 {m.sha256[:16]}…) made in {seconds(m.seconds)}")
    return 0
