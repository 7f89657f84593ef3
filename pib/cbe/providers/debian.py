"""The debian provider: pinned Debian binary packages unpacked into a prefix.

Each package is a pinned file (pib.fetch): taken from the download cache, an
artifact store that mirrors it, or Debian's archive through a private apt
configured from the lock's `[apt]` suites (the host's apt sources when the
lock has none), checked against the lock's sha256, and unpacked with
`dpkg -x`. No package scripts run and nothing touches the host's dpkg
database.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pib.cbe.pins import Lock, Package
from pib.cbe.providers import Context, write_files
from pib.config.types import AptOrigin, AptSources, Pinned
from pib.errors import CbeError, Location, PibError, Reason
from pib.fetch import Fetched, Fetcher, Mirror
from pib.fetch.apt import HostApt, NotInArchive, PrivateApt, deb_file_name
from pib.run import Log, minimal_env, run

RELOCATABLE = True


def spec(pkg: Package) -> str:
    return f"{pkg.name}:{pkg.arch}={pkg.version}" if pkg.arch else f"{pkg.name}={pkg.version}"


def download_argv(packages: tuple[Package, ...]) -> list[str]:
    return ["apt-get", "download", "-q", *(spec(p) for p in packages)]


def pins(packages: tuple[Package, ...]) -> list[Pinned]:
    """The lock's packages as pinned files (what `pib fetch` and the store mirrors deal in)."""
    return [Pinned(deb_file_name(p.name, p.version, p.arch or "amd64"), p.sha256[0],
                   AptOrigin(p.name, p.version, arch=p.arch or "amd64"), where=p.where) for p in packages]


def fetch(packages: tuple[Package, ...], cache: Path, log: Log | None, *, apt: AptSources | None = None,
          mirrors: Sequence[Mirror] = (), offline: bool = False,
          lock_path: Path | None = None) -> dict[str, Fetched]:
    """Every package's verified .deb, from the download cache, a store, or the archive (in that order)."""
    upstream: PrivateApt | HostApt = (PrivateApt(apt, cache / "apt", log=log) if apt is not None
                                      else HostApt(log=log))
    fetcher = Fetcher(cache, mirrors=mirrors, apt=upstream, offline=offline, log=log,
                      warn=log.line if log is not None else None)
    wanted = pins(packages)
    try:
        got = fetcher.fetch(wanted)
    except NotInArchive as exc:
        where = f"{apt.describe()}" if apt is not None else "the host's apt sources"
        repin = f"pib cbe pin {lock_path}" if lock_path is not None and apt is not None else \
            "add an [apt] section naming the suite, then `pib cbe pin LOCK`"
        raise CbeError(f"{exc.message.split(': not in')[0]}: not in {where}, and no store holds the pinned file",
                       where=wanted[0].where if len(wanted) == 1 else (Location(str(lock_path)) if lock_path else None),
                       hint=f"re-pin the lock from the suite: `{repin}` (old versions stay on "
                            "snapshot.debian.org; a store that mirrors them keeps old pins working)",
                       detail=exc.detail) from None
    except PibError as exc:
        raise CbeError(f"cannot fetch the CBE's Debian packages: {exc.message}", where=exc.where,
                       hint=exc.hint or "check the lock's pins and the network", detail=exc.detail) from None
    return {p.name: got[p.sha256[0]] for p in packages}


def populate(lock: Lock, prefix: Path, ctx: Context) -> dict[str, str]:
    debs = fetch(lock.packages, ctx.downloads or ctx.cache / "debian", ctx.log, apt=lock.apt,
                 mirrors=ctx.mirrors(), offline=ctx.offline, lock_path=lock.path)
    for p in lock.packages:
        run(["dpkg", "-x", debs[p.name].path, prefix], env=minimal_env(), log=ctx.log, reason=Reason.CBE,
            what=f"dpkg -x {p.name}")
    write_files(lock, prefix)
    return {}


class Repin(NamedTuple):
    name: str
    old_version: str
    new_version: str
    new_sha256: str

    @property
    def changed(self) -> bool:
        return self.old_version != self.new_version

    def to_json(self) -> dict[str, str]:
        return {"package": self.name, "old": self.old_version, "new": self.new_version, "sha256": self.new_sha256}


def repin(lock: Lock, apt: AptSources, cache: Path, log: Log | None = None) -> tuple[str, list[Repin]]:
    """The lock's text with every [[packages]] pin set to its version in apt's suites.

    Reads fresh package lists through a private apt (so the host's sources do not
    matter), keeps the lock's comments and layout, and re-parses the result with
    the one lock parser before returning it.
    """
    from pib.cbe.pins import parse

    papt = PrivateApt(apt, cache / "apt", log=log)
    papt.update(force=True)
    changes: list[Repin] = []
    text = lock.path.read_text(encoding="utf-8")
    known = papt.versions(*(p.name for p in lock.packages))
    for p in lock.packages:
        stanzas = [st for st in known[p.name] if "SHA256" in st and "Version" in st]
        if not stanzas:
            raise CbeError(f"package {p.name!r} is not in {apt.describe()}", where=p.where,
                           hint="check the name, or the suites in the lock's [apt] section")
        best = max(stanzas, key=lambda st: _VersionKey(st["Version"]))
        changes.append(Repin(p.name, p.version, best["Version"], best["SHA256"]))
        text = _set_pin(text, p, best["Version"], best["SHA256"])
    parse(text, lock.path)  # what is written must be what pib reads
    return text, changes


def _set_pin(text: str, pkg: Package, version: str, sha256: str) -> str:
    """Replace version and sha256 in the [[packages]] block that names pkg."""
    import re

    blocks = re.split(r"(?m)^(?=\[\[packages\]\][ \t]*(?:#.*)?$)", text)
    name_re = re.compile(rf'(?m)^name\s*=\s*"{re.escape(pkg.name)}"\s*(?:#.*)?$')
    for i, block in enumerate(blocks):
        if block.startswith("[[packages]]") and name_re.search(block):
            head, sep, tail = block.partition("\n[")  # stop at the next table header
            head = re.sub(r'(?m)^version\s*=\s*"[^"]*"', lambda _m: f'version = "{version}"', head, count=1)
            head = re.sub(r'(?m)^sha256\s*=\s*"[0-9a-f]*"', lambda _m: f'sha256 = "{sha256}"', head, count=1)
            blocks[i] = head + sep + tail
            return "".join(blocks)
    raise CbeError(f"cannot find the [[packages]] entry of {pkg.name!r} to rewrite", where=pkg.where,
                   hint="write each pin as its own [[packages]] table with name, version and sha256 lines")


class _VersionKey:
    """Debian version order (dpkg's algorithm), for choosing the newest of a suite's versions."""

    def __init__(self, version: str) -> None:
        epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        self.parts = (int(epoch or 0), upstream, revision)

    def __lt__(self, other: _VersionKey) -> bool:
        a, b = self.parts, other.parts
        if a[0] != b[0]:
            return a[0] < b[0]
        for x, y in ((a[1], b[1]), (a[2], b[2])):
            c = _compare(x, y)
            if c:
                return c < 0
        return False


def _order(ch: str) -> int:
    if ch == "~":
        return -1
    if ch.isalpha():
        return ord(ch)
    return ord(ch) + 256


def _compare(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternate non-digit runs (with ~ sorting first) and numeric runs."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0
