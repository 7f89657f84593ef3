"""SIGKILL the real CLI at many points; the next run must recover and give the same image.

A point is either a marker that a build script writes (and then waits on), or
a function inside pib: the CLI runs under a small launcher that, on the n-th
call of that function, writes a marker and sleeps. The test then stops and
SIGKILLs pib and every process under it (build scripts run in their own
session, so killing one process group would leave them behind), checks that
nothing half-made is in place (proto areas, outputs, store entries, CBE
prefixes), and runs pib again: it must succeed with the boot archive of a
clean build made with the same SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pib import cbe
from pib.artifacts.metadata import read_metadata
from pib.artifacts.signing import generate_keypair, load_public_key
from pib.cbe import CbeStateError
from pib.config.types import CbeSpec, HttpStoreSpec
from pib.fsutil import sha256_file
from pib.store import Store
from pib.store.backends import open_store
from pib.store.local import LocalStore
from tests.gitutil import make_repo
from tests.reliability import tally
from tests.test_cbe_pip import make_wheel

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
EPOCH = "1767225600"  # 2026-01-01

STEP = """\
step() {
  M="$PIB_WORKSPACE/marks"
  if [ -d "$M" ]; then
    echo $$ > "$M/$PIB_COMPONENT.$1"
    # A hold is taken by one build only (a later build passes), and released by removing .held.PID.
    if mv "$M/$PIB_COMPONENT.$1.hold" "$M/$PIB_COMPONENT.$1.held.$$" 2>/dev/null; then
      while [ -e "$M/$PIB_COMPONENT.$1.held.$$" ]; do sleep 0.02; done
    fi
  fi
}
"""

BASE_BUILD = "#!/bin/sh\nset -e\n" + STEP + """\
step start
mkdir -p "$DESTDIR/etc" "$DESTDIR/bin" "$DESTDIR/share"
printf 'root:x:0:0::/root:/bin/sh\\n' > "$DESTDIR/etc/passwd"
printf 'root::0:\\nsys::3:\\n' > "$DESTDIR/etc/group"
cp data "$DESTDIR/share/data"
step half
cp tool.sh "$DESTDIR/bin/tool"
chmod 755 "$DESTDIR/bin/tool"
cp data "$DESTDIR/share/data2"
step end
"""

BASE_MANIFEST = """\
d etc 0755 root sys
f etc/passwd 0644 root sys
f etc/group 0644 root sys
d bin 0755 root sys
f bin/tool 0755 root sys
d share 0755 root sys
f share/data 0644 root sys
f share/data2 0644 root sys
"""

EXTRA_BUILD = "#!/bin/sh\nset -e\n" + STEP + """\
step start
mkdir -p "$DESTDIR/usr/lib"
cp "$PIB_DEP_BASE/share/data" "$DESTDIR/usr/lib/libx.so"
step half
ln -s libx.so "$DESTDIR/usr/lib/libx.so.1"
step end
"""

EXTRA_MANIFEST = """\
d usr 0755 root sys
d usr/lib 0755 root sys
f usr/lib/libx.so 0755 root sys
s usr/lib/libx.so.1=libx.so
"""

# Runs the CLI with one function wrapped: on its n-th call (whose arguments
# contain `match`, if given) it writes the marker and waits to be killed, or,
# with PIB_KILL_GO set, until that file exists and then carries on; with
# PIB_KILL_ERRNO set it raises that OSError instead (an injected fault).
LAUNCHER = """\
import importlib, os, sys, threading, time
sys.path.insert(0, {repo!r})
spec = os.environ["PIB_KILL_AT"]
mark = os.environ["PIB_KILL_MARK"]
mod_name, attr, nth, match = (spec.split("|") + [""])[:4]
owner = importlib.import_module(mod_name)
parts = attr.split(".")
for p in parts[:-1]:
    owner = getattr(owner, p)
orig = getattr(owner, parts[-1])
count = [0]
guard = threading.Lock()
go = os.environ.get("PIB_KILL_GO")
fail = int(os.environ.get("PIB_KILL_ERRNO", "0"))  # raise OSError(errno) instead of waiting
def hook(*args, **kwargs):
    if not match or match in repr(args) + repr(kwargs):
        with guard:
            count[0] += 1
            hit = count[0] == int(nth)
        if hit and fail:
            open(mark, "w").close()
            raise OSError(fail, os.strerror(fail))
        if hit:
            with open(mark, "w") as fh:
                fh.write(str(os.getpid()))
            while not (go and os.path.exists(go)):
                time.sleep(0.05)
    return orig(*args, **kwargs)
setattr(owner, parts[-1], hook)
from pib.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def tree_digest(root: Path) -> str:
    """Names, kinds, modes and contents of a tree (what an image or a restore depends on)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(root)}\0{st.st_mode & 0o170777:o}\0".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class Kit:
    root: Path
    env: dict[str, str]
    launcher: Path
    wheels: Path
    wheel_sha: str
    refs: dict[str, tuple[str, dict[str, str]]]  # flavour -> (boot archive hash, proto digests)


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIB_", "XDG_", "CI"))}
    env.update({
        "HOME": str(root / "home"),
        "XDG_CACHE_HOME": str(root / "home" / "cache"),
        "XDG_CONFIG_HOME": str(root / "home" / "config"),
        "SOURCE_DATE_EPOCH": EPOCH,
        "PYTHONPATH": str(REPO),
    })
    return env


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("kill")
    rnd = random.Random(141)
    data = bytes(rnd.getrandbits(8) for _ in range(96 * 1024)) * 4
    base = make_repo(root / "repos" / "base", {"build.sh": BASE_BUILD, "manifest": BASE_MANIFEST,
                                               "tool.sh": "#!/bin/sh\necho tool\n"})
    (base / "data").write_bytes(data)
    subprocess.run(["git", "-C", str(base), "add", "data"], check=True)
    subprocess.run(["git", "-C", str(base), "commit", "-qm", "data"], check=True)
    make_repo(root / "repos" / "extra", {"build.sh": EXTRA_BUILD, "manifest": EXTRA_MANIFEST})
    launcher = root / "launch.py"
    launcher.write_text(LAUNCHER.format(repo=str(REPO)))
    generate_keypair(root / "key.priv", root / "key.pub")
    _, sha = make_wheel(root / "wheels", "tinytool", "1.0")
    k = Kit(root, _env(root), launcher, root / "wheels", sha, {})
    for flavour in ("plain", "cbe"):
        ws = new_ws(k, f"ref-{flavour}", cbe=flavour == "cbe")
        assert pib(k, ws, "configure").returncode == 0
        r = pib(k, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        k.refs[flavour] = (json.loads(r.stdout)["image"]["sha256"], protos(ws))
    return k


def protos(ws: Path) -> dict[str, str]:
    return {n: tree_digest(ws / f"proto.{n}") for n in ("base", "extra") if (ws / f"proto.{n}").is_dir()}


def new_ws(k: Kit, name: str, *, cbe: bool = False, store: str = "store", base_proto: str = "proto.base",
           top: str = "", remote: str = "") -> Path:
    ws = k.root / name
    ws.mkdir()
    (ws / "marks").mkdir()
    text = f"""\
{top}
[platform]
min_version = "1"

[local_store]
path = "{store}"

[components.base]
source = "{k.root}/repos/base"
build = ["./build.sh"]
manifest = "manifest"
prebuilt = true
proto = "{base_proto}"

[components.extra]
source = "{k.root}/repos/extra"
build = ["./build.sh"]
manifest = "manifest"
depends = ["base"]

[image]
compression = "zstd"
"""
    if remote:
        text += (f'\n[[store]]\nname = "remote"\ntype = "http"\nurl = "{remote}"\ntimeout = 10\n\n'
                 f'[trust]\npublic_keys = ["{k.root}/key.pub"]\nsigning_key = "{k.root}/key.priv"\n'
                 'publish = "always"\n')
    if cbe:
        text += '\n[cbe]\nname = "pytools"\nversion = "1"\nroot = "cbe-root"\nlock = "cbe.lock.toml"\n'
        (ws / "cbe.lock.toml").write_text(
            'format = 1\nname = "pytools"\nversion = "1"\nprovider = "pip"\n\n'
            f'[pip]\nfind_links = ["{k.wheels}"]\n\n'
            f'[[packages]]\nname = "tinytool"\nversion = "1.0"\nsha256 = "{k.wheel_sha}"\n')
    # The build scripts leave marks in the workspace and wait on hold files there (and the orphan test
    # needs a build command that outlives pib): unsandboxed. A sandboxed build dies with pib.
    text += '\n[sandbox]\nmode = "none"\n'
    (ws / "pib.toml").write_text(text)
    return ws


def pib(k: Kit, ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pib", "-C", str(ws), *args], capture_output=True, text=True,
                          env=k.env, stdin=subprocess.DEVNULL, timeout=300)


# --------------------------------------------------------------------------
# Killing


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(d.name))
    return out


def _tree(pid: int) -> list[int]:
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """Freeze pib and everything under it, then SIGKILL them all."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in _tree(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    proc.wait(timeout=30)


@dataclass(frozen=True)
class Point:
    name: str
    command: str  # build | configure
    script: str = ""  # COMPONENT.STEP of a build script
    func: str = ""  # module|attr|n[|match] for the launcher
    before: str = ""  # how to prepare the workspace: "" | built | clobbered | rebuild | published
    cbe: bool = False
    remote: bool = False  # publish to an nginx store (checked like the local one)
    witness: str = ""  # a glob (under the workspace) that shows the kill hit what the name says


POINTS = [
    # A component build.
    Point("build script started", "build", script="base.start"),
    Point("build script half-way through its output", "build", script="base.half", witness=".proto.base.pib-new/share/data"),
    Point("second component half-built, first finished", "build", script="extra.half", witness="proto.base/bin/tool"),
    Point("rebuild after a source change, half-way", "build", script="base.half", before="rebuild", witness="proto.base/bin/tool"),
    Point("built tree complete, not yet swapped in", "build", func="pib.build.runner|replace_dir|1", witness=".proto.base.pib-new/bin/tool"),
    Point("proto area swapped in, build not recorded", "build", func="pib.build.state|save|1", witness="proto.base/bin/tool"),
    # Packing into the local store.
    Point("packing a fresh build", "build", func="pib.artifacts.archive|pack|1"),
    Point("packed, not yet in the local store", "build", func="pib.store.local|LocalStore.put|1", witness=".proto.base.publish-*/*.tar.zst"),
    Point("local store: staging the archive", "build", func="pib.store.local|_link_or_copy|1"),
    # Restoring from the local store.
    Point("restore: reading metadata", "build", func="pib.artifacts.transfer|_restore_from|1", before="clobbered"),
    Point("restore: verified, about to extract", "build", func="pib.artifacts.archive|unpack|1", before="clobbered"),
    Point("restore: extracting", "build", func="pib.artifacts.tarread|_split|3", before="clobbered",
          witness=".proto.base.unpack-*/tree/*"),
    Point("restore: extracted, not yet swapped in", "build", func="pib.artifacts.archive|replace_dir|1",
          before="clobbered", witness=".proto.base.unpack-*/tree/bin/tool"),
    # Writing the image.
    Point("image: resolving manifests", "build", func="pib.image.write|resolve|1"),
    Point("image: boot archive opened", "build", func="pib.image.write|write_cpio|1"),
    Point("image: boot archive half-written", "build", func="pib.image.write|_HashingFile.write|1",
          witness="output/.pib-tmp-*/platform-*/boot_archive"),
    Point("image: writing the tarball", "build", func="pib.image.write|_write_tgz|1"),
    Point("image: complete, not yet renamed", "build", func="pib.image.write|replace_dir|1",
          witness="output/.pib-tmp-*.tgz"),
    Point("image: written, not yet recorded", "build", func="pib.image.step|_record_image|1",
          witness="output/platform-*/boot_archive"),
    Point("image: about to swap in a new image of the same stamp", "build --force",
          func="pib.fsutil|_exchange|1|platform-", before="built", witness="output/.pib-tmp-*/platform-*/boot_archive"),
    # Publishing to a remote store.
    Point("publish: signed, nothing uploaded", "build --publish", func="pib.store.http|HttpStore.put|1",
          remote=True),
    Point("publish: archive uploaded, metadata not", "build --publish", func="pib.store.http|HttpStore._send|2|'PUT'",
          remote=True, witness="remote:base/*.tar.zst"),
    Point("restore from the remote: downloading", "build", func="pib.store.http|HttpStore._stream_to|1",
          remote=True, before="published", witness=".proto.base.fetch-*"),
    # Installing the build environment.
    Point("CBE: pip packages installed, lock files not written", "configure", func="pib.cbe.providers.pip|write_files|1",
          cbe=True),
    Point("CBE: populated, install record not written", "configure", func="pib.cbe.install|_write_record|1",
          cbe=True),
    Point("CBE: recorded, not yet renamed into place", "configure", func="os|rename|1|@", cbe=True,
          witness="cbe-root/.tmp/1@*/prefix/.pib/install.json"),
]


def _prepare(k: Kit, ws: Path, before: str) -> None:
    if not before:
        return
    assert pib(k, ws, "build", *(["--publish"] if before == "published" else [])).returncode == 0
    if before == "published":
        # Only the remote has base now.
        assert pib(k, ws, "clobber", "base").returncode == 0
        shutil.rmtree(ws / "store")
    elif before == "clobbered":
        assert pib(k, ws, "clobber", "base").returncode == 0
    elif before == "rebuild":
        (ws / "projects" / "base" / "tool.sh").write_text("#!/bin/sh\necho changed\n")


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"pib exited ({proc.returncode}) before reaching the point: {err[-2000:]}")
        if time.monotonic() > end:
            kill_tree(proc)
            raise AssertionError("the point was never reached")
        time.sleep(0.01)


def _machine_key(k: Kit) -> Path:
    return Path(k.env["XDG_CONFIG_HOME"]) / "pib" / "machine.pub"


def check_store(k: Kit, store_dir: Path | str) -> int:
    """Every entry the local store (or the remote at a URL) would serve verifies; returns how many."""
    store: Store
    if isinstance(store_dir, str):
        store = open_store(HttpStoreSpec("remote", store_dir))
        store_dir = k.root / "remote-check"
        keys = [load_public_key(k.root / "key.pub")]
    elif not store_dir.exists():
        return 0
    else:
        store = LocalStore(store_dir)
        # Local builds are signed by the machine key; entries restored from the remote keep its signature.
        keys = [load_public_key(_machine_key(k)), load_public_key(k.root / "key.pub")]
    n = 0
    for e in store.list():
        meta = read_metadata(store.get_meta(e.component, e.key), keys, component=e.component, key=e.key)
        got = store_dir / ".check"
        got.mkdir(parents=True, exist_ok=True)
        # A remote answers only for entries whose metadata exists (it is written last).
        assert store.has(e.component, e.key)
        archive = got / "archive"
        store.get_archive(e.component, e.key, meta.archive_sha256, archive, meta.archive_size)
        assert sha256_file(archive) == (meta.archive_sha256, meta.archive_size)
        archive.unlink()
        n += 1
    return n


def check_nothing_half(k: Kit, ws: Path, flavour: str, remote: str = "") -> None:
    ref_hash, ref_protos = k.refs[flavour]
    for name, digest in protos(ws).items():
        assert digest == ref_protos[name], f"proto.{name} is in place but not a complete build"
    for name in ("base", "extra"):
        if (ws / ".pib" / "state" / f"{name}.json").exists():
            assert (ws / f"proto.{name}").is_dir(), f"{name} recorded as built without its proto area"
    out = ws / "output"
    for d in out.glob("platform-*"):
        if d.is_symlink():
            if d.exists():
                assert (d / "boot_archive.hash").is_file()
        elif d.is_dir():
            assert (d / "boot_archive.hash").read_text().strip() == ref_hash
            assert sha256_file(d / "boot_archive")[0] == ref_hash
        elif d.name.endswith(".tgz"):
            with tarfile.open(d) as tf:
                assert any(m.name.endswith("/boot_archive") for m in tf.getmembers())
    check_store(k, ws / "store")
    if remote:
        check_store(k, remote)
    if flavour == "cbe":
        spec = CbeSpec("pytools", "1", ws / "cbe-root", ws / "cbe.lock.toml")
        # Missing or half-installed is fine (configure replaces it); "ok" with wrong contents is not.
        with contextlib.suppress(CbeStateError):
            cbe.verify_full(spec)


def check_recovered(k: Kit, ws: Path, flavour: str, remote: str = "") -> None:
    if flavour == "cbe":
        r = pib(k, ws, "configure")
        assert r.returncode == 0, r.stderr
        cbe.verify_full(CbeSpec("pytools", "1", ws / "cbe-root", ws / "cbe.lock.toml"))
        assert not [p for p in (ws / "cbe-root" / ".tmp").iterdir() if "@" in p.name.split("trash")[0]]
    r = pib(k, ws, "build", "--json")
    assert r.returncode == 0, r.stderr
    ref_hash, ref_protos = k.refs[flavour]
    assert json.loads(r.stdout)["image"]["sha256"] == ref_hash
    assert protos(ws) == ref_protos
    leftovers = [p.name for p in ws.iterdir() if p.name.startswith(".proto.")]
    assert not leftovers, f"temporaries left beside the proto areas: {leftovers}"
    assert not list((ws / "output").glob(".pib-tmp-*"))
    assert check_store(k, ws / "store") >= 1
    if remote:
        check_store(k, remote)


@pytest.mark.parametrize("point", POINTS, ids=[p.name for p in POINTS])
def test_kill_then_rebuild(kit: Kit, point: Point, request: pytest.FixtureRequest) -> None:
    flavour = "cbe" if point.cbe else "plain"
    name = "ws-" + hashlib.sha1(point.name.encode()).hexdigest()[:10]
    remote = f"{request.getfixturevalue('nginx').url}/kill-{os.getpid()}-{name}" if point.remote else ""
    with tally("kill", point.name):
        ws = new_ws(kit, name, cbe=point.cbe, remote=remote)
        if point.command.startswith("build"):
            assert pib(kit, ws, "configure").returncode == 0
        _prepare(kit, ws, point.before)
        env = dict(kit.env)
        if point.script:
            (ws / "marks" / f"{point.script}.hold").touch()
            mark = ws / "marks" / point.script
            argv = [sys.executable, "-m", "pib"]
        else:
            mark = ws / "marks" / "func"
            env.update(PIB_KILL_AT=point.func, PIB_KILL_MARK=str(mark))
            argv = [sys.executable, str(kit.launcher)]
        proc = subprocess.Popen([*argv, "-C", str(ws), *point.command.split()], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _wait_for(mark, proc)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
            for hold in [*(ws / "marks").glob("*.hold"), *(ws / "marks").glob("*.held.*")]:
                hold.unlink()
        if point.witness.startswith("remote:"):
            served = Path(request.getfixturevalue("nginx").root) / remote.rsplit("/", 1)[1]
            assert list(served.glob(point.witness[7:])), "killed, but the archive was not uploaded"
            assert not list(served.glob("base/*.json"))
        elif point.witness:
            assert list(ws.glob(point.witness)), f"killed, but not at the point: nothing matches {point.witness}"
        if point.before == "rebuild":
            (ws / "projects" / "base" / "tool.sh").write_text("#!/bin/sh\necho tool\n")
        check_nothing_half(kit, ws, flavour, remote)
        check_recovered(kit, ws, flavour, remote)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped; only its exit status is left


def test_build_command_orphaned_by_a_killed_pib_is_stopped(kit: Kit) -> None:
    """Only pib is killed (its build command, in a session of its own, lives on): the next build stops it."""
    with tally("kill", "only pib killed, its build command orphaned"):
        ws = new_ws(kit, "ws-orphan")
        assert pib(kit, ws, "configure").returncode == 0
        (ws / "marks" / "base.half.hold").touch()
        proc = subprocess.Popen([sys.executable, "-m", "pib", "-C", str(ws), "build"], env=kit.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            _wait_for(ws / "marks" / "base.half", proc)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        orphan = int((ws / "marks" / "base.half").read_text())
        assert _running(orphan)
        try:
            r = pib(kit, ws, "build", "--json")
            assert r.returncode == 0, r.stderr
            assert not _running(orphan), "the orphaned build command still runs"
            assert json.loads(r.stdout)["image"]["sha256"] == kit.refs["plain"][0]
            assert protos(ws) == kit.refs["plain"][1]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan, signal.SIGKILL)
            for hold in (ws / "marks").glob("*.held.*"):
                hold.unlink()


def _plant_leftover(ws: Path, case: str) -> Path:
    """What a run SIGKILLed at that point leaves behind (git killed inside `git add`, a kill during a build
    or an image step), planted directly: the kill itself cannot be timed inside git."""
    index = ws / ".pib" / "index" / "base"
    if case == "git lock of the private index":
        (index.with_name("base.lock")).write_bytes(b"")
        return index.with_name("base.lock")
    if case == "truncated private index":
        data = index.read_bytes()
        index.write_bytes(data[: len(data) // 2])
        return index
    if case == "torn line in the head-tree memo":
        memo = index.with_name("base.trees")
        commit, tree = memo.read_text().split()[:2]
        memo.write_text(f"{commit} {tree[:11]}")  # as an append cut short by a kill
        return memo
    if case == "half-built proto area of an up-to-date component":
        (ws / ".proto.extra.pib-new" / "usr").mkdir(parents=True)
        return ws / ".proto.extra.pib-new"
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = ws / "output" / f".pib-tmp-{dead.pid}-image"
    (leftover / "stage").mkdir(parents=True)
    return leftover


LEFTOVERS = ["git lock of the private index", "truncated private index", "torn line in the head-tree memo",
             "half-built proto area of an up-to-date component", "image temporary in output/"]


@pytest.mark.parametrize("case", LEFTOVERS)
def test_leftovers_of_a_killed_run_never_block_later_builds(kit: Kit, case: str) -> None:
    with tally("kill", f"leftover of a killed run: {case}"):
        ws = new_ws(kit, "left-" + "".join(c if c.isalnum() else "-" for c in case)[:30])
        assert pib(kit, ws, "configure").returncode == 0
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        leftover = _plant_leftover(ws, case)
        st = pib(kit, ws, "status", "--json")
        assert st.returncode == 0, st.stderr
        assert all(not c["dirty"] for c in json.loads(st.stdout)["components"]), st.stdout
        r = pib(kit, ws, "build", "--json")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert {c["component"]: c["action"] for c in data["components"]} == {"base": "up-to-date",
                                                                              "extra": "up-to-date"}
        if case.startswith(("half-built", "image temporary")):
            assert not leftover.exists()
        assert protos(ws) == kit.refs["plain"][1]
