"""A private apt: Debian's own tools, with pib's sources list and state only.

The host's `/etc/apt/sources.list*`, its package lists and its dpkg database
play no part: each configuration (URIs, suites, components, architecture,
keyring) gets its own directory under pib's cache with a sources list, the
package lists `apt-get update` fetched for it, and an empty dpkg status. So a
Debian 13 host can fetch bookworm packages, and a pin names the suite it came
from rather than whatever the machine happens to point at.

The lists are refreshed when older than `MAX_AGE` or when a pinned version is
not found in them (an index that predates the version), never more than once a
run per configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from pib.config.types import AptSources
from pib.errors import PibError, Reason
from pib.run import Log, minimal_env, run

MAX_AGE = 24 * 3600.0  # seconds before the package lists are fetched again


class NotInArchive(PibError):
    """A pinned package version that the configured suites do not offer."""

    reason = Reason.SOURCE


class PrivateApt:
    """apt-get and apt-cache bound to one AptSources and a directory of their own."""

    def __init__(self, sources: AptSources, cache_root: Path, *, log: Log | None = None,
                 with_source: bool = False) -> None:
        self.sources = sources
        self.log = log
        self.with_source = with_source
        text = "\n".join(sources.lines(source=with_source)) + "\n"
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.root = cache_root / digest
        self._list_text = text
        self._updated = False
        self._mutex = threading.RLock()
        self._depth = 0
        self._fd = -1

    # -------------------------------------------------------------- setup

    def _prepare(self) -> None:
        for d in ("lists/partial", "archives/partial", "parts", "prefs"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        src = self.root / "sources.list"
        if not src.is_file() or src.read_text() != self._list_text:
            tmp = src.with_name(".sources.list.tmp")
            tmp.write_text(self._list_text)
            os.replace(tmp, src)
        status = self.root / "status"
        if not status.exists():
            status.touch()

    def options(self) -> list[str]:
        r = self.root
        opts = {
            "Dir::Etc::SourceList": r / "sources.list",
            "Dir::Etc::SourceParts": r / "parts",
            "Dir::Etc::PreferencesParts": r / "prefs",
            "Dir::Etc::Preferences": r / "prefs" / "none",
            "Dir::State": r,
            "Dir::State::Lists": r / "lists",
            "Dir::State::status": r / "status",
            "Dir::Cache": r,
            "Dir::Cache::Archives": r / "archives",
            "APT::Architecture": self.sources.arch,
            "APT::Architectures": self.sources.arch,
            "Acquire::Languages": "none",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled": "false",
            "Debug::NoLocking": "true",  # pib serialises its own use of this directory
        }
        if os.geteuid() == 0:
            # apt drops to the _apt user to download; it cannot enter a private cache under /root.
            opts["APT::Sandbox::User"] = "root"
        out: list[str] = []
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def _env(self) -> dict[str, str]:
        # The host's apt.conf.d still applies (proxies); APT_CONFIG from the caller does not.
        return minimal_env({"DEBIAN_FRONTEND": "noninteractive"})

    def _lists_age(self) -> float:
        stamps = [p.stat().st_mtime for p in (self.root / "lists").glob("*_Packages*")]
        return time.time() - min(stamps) if stamps else float("inf")

    # ------------------------------------------------------------- actions

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One apt at a time on this directory: threads of this process and other processes."""
        with self._mutex:
            if self._depth == 0:
                from pib.flock import open_lock_file, take

                self.root.parent.mkdir(parents=True, exist_ok=True)
                self._fd = open_lock_file(self.root.parent / f".{self.root.name}.lock")
                take(self._fd)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    os.close(self._fd)

    def update(self, *, force: bool = False, log: Log | None = None) -> None:
        """Fetch the package lists (once a run, and only when stale unless forced)."""
        with self._exclusive():
            self._prepare()
            if self._updated or (not force and self._lists_age() < MAX_AGE):
                return
            log = log or self.log
            try:
                run(["apt-get", *self.options(), "-q", "update"], env=self._env(), log=log,
                    capture=log is None, reason=Reason.SOURCE,
                    what=f"apt-get update for {self.sources.describe()}")
            except PibError as exc:
                raise PibError(f"cannot read the Debian package lists of {self.sources.describe()}: "
                               f"{exc.message}", reason=Reason.SOURCE, detail=exc.detail,
                               hint="check the network or a proxy, or use `--offline` with a store that "
                                    "holds every pinned file") from None
            self._updated = True

    def versions(self, *names: str) -> dict[str, list[dict[str, str]]]:
        """Every stanza apt knows for each binary package, by name (one apt-cache call for all)."""
        self.update()
        out: dict[str, list[dict[str, str]]] = {n: [] for n in names}
        if not names:
            return out
        # An unknown name makes apt-cache exit 1, but every known one is still shown.
        res = run(["apt-cache", *self.options(), "show", *(f"{n}:{self.sources.arch}" for n in names)],
                  env=self._env(), capture=True, check=False, reason=Reason.SOURCE, what="apt-cache show")
        for st in parse_stanzas(res.stdout):
            if st.get("Package") in out:
                out[st["Package"]].append(st)
        return out

    def source_files(self, name: str, version: str) -> dict[str, str]:
        """{file name: sha256} of a source package version, from the Sources index."""
        self.update()
        res = run(["apt-cache", *self.options(), "showsrc", name], env=self._env(), capture=True, check=False,
                  reason=Reason.SOURCE, what=f"apt-cache showsrc {name}")
        for st in parse_stanzas(res.stdout):
            if st.get("Version") == version:
                files: dict[str, str] = {}
                for line in st.get("Checksums-Sha256", "").splitlines():
                    parts = line.split()
                    if len(parts) == 3:
                        files[parts[2]] = parts[0]
                return files
        return {}

    def download(self, specs: Sequence[str], dest: Path, *, source: bool = False, log: Log | None = None) -> None:
        """`apt-get download` (or `source --download-only`) into dest; refresh stale lists once."""
        verb = ["source", "--download-only"] if source else ["download"]
        log = log or self.log
        with self._exclusive():
            for attempt in (0, 1):
                self.update(force=attempt == 1, log=log)
                res = run(["apt-get", *self.options(), "-q", *verb, *specs], cwd=dest, env=self._env(),
                          log=log, capture=log is None, check=False, reason=Reason.SOURCE,
                          what=f"apt-get {' '.join(verb)}")
                if res.returncode == 0:
                    return
                if attempt == 0 and not self._updated:
                    continue  # lists older than the pin: fetch them and try again
                break
        raise NotInArchive(
            f"{', '.join(specs)}: not in {self.sources.describe()}",
            hint="the archive no longer offers this version and no store holds the pinned file; "
                 "add a store that mirrors it, or re-pin",
            detail=(log.tail() if log is not None else res.stdout[-2000:]).strip(),
        )


class HostApt:
    """The machine's own apt configuration, for locks that name no suites (older locks)."""

    def __init__(self, *, log: Log | None = None) -> None:
        self.log = log

    def download(self, specs: Sequence[str], dest: Path, *, source: bool = False, log: Log | None = None) -> None:
        verb = ["source", "--download-only"] if source else ["download"]
        log = log or self.log
        res = run(["apt-get", "-q", *verb, *specs], cwd=dest, env=minimal_env(), log=log,
                  capture=log is None, check=False, reason=Reason.SOURCE, what=f"apt-get {' '.join(verb)}")
        if res.returncode != 0:
            raise NotInArchive(f"{', '.join(specs)}: not in the host's apt sources",
                               hint="run `apt-get update`, or name the suite in the lock's [apt] section",
                               detail=(log.tail() if log is not None else res.stdout[-2000:]).strip())


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Debian control stanzas (`Key: value` with continuation lines) as dicts."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur, key = {}, ""
        elif line[0] in " \t" and key:
            cur[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            cur.setdefault(key, value.strip())
    if cur:
        out.append(cur)
    return out


def deb_file_name(name: str, version: str, arch: str) -> str:
    """The name `apt-get download` gives a package (epoch colon escaped as %3a)."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
