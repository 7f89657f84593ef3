"""SPDX license expressions (SPDX 2.3, annex D), parsed strictly.

    expression = and-expr ("OR" and-expr)*
    and-expr   = term ("AND" term)*
    term       = "(" expression ")" | simple ["WITH" exception-id]
    simple     = license-id ["+"] | ["DocumentRef-" idstring ":"] "LicenseRef-" idstring

Operators are upper case, as the specification says. Identifiers are checked
against the SPDX license list that the CycloneDX schema carries (the list the
SBOM validators use), read only when a component declares a license.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources

_TOKEN = re.compile(r"\s*(?:(\()|(\))|([A-Za-z0-9.+:-]+))")
_IDSTRING = re.compile(r"^[A-Za-z0-9.-]+$")
_REF = re.compile(r"^(?:DocumentRef-[A-Za-z0-9.-]+:)?LicenseRef-[A-Za-z0-9.-]+$")
_OPERATORS = frozenset({"AND", "OR", "WITH"})


class LicenseError(ValueError):
    pass


@functools.cache
def _spdx_ids() -> frozenset[str]:
    """License and exception identifiers of the SPDX list, in lower case (matching is case-insensitive)."""
    schema = resources.files("cyclonedx.schema").joinpath("_res/spdx.SNAPSHOT.schema.json")
    return frozenset(i.lower() for i in json.loads(schema.read_text(encoding="utf-8"))["enum"])


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise LicenseError(f"unexpected character {text[pos:].lstrip()[:1]!r}")
        out.append(m.group(m.lastindex or 0))
        pos = m.end()
    return out


def check_expression(text: str) -> None:
    """Raise LicenseError saying what is wrong with `text` as an SPDX license expression."""
    toks = _tokens(text)
    if not toks:
        raise LicenseError("the expression is empty")
    pos = _expression(toks, 0)
    if pos != len(toks):
        raise LicenseError(f"unexpected {toks[pos]!r}")


def _expression(toks: list[str], pos: int) -> int:
    pos = _term(toks, pos)
    while pos < len(toks) and toks[pos] in ("AND", "OR"):
        pos = _term(toks, pos + 1)
    return pos


def _term(toks: list[str], pos: int) -> int:
    if pos >= len(toks):
        raise LicenseError("the expression ends where a license was expected")
    tok = toks[pos]
    if tok == "(":
        pos = _expression(toks, pos + 1)
        if pos >= len(toks) or toks[pos] != ")":
            raise LicenseError("a '(' is not closed")
        return pos + 1
    _simple(tok)
    pos += 1
    if pos < len(toks) and toks[pos] == "WITH":
        if pos + 1 >= len(toks):
            raise LicenseError("WITH needs an exception identifier after it")
        _known(toks[pos + 1], "license exception")
        pos += 2
    return pos


def _simple(tok: str) -> None:
    if tok in (")", "(") or tok in _OPERATORS:
        raise LicenseError(f"expected a license identifier, not {tok!r}")
    if tok.upper() in _OPERATORS:
        raise LicenseError(f"operators are upper case: write {tok.upper()!r}, not {tok!r}")
    if _REF.match(tok):
        return
    _known(tok[:-1] if tok.endswith("+") else tok, "license")


def _known(ident: str, what: str) -> None:
    if not _IDSTRING.match(ident):
        raise LicenseError(f"{ident!r} is not a valid {what} identifier")
    if ident.lower() not in _spdx_ids():
        raise LicenseError(f"{ident!r} is not an SPDX {what} identifier "
                           "(see https://spdx.org/licenses/, or use LicenseRef-NAME for others)")
