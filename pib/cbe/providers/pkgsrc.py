"""The pkgsrc provider: a bootstrap kit plus a pinned pkgin package list.

For illumos and SmartOS hosts, following pkgsrc's documented install steps
(pkgsrc.smartos.org "Install instructions", pkgin(1), pkg_info(1)):

1. `curl -fsSL -o KIT URL`, then the kit's SHA-256 must equal the lock's;
2. `tar -xzpf KIT -C WORK` and the kit's prefix subtree moved into place;
3. `PREFIX/etc/pkgin/repositories.conf` names the lock's repository (a
   quarterly branch URL) and nothing else;
4. `pkgin -y update`, then `pkgin -y install NAME-VERSION ...`;
5. `pkg_info` must then list exactly the kit's own packages plus the lock's:
   a dependency the lock does not name, or a different version, is an
   error, so the lock really pins everything the version contains.

pkgsrc binaries are built for one prefix (LOCALBASE) and are not
relocatable, so the kit must have been built for `<root>/<version>` and the
install happens in place (see install.py). Only the command sequence is
tested on Linux; running it needs an illumos host (docs/cbe.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pib.cbe.pins import Lock, PkgsrcPin
from pib.cbe.providers import Context, write_files
from pib.errors import CbeError, PibError, Reason
from pib.fsutil import remove_tree, sha256_file
from pib.run import minimal_env, run

RELOCATABLE = False


@dataclass(frozen=True)
class Step:
    what: str
    argv: tuple[str, ...] = ()           # a command to run, or
    write: tuple[str, str] | None = None  # (path, content) to write, or
    check: str = ""                       # a check done in Python: "kit-sha256", "move-kit", "installed-set"


def plan(pin: PkgsrcPin, prefix: Path, work: Path) -> list[Step]:
    """Every step of an install, in order (what the tests pin)."""
    kit = work / "bootstrap.tar.gz"
    p = str(prefix)
    return [
        Step("download bootstrap kit", argv=("curl", "-fsSL", "--retry", "2", "-o", str(kit), pin.bootstrap_url)),
        Step("check bootstrap kit sha256", check="kit-sha256"),
        Step("unpack bootstrap kit", argv=("tar", "-xzpf", str(kit), "-C", str(work / "kit"))),
        Step("move kit prefix into place", check="move-kit"),
        Step("list the kit's own packages", argv=(f"{p}/sbin/pkg_info",), check="kit-set"),
        Step("pin the package repository", write=(f"{p}/etc/pkgin/repositories.conf", pin.repository + "\n")),
        Step("refresh package list", argv=(f"{p}/bin/pkgin", "-y", "update")),
        Step("install packages", argv=(f"{p}/bin/pkgin", "-y", "install", *pin.packages)),
        Step("compare installed packages with the lock", argv=(f"{p}/sbin/pkg_info",), check="installed-set"),
    ]


def env_for(prefix: Path) -> dict[str, str]:
    return minimal_env(path=f"{prefix}/sbin:{prefix}/bin:/usr/bin:/usr/sbin:/bin")


def package_names(pkg_info_output: str) -> set[str]:
    return {line.split()[0] for line in pkg_info_output.splitlines() if line.strip()}


def installed_set_problems(pkg_info_output: str, pin: PkgsrcPin, kit: set[str]) -> list[str]:
    """Differences between what pkg_info lists and what the lock pins.

    `kit` is what the bootstrap kit itself installed (pinned by the kit's hash).
    """
    installed = package_names(pkg_info_output) - kit
    wanted = set(pin.packages)
    problems = [f"not installed: {p}" for p in sorted(wanted - installed - kit)]
    problems += [f"installed but not in the lock: {p}" for p in sorted(installed - wanted)]
    return problems


def populate(lock: Lock, prefix: Path, ctx: Context) -> dict[str, str]:
    pin = lock.pkgsrc
    assert pin is not None
    if str(prefix) != pin.prefix:
        raise CbeError(
            f"this pkgsrc kit is built for {pin.prefix}, but the CBE version would live at {prefix}",
            where=pin.where,
            hint=f"set [cbe] root in pib.toml to {os.path.dirname(pin.prefix)}, or use a kit built for {prefix}",
        )
    work = ctx.cache / "pkgsrc" / f"{lock.version}.work"
    remove_tree(work)
    (work / "kit").mkdir(parents=True)
    env = env_for(prefix)
    kit: set[str] = set()
    for step in plan(pin, prefix, work):
        try:
            if step.write is not None:
                path = Path(step.write[0])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(step.write[1], encoding="utf-8")
            elif step.check == "kit-sha256":
                got = sha256_file(work / "bootstrap.tar.gz")[0]
                if got != pin.bootstrap_sha256:
                    raise CbeError(f"pkgsrc bootstrap kit has sha256 {got}, the lock pins {pin.bootstrap_sha256}",
                                   where=pin.where, hint="check bootstrap_url, or re-pin the lock")
            elif step.check == "move-kit":
                inside = work / "kit" / pin.prefix.lstrip("/")
                if not inside.is_dir():
                    raise CbeError(f"the bootstrap kit has no {pin.prefix} tree", where=pin.where,
                                   hint="use a kit built for this prefix")
                for entry in inside.iterdir():
                    os.rename(entry, prefix / entry.name)
            elif step.check == "kit-set":
                res = run(step.argv, env=env, log=ctx.log, capture=True, reason=Reason.CBE, what=step.what)
                kit = package_names(res.stdout)
            elif step.check == "installed-set":
                res = run(step.argv, env=env, log=ctx.log, capture=True, reason=Reason.CBE, what=step.what)
                problems = installed_set_problems(res.stdout, pin, kit)
                if problems:
                    raise CbeError(f"pkgsrc CBE does not match its lock: {'; '.join(problems[:5])}",
                                   where=pin.where, hint="list every package (dependencies too) in the lock")
            else:
                run(step.argv, env=env, log=ctx.log, reason=Reason.CBE, what=step.what)
        except CbeError:
            raise
        except PibError as exc:
            raise CbeError(f"pkgsrc install step failed: {step.what}: {exc.message}", where=pin.where,
                           hint="see the log; check the repository URL and package names", detail=exc.detail) from None
    remove_tree(work)
    write_files(lock, prefix)
    return {}
