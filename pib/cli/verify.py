"""`pib verify` and `pib rebuild --check`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from pib.cli.common import common_options

    common = common_options()
    v = sub.add_parser("verify", help="check an image's signed provenance, its digests and its SBOM",
                       parents=[common])
    v.add_argument("target", type=Path, metavar="PLATFORM_DIR_OR_TARBALL")
    v.add_argument("--file", metavar="PATH", help="say which component, key, commit and builder made this file")
    v.add_argument("--provenance", type=Path, metavar="FILE",
                   help="the provenance (default: provenance.intoto.jsonl of the platform directory)")
    v.add_argument("--key", action="append", default=[], metavar="PUBLIC_KEY",
                   help="also trust this public key (file or pib-ed25519:... text); repeatable")
    v.set_defaults(func=_cmd_verify)

    r = sub.add_parser("rebuild", help="build a component again and compare it with what its key made",
                       parents=[common])
    r.add_argument("component")
    r.add_argument("--check", action="store_true", required=True,
                   help="compare byte for byte with the stored artifact of the same key (or the proto area)")
    r.add_argument("--offline", action="store_true", help="the local store only")
    r.add_argument("--wait", action="store_true", help="wait for a build of this workspace to end")
    r.set_defaults(func=_cmd_rebuild)


def _trusted(args: argparse.Namespace) -> list[Any]:
    """[trust] public_keys and the machine key, as for artifacts; outside a workspace, the machine key."""
    import os

    from pib.artifacts.policy import machine_signer, trusted_keys
    from pib.artifacts.signing import load_public_key
    from pib.config.loader import find_workspace, load
    from pib.errors import ConfigError

    extra = [load_public_key(k) for k in args.key]
    try:
        root = find_workspace(Path(getattr(args, "directory", None) or os.getcwd()))
    except ConfigError:
        return [*extra, machine_signer()[1]]
    return [*extra, *trusted_keys(load(root))]


def _cmd_verify(args: argparse.Namespace) -> int:
    from pib.build.verify import verify
    from pib.cli.common import emit_json, want_json

    rep = verify(args.target, _trusted(args), provenance=args.provenance, file=args.file)
    if want_json(args):
        emit_json(rep.to_json())
        return 0
    print(f"{rep.image}: OK, signed by key {rep.signer}; {rep.subjects} subjects match; "
          f"{rep.files} boot archive files, each from one component")
    for comp, n in sorted(rep.components.items()):
        print(f"  {comp}: {n} files")
    f = rep.file
    if f is not None:
        print(f"{f.path}: component {f.component}, key {f.key or '-'}, commit {f.commit or '-'}, "
              f"sha256 {f.sha256}")
        print(f"  built by {f.builder}")
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from pib.build.commands import rebuild_check
    from pib.cli.common import emit_json, load_config, want_json
    from pib.errors import EXIT_CODES, Reason

    rep = rebuild_check(load_config(args), args.component, wait_for_lock=args.wait, offline=args.offline)
    code = 0 if rep.identical else EXIT_CODES[Reason.VERIFY]
    if want_json(args):
        emit_json(rep.to_json())
        return code
    if rep.identical:
        print(f"{rep.component} {rep.key[:12]}: reproducible ({rep.files} entries identical to the {rep.compared_with})")
        return 0
    print(f"{rep.component} {rep.key[:12]}: NOT reproducible: {len(rep.differences)} of {rep.files} entries differ "
          f"from the {rep.compared_with}")
    for path, what in rep.differences[:10]:
        print(f"  {path}: {what}")
    return code
