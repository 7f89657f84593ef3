"""Component builds in a bubblewrap sandbox: a build sees its declared inputs and nothing else.

`Sandbox.wrap` turns a build command into a bwrap command line. Inside, in fresh
mount, PID, IPC, UTS, cgroup and network namespaces with every capability
dropped, only these exist:

  read-only   the system directories (/usr, the /bin and /lib* links or
              directories, cbe.system_path, the dynamic linker's cache and
              /etc/alternatives), a minimal /etc/passwd, group and hosts, the
              CBE prefix, the component's checkout (its .git always read-only; what
              its key does not cover, ignored files and nested repositories, hidden),
              the proto areas of its dependencies, its key files, its declared
              sources ($PIB_SOURCES) and sandbox.ro_paths, each at its real path
  writable    DESTDIR and PIB_BUILD_DIR (and, for a component that declares
              writable_source = true, a copy of what the key of its checkout
              covers, in the checkout's place; its .git the real one, read-only)
  fresh       HOME, /tmp and /var/tmp (empty tmpfs), /dev (null, zero, random,
              tty, pts...), /proc of the build's own PID namespace

The environment is exactly the one pib.build.env made (--clearenv, then each
variable). A component that declares network = true shares the host's network
and sees its resolver and CA files; any other has only its own loopback.

Where bubblewrap cannot run (not installed, no user namespaces, not Linux),
mode "bwrap" says so once per run and builds without isolation; mode
"required" makes that an error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pib.build.checkout import copy_content, unkeyed_paths
from pib.config.types import ComponentConfig, Config
from pib.errors import ConfigError, PibError, Reason, local_error
from pib.fsutil import remove_tree, write_atomic
from pib.run import BASE_PATH, minimal_env, run

if TYPE_CHECKING:
    from pib.build.plan import Plan

# What the programs on a system PATH need beside their own directories.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
# What a build with network = true needs to resolve names and check certificates.
NETWORK_FILES = ("/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf", "/etc/ssl",
                 "/etc/ca-certificates", "/etc/pki")
HOSTNAME = "pib-build"
MAX_HIDDEN = 2000  # paths of a checkout hidden from its build, each a mount


def key_fields(cfg: Config, comp: ComponentConfig) -> dict[str, Any]:
    """What the key says about a build's isolation: nothing for the default (sandboxed, no network),
    so keys of sandboxed builds are the keys builds always had."""
    out: dict[str, Any] = {}
    if cfg.sandbox.mode == "none":
        out["sandbox"] = "none"
    if comp.network:
        out["network"] = True
    return out


class Sandbox:
    """The isolation of one run's builds; bubblewrap is looked for once, at the first build."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self._checked = False
        self._bwrap: str | None = None
        self._etc_written = False

    def wrap(self, plan: Plan, argv: Sequence[str], env: Mapping[str, str], *,
             destdir: Path, source: Path | None = None) -> tuple[list[str], dict[str, str]]:
        """The command and environment that run `argv` for `plan` (unchanged without a sandbox).

        `source`: the copy of the checkout's content (`source_copy`) the build sees, writable, in its place.
        """
        bwrap = self.bwrap()
        if bwrap is None:
            return list(argv), dict(env)
        etc = self._etc(env)
        comp = plan.comp
        hidden = () if source is not None else hidden_paths(comp.checkout)
        return [bwrap, *bwrap_args(self.cfg, comp, env, destdir=destdir, etc=etc, hidden=hidden, source=source),
                "--", *argv], dict(env)

    @contextlib.contextmanager
    def source_copy(self, comp: ComponentConfig) -> Iterator[Path | None]:
        """For a sandboxed build that writes into its checkout: a copy of exactly what its key covers, removed
        afterwards. Bound writable where the checkout is, it keeps what no key covers (ignored files, its own
        earlier products) out of the build, as hiding does for a read-only checkout. None otherwise."""
        if not comp.writable_source or self.bwrap() is None:
            yield None
            return
        copy = self.cfg.workspace.state_dir / "source" / comp.name
        try:
            copy_content(comp.checkout, copy)
        except OSError as exc:
            remove_tree(copy)
            raise local_error(copy, exc, f"copy the checkout of {comp.name} to") from None
        try:
            yield copy
        finally:
            remove_tree(copy)

    def bwrap(self) -> str | None:
        """The bubblewrap to run builds with, None to run them unisolated."""
        with self._lock:
            if not self._checked:
                self._bwrap = self._find()
                self._checked = True
            return self._bwrap

    def _find(self) -> str | None:
        spec = self.cfg.sandbox
        if spec.mode == "none":
            return None
        program, why = probe(spec.bwrap)
        if program is not None:
            for p in spec.ro_paths:
                if not p.exists():
                    raise ConfigError(f"sandbox.ro_paths entry {p} does not exist",
                                      where=self.cfg.sources.get("sandbox.ro_paths", spec.where),
                                      hint="create it, or remove it from sandbox.ro_paths")
            return program
        if spec.mode == "required":
            raise ConfigError(f"builds must be sandboxed (sandbox.mode = \"required\") but {why}", where=spec.where,
                              hint="install bubblewrap (Debian: apt-get install bubblewrap) and allow user "
                                   "namespaces, or set sandbox.mode = \"bwrap\" to build unisolated where it "
                                   "cannot run")
        self.warnings.append(f"builds are not sandboxed: {why}; they can read anything this user can "
                             "(set sandbox.mode = \"required\" to refuse, or \"none\" to silence this)")
        return None

    def _etc(self, env: Mapping[str, str]) -> Path:
        """Minimal passwd, group and hosts for the build's user (written once per run)."""
        etc = self.cfg.workspace.state_dir / "sandbox"
        with self._lock:
            if not self._etc_written:
                try:
                    write_files(etc, home=env.get("HOME", "/"))
                except OSError as exc:
                    raise local_error(etc, exc, "write the sandbox's passwd, group and hosts in") from None
                self._etc_written = True
        return etc


def probe(program: str) -> tuple[str | None, str]:
    """(the bubblewrap program, "") if it can make a sandbox here, else (None, why not)."""
    if not sys.platform.startswith("linux"):
        return None, f"bubblewrap needs Linux (this is {sys.platform})"
    found = shutil.which(program, path=os.environ.get("PATH") or BASE_PATH) if "/" not in program else (
        program if os.access(program, os.X_OK) else None)
    if found is None:
        return None, f"{program} is not installed (or not on PATH)"
    true = shutil.which("true", path=BASE_PATH) or "/bin/true"
    mounts = _Mounts()  # what every build has, and no more (binding all of / is slow where mounts are many)
    for d in SYSTEM_DIRS:
        mounts.system(Path(d))
    res = run([found, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", *mounts.args,
               "--proc", "/proc", "--dev", "/dev", "--", true],
              env=minimal_env(), check=False, timeout=30, what="bubblewrap check")
    if res.returncode != 0:
        msg = res.stdout.strip().splitlines()[-1:] or [f"exit code {res.returncode}"]  # its stderr
        return None, f"{found} cannot make a sandbox here ({msg[0]}; are user namespaces disabled?)"
    return found, ""


def write_files(etc: Path, *, home: str) -> None:
    """passwd, group and hosts naming only the build's user, root and nobody."""
    import pwd  # only where builds are sandboxed

    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "build"
    users = {0: "root", 65534: "nobody", uid: name}
    groups = {0: "root", 65534: "nogroup", gid: name}
    passwd = "".join(f"{n}:x:{u}:{gid if u == uid else u}:{n}:{home if u == uid else '/'}:/bin/sh\n"
                     for u, n in sorted(users.items()))
    group = "".join(f"{n}:x:{g}:\n" for g, n in sorted(groups.items()))
    etc.mkdir(parents=True, exist_ok=True)
    write_atomic(etc / "passwd", passwd)
    write_atomic(etc / "group", group)
    write_atomic(etc / "hosts", f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost\n")


def hidden_paths(checkout: Path) -> list[Path]:
    """What of a checkout a build must not see: what its key does not cover (ignored files, nested
    repositories). Were they visible, a local file or a stale product of an earlier build could change
    the bytes of an artifact without changing its key."""
    unkeyed = unkeyed_paths(checkout)
    if len(unkeyed) > MAX_HIDDEN:
        raise PibError(f"{checkout} holds {len(unkeyed)} paths no key covers (ignored by a .gitignore, or "
                       f"nested repositories), e.g. {unkeyed[0]}; a sandboxed build may not see them, and "
                       f"pib hides at most {MAX_HIDDEN}", reason=Reason.SOURCE,
                       hint=f"remove them (git -C {checkout} clean -ndX lists the ignored ones), or build out of "
                            "the checkout")
    out = []
    for rel in unkeyed:
        path = checkout / rel.rstrip("/")
        if not path.is_symlink():  # a link's target is what a build reaches: mounted or not, on its own
            out.append(path)
    return out


def bwrap_args(cfg: Config, comp: ComponentConfig, env: Mapping[str, str], *, destdir: Path,
               etc: Path, hidden: Sequence[Path] = (), source: Path | None = None) -> list[str]:
    """bwrap's options for one build (everything before `--` and the command); `source`: see Sandbox.wrap."""
    args = ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--hostname", HOSTNAME]
    if comp.network:
        args.append("--share-net")
    mounts = _Mounts()
    # Fresh temporary directories first: a workspace under /tmp is bound on top of them.
    mounts.tmpfs(Path("/tmp"))
    mounts.tmpfs(Path("/var/tmp"))
    for d in SYSTEM_DIRS:
        mounts.system(Path(d))
    for name in (*(cfg.cbe.system_path if cfg.cbe is not None else BASE_PATH.split(":")), *SYSTEM_FILES):
        mounts.system(Path(name))
    if comp.network:
        for name in NETWORK_FILES:
            mounts.system(Path(name))
        mounts.system(Path("/etc/hosts"))
    else:
        mounts.ro(etc / "hosts", Path("/etc/hosts"))
    mounts.ro(etc / "passwd", Path("/etc/passwd"))
    mounts.ro(etc / "group", Path("/etc/group"))
    if env.get("PIB_CBE_PREFIX"):
        mounts.ro(Path(env["PIB_CBE_PREFIX"]))
    # Declared inputs, each at its real path.
    mounts.bind(comp.checkout, writable=comp.writable_source, src=source)
    if comp.writable_source and (comp.checkout / ".git").exists():
        mounts.ro(comp.checkout / ".git")  # git runs hooks and fsmonitor from there, outside the sandbox
    # What the key does not cover: an empty directory or file in its place (not where a declared input
    # or a writable place is mounted later: that one is bound on its own).
    later = [destdir, *(cfg.component(d).proto for d in comp.depends), *comp.key_files, *cfg.sandbox.ro_paths,
             *(Path(env[k]) for k in ("PIB_BUILD_DIR", "PIB_SOURCES", "HOME") if Path(env.get(k) or "-").is_absolute())]
    for path in hidden:
        if any(m == path or m.is_relative_to(path) for m in later):
            continue
        if path.is_dir():
            mounts.args += ["--tmpfs", str(path), "--remount-ro", str(path)]
        else:
            mounts.args += ["--ro-bind", "/dev/null", str(path)]
    for d in comp.depends:
        mounts.ro(cfg.component(d).proto)
    for key_file in comp.key_files:
        mounts.ro(key_file)
    if env.get("PIB_SOURCES") and Path(env["PIB_SOURCES"]).is_absolute() and Path(env["PIB_SOURCES"]).exists():
        mounts.ro(Path(env["PIB_SOURCES"]))
    for p in cfg.sandbox.ro_paths:
        mounts.ro(p)
    # Secrets that happen to lie inside something bound are hidden behind an empty file.
    for secret in _secrets(cfg):
        if mounts.covers(secret) and secret.exists():
            mounts.ro(Path("/dev/null"), secret)
    # Writable and fresh places last, so they sit on top of anything read-only around them.
    mounts.bind(destdir, writable=True)
    if env.get("PIB_BUILD_DIR"):
        mounts.bind(Path(env["PIB_BUILD_DIR"]), writable=True)
    if env.get("HOME") and Path(env["HOME"]).is_absolute():
        mounts.tmpfs(Path(env["HOME"]))
    args += mounts.args
    # The root, which holds only the mount points made above, read-only last.
    args += ["--dev", "/dev", "--proc", "/proc", "--remount-ro", "/", "--chdir", str(comp.checkout), "--clearenv"]
    for k in sorted(env):
        args += ["--setenv", k, env[k]]
    return args


def _secrets(cfg: Config) -> Iterable[Path]:
    from pib.artifacts.policy import machine_key_paths  # where the machine's signing key lives

    if cfg.trust.signing_key is not None:
        yield cfg.trust.signing_key
    yield machine_key_paths()[0]


class _Mounts:
    """bwrap mount options in order; `bound` are the host paths visible inside."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self.bound: list[Path] = []
        self._fresh: list[Path] = []  # tmpfs mounts
        self._made: set[Path] = set()

    def _parents(self, dest: Path) -> None:
        """Make the directories leading to a mount inside a tmpfs read-only (0555), so that a workspace
        under /tmp does not look writable to a build."""
        top = next((t for t in self._fresh if dest.is_relative_to(t) and dest != t), None)
        if top is None:
            return
        for d in reversed(dest.parents):
            if d.is_relative_to(top) and d != top and d not in self._made:
                self.args += ["--perms", "0555", "--dir", str(d)]
                self._made.add(d)

    def covers(self, path: Path) -> bool:
        return any(path == b or path.is_relative_to(b) for b in self.bound)

    def system(self, path: Path) -> None:
        """A host directory or file at its own path; a symbolic link stays a link (/bin -> usr/bin)."""
        if self.covers(path) or not os.path.lexists(path):
            return
        if path.is_symlink():
            target = os.readlink(path)
            self.args += ["--symlink", target, str(path)]
            self.bound.append(path)
            self.system(Path(os.path.normpath(path.parent / target)))
        else:
            self.ro(path)

    def ro(self, src: Path, dest: Path | None = None) -> None:
        self._parents(dest or src)
        self.args += ["--ro-bind", str(src), str(dest or src)]
        self.bound.append(dest or src)

    def bind(self, path: Path, *, writable: bool, src: Path | None = None) -> None:
        self._parents(path)
        self.args += ["--bind" if writable else "--ro-bind", str(src or path), str(path)]
        self.bound.append(path)

    def tmpfs(self, path: Path) -> None:
        self._parents(path)
        self.args += ["--tmpfs", str(path)]  # empty: nothing of the host shows through
        self._fresh.append(path)
