"""The debian provider: pinned Debian binary packages unpacked into a prefix.

Each package is fetched with `apt-get download NAME:ARCH=VERSION` into a
content-addressed download cache (`<root>/.cache/debian/<sha256>.deb`),
checked against the lock's sha256, and unpacked with `dpkg -x`. No package
scripts run and nothing touches the host's dpkg database.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pib.cbe.pins import Lock, Package
from pib.cbe.providers import Context, write_files
from pib.errors import CbeError, PibError, Reason
from pib.fsutil import sha256_file
from pib.run import Log, minimal_env, run

RELOCATABLE = True


def spec(pkg: Package) -> str:
    return f"{pkg.name}:{pkg.arch}={pkg.version}" if pkg.arch else f"{pkg.name}={pkg.version}"


def download_argv(packages: tuple[Package, ...]) -> list[str]:
    return ["apt-get", "download", "-q", *(spec(p) for p in packages)]


def fetch(packages: tuple[Package, ...], cache: Path, log: Log | None) -> dict[str, Path]:
    """Every package's verified .deb in the cache, downloading what is missing."""
    cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    missing: list[Package] = []
    for p in packages:
        cached = cache / f"{p.sha256[0]}.deb"
        # The cache is shared and outlives installs: check it again before use.
        if cached.is_file() and sha256_file(cached)[0] == p.sha256[0]:
            found[p.name] = cached
        else:
            cached.unlink(missing_ok=True)
            missing.append(p)
    if not missing:
        return found
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        try:
            run(download_argv(tuple(missing)), cwd=tmp, env=minimal_env(), log=log, reason=Reason.CBE,
                what="apt-get download of the CBE's Debian packages")
        except PibError as exc:
            raise CbeError(
                f"cannot download the CBE's Debian packages: {exc.message}",
                where=missing[0].where,
                hint="run `apt-get update`; if a pinned version left the archive, "
                     "update the lock (old versions stay on snapshot.debian.org)",
                detail=exc.detail,
            ) from None
        by_name: dict[str, Path] = {}
        for got_deb in tmp.glob("*.deb"):
            by_name[got_deb.name.split("_", 1)[0]] = got_deb
        for p in missing:
            deb = by_name.get(p.name)
            if deb is None:
                raise CbeError(f"apt-get did not deliver {spec(p)}", where=p.where,
                               hint="check the package name and version in the lock")
            got = sha256_file(deb)[0]
            if got != p.sha256[0]:
                raise CbeError(
                    f"{spec(p)}: downloaded .deb has sha256 {got}, the lock pins {p.sha256[0]}",
                    where=p.where,
                    hint="the archive serves a different file than the lock was made from; "
                         "check the mirror, or re-pin the lock if the change is expected",
                )
            dest = cache / f"{got}.deb"
            os.replace(deb, dest)
            found[p.name] = dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return found


def populate(lock: Lock, prefix: Path, ctx: Context) -> dict[str, str]:
    debs = fetch(lock.packages, ctx.cache / "debian", ctx.log)
    for p in lock.packages:
        run(["dpkg", "-x", debs[p.name], prefix], env=minimal_env(), log=ctx.log, reason=Reason.CBE,
            what=f"dpkg -x {p.name}")
    write_files(lock, prefix)
    return {}


def pin(names: list[str], *, arch: str = "amd64") -> list[dict[str, str]]:
    """[[packages]] entries for the candidate versions apt knows (to write a lock)."""
    out: list[dict[str, str]] = []
    for name in names:
        res = run(["apt-cache", "show", "--no-all-versions", f"{name}:{arch}"], env=minimal_env(), capture=True,
                  reason=Reason.CBE, what=f"apt-cache show {name}")
        fields: dict[str, str] = {}
        for line in res.stdout.splitlines():
            if ":" in line and not line.startswith(" "):
                k, v = line.split(":", 1)
                fields.setdefault(k, v.strip())
        if "SHA256" not in fields:
            raise CbeError(f"apt-cache does not know {name}", hint="run `apt-get update` and check the name")
        out.append({"name": name, "version": fields["Version"], "arch": fields.get("Architecture", arch),
                    "sha256": fields["SHA256"]})
    return out
