"""`pib cbe ...`: list, check, install, remove and publish build environments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pib.config.types import Config


def register(sub: Any) -> None:
    from pib.cli.common import common_options

    common = common_options()
    p = sub.add_parser("cbe", help="versioned build environments (list, verify, install, rm, publish)",
                       parents=[common])
    cs = p.add_subparsers(dest="cbe_command", metavar="SUBCOMMAND")

    ls = cs.add_parser("ls", help="installed versions and the workspaces using them", parents=[common])
    ls.add_argument("--root", type=Path, help="CBE root (default: from pib.toml)")
    ls.set_defaults(func=_cmd_ls)

    v = cs.add_parser("verify", help="check the workspace's CBE against its lock and install record",
                      parents=[common])
    v.add_argument("--full", action="store_true", help="re-hash every file (default: sizes, modes, mtimes)")
    v.set_defaults(func=_cmd_verify)

    i = cs.add_parser("install", help="install the workspace's CBE version if missing", parents=[common])
    i.add_argument("--update", action="store_true",
                   help="also replace an out-of-date or modified install (checks every file's hash)")
    i.set_defaults(func=_cmd_install)

    rm = cs.add_parser("rm", help="remove an installed version", parents=[common])
    rm.add_argument("version")
    rm.add_argument("--root", type=Path, help="CBE root (default: from pib.toml)")
    rm.add_argument("--force", action="store_true", help="remove even while workspaces use it")
    rm.set_defaults(func=_cmd_rm)

    pub = cs.add_parser("publish", help="pack a prefix directory into a signed CBE tarball and write its lock",
                        parents=[common])
    pub.add_argument("directory", type=Path)
    pub.add_argument("--version", required=True, dest="cbe_version")
    pub.add_argument("--name", help="CBE name (default: [cbe] name from pib.toml)")
    pub.add_argument("--store", type=Path, help="store directory (default: the local store)")
    pub.add_argument("--key", type=Path, help="Ed25519 private key, PEM (default: [trust] signing_key)")
    pub.add_argument("--bin", action="append", default=None, help="prefix-relative bin directory (repeatable)")
    pub.add_argument("--lock-out", type=Path, help="write the lock here (default: print it)")
    pub.set_defaults(func=_cmd_publish)

    pin = cs.add_parser("pin", help="refresh a Debian lock's [[packages]] pins from its [apt] suites",
                        parents=[common])
    pin.add_argument("lock", nargs="?", type=Path, help="lock file (default: [cbe] lock of the workspace)")
    pin.add_argument("--suite", action="append", dest="suites",
                     help="pin from this suite instead of the lock's (repeatable); the lock's [apt] is kept")
    pin.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")
    pin.set_defaults(func=_cmd_pin)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _config(args: argparse.Namespace, *, required: bool) -> Config | None:
    from pib.cli.common import load_config
    from pib.errors import ConfigError

    try:
        return load_config(args)
    except ConfigError:
        if required:
            raise
        return None


def _spec(cfg: Config) -> Any:
    from pib.errors import ConfigError

    if cfg.cbe is None:
        raise ConfigError("pib.toml has no [cbe] section", hint="add [cbe] name, version and lock")
    return cfg.cbe


def _root(args: argparse.Namespace) -> tuple[Path, Config | None]:
    from pib import cbe

    cfg = _config(args, required=args.root is None)
    if args.root is not None:
        return args.root, cfg
    assert cfg is not None
    spec = _spec(cfg)
    return (spec.root or cbe.default_root(spec.name)), cfg


def _cmd_ls(args: argparse.Namespace) -> int:
    from pib import cbe
    from pib.cli.common import emit_json, want_json

    root, cfg = _root(args)
    current = cfg.cbe.version if cfg is not None and cfg.cbe is not None else None
    rows = cbe.list_installed(root, check=True)
    if want_json(args):
        emit_json({"root": str(root), "versions": [
            {"version": r.version, "name": r.name, "provider": r.provider, "lock_digest": r.lock_digest,
             "installed_at": r.installed_at, "complete": r.complete, "state": r.state,
             "problems": list(r.problems[:20]), "users": [str(u) for u in r.users],
             "current": r.version == current}
            for r in rows]})
        return 0
    print(f"# {root}")
    if not rows:
        print("no versions installed")
    for r in rows:
        mark = "*" if r.version == current else " "
        print(f"{mark} {r.version:<16} {r.provider or '-':<8} {r.state:<15} {r.lock_digest[:12] or '-':<12} "
              f"{r.installed_at}")
        for u in r.users:
            print(f"      used by {u}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from pib import cbe

    cfg = _config(args, required=True)
    assert cfg is not None
    spec = _spec(cfg)
    inst = cbe.verify_full(spec) if args.full else cbe.ensure(spec, install=False)
    from pib.cli.common import emit_json, want_json

    if want_json(args):
        emit_json({"ok": True, "name": inst.name, "version": inst.version, "prefix": str(inst.prefix),
                   "lock": inst.lock_digest, "check": "full" if args.full else "cheap"})
        return 0
    print(f"ok: {inst.name} {inst.version} at {inst.prefix} (lock {inst.lock_digest[:12]}, "
          f"{'full' if args.full else 'cheap'} check)")
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    from pib.build.env import ensure_cbe
    from pib.run import Log

    cfg = _config(args, required=True)
    assert cfg is not None
    _spec(cfg)
    with Log(cfg.workspace.log_dir / "cbe-install.log") as log:
        inst = ensure_cbe(cfg, install=True, update=args.update, log=log)
    from pib.cli.common import emit_json, want_json

    if want_json(args):
        emit_json({"installed": True, "name": inst.name, "version": inst.version, "prefix": str(inst.prefix),
                   "lock": inst.lock_digest})
        return 0
    print(f"installed: {inst.name} {inst.version} at {inst.prefix} (lock {inst.lock_digest[:12]})")
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    from pib import cbe

    root, _cfg = _root(args)
    cbe.remove(root, args.version, force=args.force)
    print(f"removed {root / args.version}")
    return 0


def _cmd_pin(args: argparse.Namespace) -> int:
    from pib.cbe.pins import load
    from pib.cbe.providers.debian import repin
    from pib.cli.common import emit_json, want_json
    from pib.errors import CbeError
    from pib.fetch import download_cache
    from pib.fsutil import write_atomic
    from pib.run import Log

    path: Path | None = args.lock
    if path is None:
        cfg = _config(args, required=True)
        assert cfg is not None
        path = _spec(cfg).lock
    assert path is not None
    lock = load(path)
    if lock.provider != "debian":
        raise CbeError(f"{path} uses provider {lock.provider!r}; only Debian locks are pinned from apt suites",
                       where=lock.where())
    apt = lock.apt
    if apt is None:
        raise CbeError(f"{path} names no suites to pin from", where=lock.where(),
                       hint='add [apt] suites = ["bookworm"] (a release\'s base suite) to the lock')
    if args.suites:
        apt = apt._replace(suites=tuple(args.suites))
    with Log(download_cache() / "apt" / "pin.log") as log:
        text, changes = repin(lock, apt, download_cache(), log)
    changed = [c for c in changes if c.changed]
    if changed and not args.dry_run:
        write_atomic(path, text)
    if want_json(args):
        emit_json({"lock": str(path), "suites": list(apt.suites), "written": bool(changed) and not args.dry_run,
                   "changed": [c.to_json() for c in changed], "packages": len(changes)})
        return 0
    for c in changed:
        print(f"  {c.name}: {c.old_version} -> {c.new_version}")
    verb = "would change" if args.dry_run else "changed"
    print(f"{path}: {len(changed)} of {len(changes)} pins {verb} (from {apt.describe()})"
          if changed else f"{path}: all {len(changes)} pins are current in {apt.describe()}")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from pib import cbe
    from pib.errors import CbeError

    cfg = _config(args, required=False)  # flags can stand in for every setting it would give
    name = args.name or (_spec(cfg).name if cfg is not None else None)
    if name is None:
        raise CbeError("no CBE name", hint="pass --name or run inside a workspace with [cbe]")
    store = args.store or (cfg.local_store.path if cfg is not None else None)
    if store is None:
        raise CbeError("no store to publish to", hint="pass --store DIR")
    key_path = args.key or (cfg.trust.signing_key if cfg is not None else None)
    key_env = cfg.trust.signing_key_env if cfg is not None else "PIB_SIGNING_KEY"
    signer = cbe.signing_key(key_path, key_env)
    pub = cbe.publish_tarball(args.directory, name, args.cbe_version, store, signer,
                              bin_dirs=tuple(args.bin or ("bin",)))
    text = pub.lock_text()
    if args.lock_out is None:
        sys.stdout.write(text)
    else:
        from pib.fsutil import write_atomic

        out: Path = args.lock_out
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text)
        print(f"published {pub.component}/{pub.key} ({pub.size} bytes, sha256 {pub.sha256}); lock: {out}",
              file=sys.stderr)
    return 0
