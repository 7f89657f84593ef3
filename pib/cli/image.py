"""`pib image` and `pib manifest check|diff`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from pib.cli.common import common_options

    common = common_options()
    im = sub.add_parser("image", help="assemble the platform image from the built proto areas", parents=[common])
    im.add_argument("--sizes", action="store_true", help="report what the boot archive would hold, by component")
    im.add_argument("--top", type=int, default=5, help="largest files shown per component with --sizes")
    im.add_argument("--stamp", help="build stamp YYYYMMDDTHHMMSSZ (default: from SOURCE_DATE_EPOCH, else now)")
    im.add_argument("--wait", action="store_true", help="wait for a build of this workspace to end")
    im.set_defaults(func=_cmd_image)

    m = sub.add_parser("manifest", help="check manifests, or compare two images' manifests", parents=[common])
    msub = m.add_subparsers(dest="manifest_command", metavar="COMMAND")
    chk = msub.add_parser("check", help="validate manifests (default: every manifest of the workspace)",
                          parents=[common])
    chk.add_argument("files", nargs="*", type=Path, help="manifest files (SmartOS syntax)")
    chk.set_defaults(func=_cmd_check)
    d = msub.add_parser("diff", help="what changed between two images (platform dirs or manifests)",
                        parents=[common])
    d.add_argument("old", type=Path)
    d.add_argument("new", type=Path)
    d.set_defaults(func=_cmd_diff)


def _cmd_image(args: argparse.Namespace) -> int:
    from pib.build.state import recorded_keys
    from pib.cli.common import emit_json, load_config, want_json
    from pib.image.resolve import size_report
    from pib.image.step import build_image, image_json, image_spec, proto_areas
    from pib.image.write import stamp_epoch

    cfg = load_config(args)
    if args.sizes:
        report = size_report(image_spec(cfg), proto_areas(cfg), top=args.top,
                             component_keys=recorded_keys(cfg.workspace.state_dir, cfg.names))
        if want_json(args):
            emit_json(report.to_json())
        else:
            print(report.format())
        return 0
    if args.stamp:
        stamp_epoch(args.stamp)  # validates the form before any work
    from pib.build.commands import workspace_lock

    # No build may replace a proto area while the image reads it.
    with workspace_lock(cfg) as lock:
        lock.acquire(wait=args.wait)
        from pib.build.trace import recorded_trace

        keys, (bill, attest) = recorded_trace(cfg)  # what the last build made
        res = build_image(cfg, keys, {"workspace": cfg.workspace.name}, args.stamp, bill=bill, attest=attest)
    if want_json(args):
        emit_json(image_json(res))
        return 0
    for w in res.warnings:
        print(f"warning: {w}")
    print(f"image: {res.dir}")
    print(f"boot archive: {res.size} bytes, sha256 {res.hash}, {res.entries} entries")
    print(f"tarball: {res.tarball}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from pib.cli.common import emit_json, load_config, want_json
    from pib.image.manifest import check, union
    from pib.image.resolve import load_manifests
    from pib.image.step import image_spec, proto_areas

    if args.files:
        manifests = check(args.files)
    else:
        cfg = load_config(args)
        spec = image_spec(cfg)
        manifests = load_manifests(spec, proto_areas(cfg))
        union(manifests)
    entries = sum(len(m.entries) for m in manifests)
    if want_json(args):
        emit_json({"ok": True, "manifests": [m.source for m in manifests], "entries": entries})
    else:
        print(f"ok: {len(manifests)} manifest(s), {entries} entries")
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from pib.cli.common import emit_json, want_json
    from pib.image.manifest import diff, format_diff

    changes = diff(args.old, args.new)
    if want_json(args):
        emit_json([c.to_json() for c in changes])
    elif changes:
        print(format_diff(changes))
    return 0
