"""`pib fetch`: everything a build needs from outside (declared sources, CBE packages), ahead of time."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from pib.cli.common import common_options

    f = sub.add_parser("fetch", help="fetch declared sources and CBE packages into the download cache "
                       "(then `pib build --offline` needs no network)", parents=[common_options()])
    f.add_argument("components", nargs="*", metavar="COMPONENT", help="only these components' sources")
    f.add_argument("--no-cbe", action="store_true", help="leave out the build environment's packages")
    f.add_argument("--offline", action="store_true", help="use only the download cache and the local store")
    f.set_defaults(func=_cmd_fetch)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from pib.build import commands
    from pib.cli.common import emit_json, load_config, want_json

    cfg = load_config(args)
    rep = commands.fetch(cfg, args.components or None, cbe=not args.no_cbe, offline=args.offline)
    if want_json(args):
        emit_json(rep.to_json())
        return 0
    from pib.cli.ui import seconds, table
    from pib.fsutil import human_size

    rows = [[f.owner, f.name, human_size(f.size), f.came_from] for f in rep.files]
    if rows:
        print(table(rows, ["for", "file", "size", "from"]))
    counts: dict[str, int] = {}
    for f in rep.files:
        counts[f.came_from] = counts.get(f.came_from, 0) + 1
    summary = ", ".join(f"{n} from {where}" for where, n in sorted(counts.items())) or "nothing declared"
    print(f"fetched {len(rep.files)} pinned files ({summary}) in {seconds(rep.seconds)}")
    return 0
