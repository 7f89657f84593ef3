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


MAX_NESTING = 32  # arrays and tables inside each other; no pib setting needs more than a few


def loads(text: str, path: str, error: type[PibError], *, what: str, hint: str) -> dict[str, Any]:
    """tomllib.loads, with every failure turned into `error` at file:line.

    tomllib decides what the document is; when it gives up on hostile input (nesting deep enough to
    exhaust the stack, an integer past Python's 4,300-digit limit) the line is found for the message
    only. What it returns is checked for nesting depth and NUL bytes, which no path, argument or
    variable can carry.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise error(f"{what} is not valid TOML: {exc}", where=Location(path, int(m.group(1)) if m else 0),
                    hint=hint) from None
    except RecursionError:
        raise error(f"{what} nests arrays or tables too deeply", where=Location(path, _deepest_line(text)),
                    hint=f"{hint} (at most {MAX_NESTING} levels)") from None
    except ValueError:  # int() past sys.get_int_max_str_digits()
        m = re.search(r"\d{1000,}", text)
        line = text.count("\n", 0, m.start()) + 1 if m else 0
        raise error(f"{what} holds a number too large to be a setting", where=Location(path, line),
                    hint=hint) from None
    bad = _check(data)
    if bad is not None:
        keypath, problem = bad
        fix = "remove the NUL (\\u0000)" if "NUL" in problem else f"flatten it (at most {MAX_NESTING} levels)"
        dotted = ".".join(str(k).replace("\0", "\\u0000") for k in keypath)
        raise error(f"{what}: {dotted or 'a key'} {problem}",
                    where=Locator(path, text).at(keypath), hint=fix)
    return data


def _check(data: dict[str, Any]) -> tuple[Path_, str] | None:
    """The key path of the first value nested too deeply or holding a NUL byte (iterative: the
    depth is what is being checked)."""
    todo: list[tuple[Path_, Any]] = [((), data)]
    while todo:
        keypath, value = todo.pop()
        if isinstance(value, str):
            if "\0" in value:
                return keypath, "holds a NUL byte"
            continue
        if len(keypath) > MAX_NESTING:
            return keypath[:MAX_NESTING], f"nests arrays or tables more than {MAX_NESTING} deep"
        items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for k, v in items:
            if isinstance(k, str) and "\0" in k:
                return (*keypath, k), "has a NUL byte in its name"
            todo.append(((*keypath, k), v))
    return None


def _deepest_line(text: str) -> int:
    """The line where brackets nest deepest (for the message only; strings are not skipped)."""
    depth = best = 0
    line = best_line = 1
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > best:
                best, best_line = depth, line
        elif ch in "]}":
            depth -= 1
        elif ch == "\n":
            line += 1
    return best_line
