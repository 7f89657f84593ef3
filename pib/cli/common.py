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


def load_config(args: argparse.Namespace) -> Config:
    from pib.config.loader import find_workspace, load

    start = Path(getattr(args, "directory", None) or os.getcwd())
    return load(find_workspace(start))


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def want_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))
