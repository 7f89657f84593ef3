"""`pib cache ls|gc|rm` (the machine's local artifact store) and `pib keygen`."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pib.store.local import LocalStore

def register(sub: Any) -> None:
    from pib.cli.common import common_options

    common = common_options()
    c = sub.add_parser("cache", help="the local artifact store: list, collect garbage, remove", parents=[common])
    cs = c.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")

    ls = cs.add_parser("ls", help="artifacts in the local store, least recently used first", parents=[common])
    ls.add_argument("component", nargs="?", help="only this component")
    ls.add_argument("--store", help="store directory, or the URL of a shared store (http(s)://..., "
                    "s3://bucket/prefix) (default: local_store.path from pib.toml)")
    ls.set_defaults(func=_cmd_ls)

    gc = cs.add_parser("gc", help="drop stale temporaries, then evict least recently used entries to the quota",
                       parents=[common])
    gc.add_argument("--quota", help="size to shrink to, e.g. 20G (default: local_store.quota)")
    gc.add_argument("--store", type=Path, help="store directory (default: local_store.path from pib.toml)")
    gc.set_defaults(func=_cmd_gc)

    rm = cs.add_parser("rm", help="remove one artifact, or every artifact of a component", parents=[common])
    rm.add_argument("component")
    rm.add_argument("key", nargs="?", help="full key (default: all keys of the component)")
    rm.add_argument("--store", type=Path, help="store directory (default: local_store.path from pib.toml)")
    rm.set_defaults(func=_cmd_rm)

    c.set_defaults(func=lambda args: (c.print_help(), 2)[1])

    k = sub.add_parser("keygen", help="create an Ed25519 key pair for signing artifacts", parents=[common])
    k.add_argument("path", type=Path, help="private key file to create (the public key goes to PATH.pub)")
    k.set_defaults(func=_cmd_keygen)


def _store(args: argparse.Namespace) -> tuple[LocalStore, int | None]:
    from pib.store.local import LocalStore

    if args.store is not None:
        return LocalStore(args.store), None
    from pib.cli.common import load_config

    cfg = load_config(args)
    return LocalStore(cfg.local_store.path, quota_bytes=cfg.local_store.quota_bytes), cfg.local_store.quota_bytes


def parse_size(text: str) -> int:
    """A size given on the command line, read as pib.toml reads sizes."""
    from pib.errors import PibError, Reason
    from pib.fsutil import parse_size as parse

    try:
        return parse(text)
    except ValueError:
        raise PibError(f"not a size: {text!r}", reason=Reason.USAGE, hint="use bytes or a suffix: 500M, 20G") from None


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _cmd_ls(args: argparse.Namespace) -> int:
    from pib.cli.common import emit_json, want_json
    from pib.fsutil import human_size

    if args.store is not None and "://" in args.store:
        return _ls_remote(args)
    args.store = Path(args.store) if args.store is not None else None
    store, quota = _store(args)
    entries = sorted(store.list(args.component), key=lambda e: e.modified)
    if want_json(args):
        emit_json({"store": str(store.root), "quota": quota,
                   "entries": [{"component": e.component, "key": e.key, "size": e.size, "last_used": e.modified}
                               for e in entries]})
        return 0
    for e in entries:
        print(f"{e.component:<24} {e.key[:16]}  {human_size(e.size):>10}  last used {_when(e.modified)}")
    total = sum(e.size for e in entries)
    limit = f" of {human_size(quota)}" if quota else ""
    print(f"{len(entries)} artifacts, {human_size(total)}{limit} in {store.root}")
    return 0


def _ls_remote(args: argparse.Namespace) -> int:
    """`cache ls --store URL`: what a shared store holds (read-only; gc and rm act on the local store)."""
    from pib.cli.common import emit_json, want_json
    from pib.config.types import HttpStoreSpec, S3StoreSpec, StoreSpec
    from pib.errors import PibError, Reason
    from pib.fsutil import human_size
    from pib.store.backends import open_store

    url: str = args.store
    spec: StoreSpec
    if url.startswith(("http://", "https://")):
        spec = HttpStoreSpec("store", url.rstrip("/"))
    elif url.startswith("s3://"):
        bucket, _, prefix = url[5:].partition("/")
        import os

        spec = S3StoreSpec("store", bucket, prefix.strip("/"), os.environ.get("AWS_ENDPOINT_URL"))
    else:
        raise PibError(f"not a store URL: {url}", reason=Reason.USAGE,
                       hint="use http(s)://host/path, s3://bucket/prefix, or a directory")
    entries = sorted(open_store(spec).list(args.component), key=lambda e: e.modified)
    if want_json(args):
        emit_json({"store": url, "quota": None,
                   "entries": [{"component": e.component, "key": e.key, "size": e.size, "last_used": e.modified}
                               for e in entries]})
        return 0
    for e in entries:
        print(f"{e.component:<24} {e.key[:16]}  {human_size(e.size):>10}  modified {_when(e.modified)}")
    print(f"{len(entries)} artifacts, {human_size(sum(e.size for e in entries))} in {url}")
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from pib.cli.common import emit_json, want_json
    from pib.fsutil import human_size

    store, quota = _store(args)
    if args.quota is not None:
        quota = parse_size(args.quota)
    removed = store.gc(quota)
    if want_json(args):
        emit_json({"removed": [{"component": e.component, "key": e.key, "size": e.size} for e in removed],
                   "usage": store.usage()})
        return 0
    for e in removed:
        print(f"removed {e.component} {e.key[:16]} ({human_size(e.size)})")
    print(f"{len(removed)} removed; {human_size(store.usage())} in use")
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    keys = [args.key] if args.key else [e.key for e in store.list(args.component)]
    if not keys:
        from pib.errors import PibError, Reason

        raise PibError(f"no artifacts of {args.component} in {store.root}", reason=Reason.USAGE,
                       hint="see `pib cache ls`")
    for key in keys:
        store.delete(args.component, key)
    from pib.cli.common import emit_json, want_json

    if want_json(args):
        emit_json({"store": str(store.root), "removed": [{"component": args.component, "key": k} for k in keys]})
        return 0
    for key in keys:
        print(f"removed {args.component} {key[:16]}")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from pib.artifacts.signing import generate_keypair

    public_path = args.path.with_name(args.path.name + ".pub")
    pub = generate_keypair(args.path, public_path)
    from pib.cli.common import emit_json, want_json

    if want_json(args):
        emit_json({"private_key": str(args.path), "public_key": str(public_path), "id": pub.id,
                   "public_key_text": pub.text()})
        return 0
    print(f"private key: {args.path} (mode 0600; keep it secret, e.g. a CI secret)")
    print(f"public key:  {public_path} (id {pub.id}); add it to trust.public_keys")
    print(pub.text())
    return 0
