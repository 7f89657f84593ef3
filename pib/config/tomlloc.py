"""Line numbers for TOML values.

tomllib gives values but no positions; users need `file:line` in every config
error. This scanner maps each table header and `key =` line to its line
number, which is all the errors need (values spanning lines point at their
first line).
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from pib.errors import Location, PibError

Path_ = tuple[str | int, ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _split_dotted(text: str) -> list[str]:
    parts: list[str] = []
    for m in re.finditer(r"""[A-Za-z0-9_\-]+|"([^"]*)"|'([^']*)'""", text):
        if m.group(1) is not None:
            parts.append(m.group(1))
        elif m.group(2) is not None:
            parts.append(m.group(2))
        else:
            parts.append(m.group(0))
    return parts


class Locator:
    """Answers "which line of this file set this key?"."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines: dict[Path_, int] = {}
        table: list[str | int] = []
        array_counts: dict[tuple[str | int, ...], int] = {}
        in_multiline: str | None = None
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw
            if in_multiline is not None:
                if in_multiline in line:
                    in_multiline = None
                continue
            header = _HEADER.match(line)
            if header and not _KEY.match(line):
                names = _split_dotted(header.group(2))
                if header.group(1) == "[[":
                    base = tuple(names)
                    index = array_counts.get(base, 0)
                    array_counts[base] = index + 1
                    table = [*names, index]
                else:
                    table = list(names)
                self.lines.setdefault(tuple(table), lineno)
                continue
            key = _KEY.match(line)
            if key:
                full = (*table, *_split_dotted(key.group(1)))
                self.lines.setdefault(full, lineno)
                rest = line[key.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) == 1:
                        in_multiline = quote

    def line_of(self, path: Path_) -> int:
        """The line of `path`, or of its nearest enclosing key or table."""
        probe = tuple(path)
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return 0

    def at(self, path: Path_) -> Location:
        return Location(self.path, self.line_of(path))


def loads(text: str, path: str, error: type[PibError], *, what: str, hint: str) -> dict[str, Any]:
    """tomllib.loads, with a syntax error turned into `error` at file:line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise error(f"{what} is not valid TOML: {exc}", where=Location(path, int(m.group(1)) if m else 0),
                    hint=hint) from None
