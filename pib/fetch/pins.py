"""What a pinned input is: a file named by its SHA-256, and where upstream offers it.

The hash is the identity: the file name is what the build sees, the origin
only says where to look when no cache or store holds those bytes.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pib.errors import Location

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_+%~][A-Za-z0-9._+%~:-]{0,254}$")


class UrlOrigin(NamedTuple):
    url: str


class AptOrigin(NamedTuple):
    """A Debian binary package (`apt = "NAME=VERSION"`) or source package (`apt-source`)."""

    package: str
    version: str
    source: bool = False
    arch: str = "amd64"

    def spec(self) -> str:
        if self.source:
            return f"{self.package}={self.version}"
        return f"{self.package}:{self.arch}={self.version}"


Origin = UrlOrigin | AptOrigin


class Pinned(NamedTuple):
    name: str           # the file name a build sees in PIB_SOURCES
    sha256: str
    origin: Origin
    size: int | None = None  # bytes, when declared: a cap on every download of it
    where: Location | None = None

    def describe(self) -> str:
        o = self.origin
        return f"{self.name} ({o.url})" if isinstance(o, UrlOrigin) else f"{self.name} (apt {o.spec()})"


def key_entries(pins: tuple[Pinned, ...]) -> list[list[str]]:
    """What a component's key holds of its pinned inputs: names and hashes, never origins.

    A mirror or a new upstream URL for the same bytes must not change a key.
    """
    return sorted([p.name, p.sha256] for p in pins)
