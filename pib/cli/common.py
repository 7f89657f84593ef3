"""What every command module shares: common options, loading the workspace's
configuration, and JSON output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pib.config.types import Config


def common_options() -> argparse.ArgumentParser:
    """Options accepted before or after the command name."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-C", dest="directory", metavar="DIR", default=argparse.SUPPRESS,
                   help="workspace directory (default: nearest with pib.toml)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


# Control characters other than tab and newline, C1 included: written as \\xNN, never as themselves.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0))}


class Printable:
    """A text stream that writes what it is given with control characters escaped.

    pib prints what others wrote: a build's log tail, a store's HTTP reason phrase, the key
    document of an unverified artifact, file names from a repository. Any of them could hold
    escape sequences that retitle the terminal, rewrite what is on screen or, on some terminals,
    set the clipboard. pib's own cursor movements (the live view) go to `unescaped`.
    """

    def __init__(self, stream: Any) -> None:
        self.unescaped = stream

    def write(self, text: str) -> int:
        self.unescaped.write(text.translate(_ESCAPES))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unescaped, name)


def load_config(args: argparse.Namespace) -> Config:
    from pib.config.loader import find_workspace, load

    start = Path(getattr(args, "directory", None) or os.getcwd())
    return load(find_workspace(start))


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def want_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))
