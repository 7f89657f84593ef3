"""pib beside BuildStream and Nix: the same 100 components, the same files, the same build step.

Run: .venv/bin/python bench/peers.py [N]   (N components, default 100; the peers come from
bench/setup-peers: Debian's buildstream 1.6 and nix-bin)

One tree of sources serves all three tools: N directories of 200 small files
(src/cI, components in a binary tree of dependencies: cI depends on c((I-1)/2)),
and one trivial build step, `mkdir -p OUT/bin && cat src0/f0.c > OUT/bin/out`.

- pib: a workspace of `path` components (the directories in place), prebuilt = true,
  a local store, and an HTTP store (nginx on loopback) it publishes to.
- BuildStream 1.6.8 (Debian): a project whose elements are `manual` elements with a
  `local` source each, building in its bubblewrap sandbox on a base of busybox-static
  (an `import` element: the sandbox holds only an element's dependencies); a `stack`
  element depends on all of them. Its artifact cache is a directory of this run; its
  remote cache is the artifact server shipped in the same package
  (buildstream._artifactcache.casserver; Debian ships the module but not its
  `bst-artifact-server` script), started with its listening address forced to 127.0.0.1.
- Nix 2.8 (Debian's nix-bin, single user, the local store /nix/store, no nixpkgs: there
  is no network here): one `builtins.derivation` per component, builder /bin/sh from the
  host with the sandbox off (`sandbox = false`, `build-users-group =` empty), sources by
  `builtins.path`; its local cache is a `file://` binary cache made with `nix copy`, its
  remote cache the same directory served by nginx on loopback (unsigned:
  `require-sigs = false`).

Phases, medians of several runs:
(a) no-op: the tool's build command with nothing changed;
(b) one change: one file of a leaf component edited, build (one component rebuilt);
(c) all N outputs from the tool's local cache into a fresh workspace (pib: a new
    workspace, the local store warm; BuildStream: `bst build` + `bst checkout` of the
    stack with the artifact cache warm; Nix: the N outputs deleted from /nix/store,
    `nix-build` substituting them from the file:// cache);
(d) the same from the remote cache over loopback (the local cache empty).
"""

from __future__ import annotations

import ast
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import write_section
from bench.scale import make_repo, pib_cmd

FILES = 200
STEP = "mkdir -p {out}/bin && cat src0/f0.c > {out}/bin/out"
PHASES = ("a", "b", "c", "d")
LABELS = {
    "a": "(a) no-op, nothing changed",
    "b": "(b) one file of a leaf component changed",
    "c": "(c) fresh workspace, all outputs from the local cache",
    "d": "(d) fresh workspace, all outputs from the remote cache (loopback)",
}


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout


LAST_CPU = [0.0]  # user+sys seconds of the processes the last timed call started (and waited for)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(fn: Callable[[], object]) -> float:
    c0 = _children_cpu()
    t0 = time.perf_counter()
    fn()
    took = time.perf_counter() - t0
    LAST_CPU[0] = _children_cpu() - c0
    return took


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deps_of(i: int) -> list[int]:
    return [(i - 1) // 2] if i else []


class Tree:
    """The shared sources and the edit of phase (b)."""

    def __init__(self, root: Path, n: int, *, git: bool) -> None:
        self.root, self.n = root, n
        for i in range(n):
            make_repo(root / "src" / f"c{i}", FILES, i)
            if not git:  # the peers see the files alone, as pib's key does
                shutil.rmtree(root / "src" / f"c{i}" / ".git")
        self.edits = 0

    def edit_leaf(self, *, commit: bool = False) -> None:
        self.edits += 1
        leaf = self.root / "src" / f"c{self.n - 1}"
        # Unique across runs too: the Nix store outlives this benchmark's directory.
        (leaf / "src0" / "f1.c").write_text(f"int edit = {self.edits}; /* {time.time_ns()} */\n")
        if commit:  # pib keeps and publishes artifacts of committed trees only
            run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "-C", str(leaf), "commit", "-qam", "edit"])


# --------------------------------------------------------------------------- pib


class Pib:
    name = "pib"

    def __init__(self, tree: Tree, tmp: Path, http_url: str) -> None:
        from pib.artifacts.signing import generate_keypair

        self.tree, self.tmp, self.http = tree, tmp, http_url
        self.keys = tmp / "keys"
        self.keys.mkdir()
        generate_keypair(self.keys / "k.key", self.keys / "k.pub")
        self.count = 0
        self.last_change = 0.0
        self.ws = self.workspace(tmp / "store", remote=True, publish=True)
        self.pib("configure")
        self.pib("build", "--publish")

    def workspace(self, store: Path, *, remote: bool, publish: bool = False) -> Path:
        self.count += 1
        ws = self.tmp / f"ws{self.count}"
        ws.mkdir()
        body = ['[platform]\nmin_version = "1"\n']
        for i in range(self.tree.n):
            deps = "".join(f'depends = ["c{d}"]\n' for d in deps_of(i))
            body.append(f'[components.c{i}]\npath = "{self.tree.root}/src/c{i}"\nbuild = ["./build.sh"]\n'
                        f'prebuilt = true\n{deps}')
        (ws / "pib.toml").write_text("\n".join(body))
        local = f'[local_store]\npath = "{store}"\n\n[trust]\npublic_keys = ["{self.keys}/k.pub"]\n'
        if publish:
            local += f'signing_key = "{self.keys}/k.key"\npublish = "always"\n'
        if remote:
            local += f'\n[[store]]\nname = "nginx"\ntype = "http"\nurl = "{self.http}/pib"\n'
        (ws / "pib.local.toml").write_text(local)
        return ws

    def pib(self, *args: str, ws: Path | None = None) -> dict[str, object]:
        out = run([*pib_cmd(), "-C", str(ws or self.ws), *args, "--json"])
        return json.loads(out) if out.strip() else {}

    def actions(self, out: dict) -> dict[str, int]:  # type: ignore[type-arg]
        counts: dict[str, int] = {}
        for c in out["components"]:
            counts[c["action"]] = counts.get(c["action"], 0) + 1
        return counts

    def noop(self) -> None:
        assert self.actions(self.pib("build")) == {"up-to-date": self.tree.n}

    def change(self) -> None:
        self.tree.edit_leaf(commit=True)  # not timed: the build is
        t0 = time.perf_counter()
        got = self.actions(self.pib("build"))
        self.last_change = time.perf_counter() - t0
        assert got == {"built": 1, "up-to-date": self.tree.n - 1}, got

    def fresh(self, remote: bool) -> Callable[[], None]:
        store = self.tmp / f"store-empty-{self.count + 1}" if remote else self.tmp / "store"
        if remote:
            self.pib("publish")  # what phase (b) built
        ws = self.workspace(store, remote=remote)
        run([*pib_cmd(), "-C", str(ws), "configure"])

        def go() -> None:
            out = self.pib("build", ws=ws)
            assert self.actions(out) == {"restored": self.tree.n}, self.actions(out)
        return go


# --------------------------------------------------------------------------- Nix


class Nix:
    name = "Nix 2.8 (nix-build)"

    def __init__(self, tree: Tree, tmp: Path, http_root: Path, http_url: str) -> None:
        self.tree, self.tmp = tree, tmp
        conf = tmp / "nix-conf"
        conf.mkdir()
        (conf / "nix.conf").write_text("build-users-group =\nsandbox = false\nsubstituters =\n"
                                       "require-sigs = false\nexperimental-features = nix-command\n")
        self.env = {**os.environ, "NIX_CONF_DIR": str(conf)}
        self.expr = tmp / "nix" / "default.nix"
        self.expr.parent.mkdir()
        drvs = []
        for i in range(tree.n):
            deps = " ".join(f"c{d}" for d in deps_of(i))
            drvs.append(f'  c{i} = mk "c{i}" [ {deps} ];')
        self.expr.write_text(
            "let\n  src = " + str(tree.root / "src") + ";\n"
            "  mk = name: deps: derivation {\n"
            "    inherit name deps;\n"
            "    system = builtins.currentSystem;\n"
            '    builder = "/bin/sh";\n'
            '    PATH = "/usr/bin:/bin";\n'
            '    src = builtins.path { path = src + "/${name}"; name = "${name}-src"; };\n'
            f'    args = [ "-c" "cd $src && {STEP.format(out="$out")}" ];\n'
            "  };\nin rec {\n" + "\n".join(drvs) + "\n}\n")
        self.cache = http_root / "nixcache"
        self.cache_url = f"{http_url}/nixcache"
        self.outputs = self.build()
        run(["nix", "copy", "--to", f"file://{self.cache}", *self.outputs], env=self.env)

    def build(self, *opts: str) -> list[str]:
        return run(["nix-build", "--no-out-link", *opts, str(self.expr)], env=self.env).split()

    def noop(self) -> None:
        out = subprocess.run(["nix-build", "--no-out-link", str(self.expr)], env=self.env, capture_output=True,
                             text=True, check=True)
        assert "will be built" not in out.stderr, out.stderr[-500:]

    def change(self) -> None:
        self.tree.edit_leaf()
        out = subprocess.run(["nix-build", "--no-out-link", str(self.expr)], env=self.env, capture_output=True,
                             text=True, check=True)
        assert "these 1 derivations will be built" in out.stderr or "this derivation will be built" in out.stderr, \
            out.stderr[-800:]

    def fresh(self, remote: bool) -> Callable[[], None]:
        self.outputs = self.build()  # the current outputs (phase b changed one)
        run(["nix", "copy", "--to", f"file://{self.cache}", *self.outputs], env=self.env)
        run(["nix-store", "--delete", *self.outputs], env=self.env)
        url = self.cache_url if remote else f"file://{self.cache}"

        def go() -> None:
            out = subprocess.run(["nix-build", "--no-out-link", "--option", "substituters", url, str(self.expr)],
                                 env=self.env, capture_output=True, text=True, check=True)
            assert "will be built" not in out.stderr and "will be fetched" in out.stderr, out.stderr[-800:]
        return go


# --------------------------------------------------------------------------- BuildStream


class BuildStream:
    name = "BuildStream 1.6.8 (bst)"

    def __init__(self, tree: Tree, tmp: Path) -> None:
        self.tree, self.tmp = tree, tmp
        proj = tree.root  # local sources must lie inside the project
        (proj / "elements").mkdir()
        (proj / "base" / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", proj / "base" / "bin" / "busybox")
        for tool in ("sh", "mkdir", "cat"):
            (proj / "base" / "bin" / tool).symlink_to("busybox")
        (proj / "project.conf").write_text("name: peers\nelement-path: elements\n")
        (proj / "elements" / "base.bst").write_text("kind: import\nsources:\n- kind: local\n  path: base\n")
        for i in range(tree.n):
            deps = "".join(f"- c{d}.bst\n" for d in deps_of(i))
            (proj / "elements" / f"c{i}.bst").write_text(
                "kind: manual\nbuild-depends:\n- base.bst\n" + (f"depends:\n{deps}" if deps else "") +
                f"sources:\n- kind: local\n  path: src/c{i}\n"
                "variables:\n  strip-binaries: ''\n"
                f"config:\n  install-commands:\n  - {STEP.format(out='%{install-root}')}\n")
        (proj / "elements" / "all.bst").write_text(
            "kind: stack\ndepends:\n" + "".join(f"- c{i}.bst\n" for i in range(tree.n)))
        self.proj = proj
        self.server: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.conf = self.config(tmp / "bst-artifacts", remote=False)
        self.bst("build", "all.bst")

    def config(self, artifacts: Path, *, remote: bool, push: bool = False) -> Path:
        conf = self.tmp / f"bst-{artifacts.name}-{remote}.conf"
        text = (f"logdir: {self.tmp}/bst-logs\nbuilddir: {self.tmp}/bst-build\nartifactdir: {artifacts}\n"
                f"sourcedir: {self.tmp}/bst-sources\n")
        if remote:
            text += f"artifacts:\n  url: http://127.0.0.1:{self.port}\n  push: {'true' if push else 'false'}\n"
        conf.write_text(text)
        return conf

    def bst(self, *args: str, conf: Path | None = None) -> str:
        return run(["bst", "--no-interactive", "--on-error", "terminate", "-c", str(conf or self.conf), *args],
                   cwd=self.proj)

    def noop(self) -> None:
        self.bst("build", "all.bst")

    def change(self) -> None:
        self.tree.edit_leaf()
        self.bst("build", "all.bst")

    def start_server(self) -> None:
        repo = self.tmp / "bst-server"
        repo.mkdir(exist_ok=True)
        # The server listens on [::] by default; this benchmark only ever listens on loopback.
        code = ("import grpc._server as s\n"
                "orig = s._Server.add_insecure_port\n"
                "s._Server.add_insecure_port = lambda self, a: orig(self, a.replace('[::]', '127.0.0.1'))\n"
                "from buildstream._artifactcache.casserver import server_main\n"
                f"server_main(['--port', '{self.port}', '--enable-push', '{repo}'])\n")
        self.server = subprocess.Popen(["/usr/bin/python3", "-c", code], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("the BuildStream artifact server did not start")

    def stop(self) -> None:
        if self.server is not None:
            os.killpg(self.server.pid, signal.SIGTERM)
            self.server.wait(timeout=10)

    def fresh(self, remote: bool) -> Callable[[], None]:
        self.bst("build", "all.bst")  # the current artifacts (phase b changed one)
        n = len(list(self.tmp.glob("bst-fresh-*")))
        out = self.tmp / f"bst-fresh-{n}"
        if remote:
            if self.server is None:
                self.start_server()
                self.bst("push", "--deps", "all", "all.bst", conf=self.config(self.tmp / "bst-artifacts",
                                                                                remote=True, push=True))
            conf = self.config(self.tmp / f"bst-artifacts-empty-{n}", remote=True)
        else:
            conf = self.conf

        def go() -> None:
            self.bst("build", "all.bst", conf=conf)
            self.bst("checkout", "all.bst", str(out), conf=conf)
            assert (out / "bin" / "out").is_file()
        return go


# --------------------------------------------------------------------------- the run


def measure(tool: object, runs: int) -> dict[str, list[float]]:
    t: dict[str, list[float]] = {p: [] for p in (*PHASES, *(f"{p}cpu" for p in PHASES))}
    tool.noop()  # type: ignore[attr-defined]
    for _ in range(runs):
        t["a"].append(timed(tool.noop))  # type: ignore[attr-defined]
        t["acpu"].append(LAST_CPU[0])
    for _ in range(max(3, runs // 2)):
        took = timed(tool.change)  # type: ignore[attr-defined]
        t["b"].append(took if not isinstance(tool, Pib) else tool.last_change)
        t["bcpu"].append(LAST_CPU[0])  # pib's includes the untimed git commit of the edit (a few ms)
    for phase, remote in (("c", False), ("d", True)):
        for _ in range(3):
            t[phase].append(timed(tool.fresh(remote)))  # type: ignore[attr-defined]
            t[f"{phase}cpu"].append(LAST_CPU[0])
    return t


def main() -> None:
    from tests.services.nginx import start_nginx
    from tests.services.ports import stop

    runs = 5
    if "--render" in sys.argv:  # re-render the samples a run printed: --render LOG "LOAD 1/5/15"
        i = sys.argv.index("--render")
        body = render(parse_log(Path(sys.argv[i + 1])), {}, 100, runs, sys.argv[i + 2])
        print(body)
        write_section("peers", ".venv/bin/python bench/peers.py", body)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    tmp = Path(tempfile.mkdtemp(prefix="pib-bench-peers-"))
    results: dict[str, dict[str, list[float]]] = {}
    why: dict[str, str] = {}
    nginx, server = start_nginx(tmp / "nginx")
    try:
        for name in ("pib", "BuildStream", "Nix"):
            base = tmp / name
            base.mkdir()
            tree = Tree(base / "work", n, git=name == "pib")
            try:
                if name == "pib":
                    tool: object = Pib(tree, base, server.url)
                elif name == "Nix":
                    if not shutil.which("nix-build"):
                        raise RuntimeError("nix-build is not installed (run bench/setup-peers)")
                    tool = Nix(tree, base, server.root, server.url)
                else:
                    if not shutil.which("bst"):
                        raise RuntimeError("bst is not installed (run bench/setup-peers)")
                    tool = BuildStream(tree, base)
                try:
                    results[tool.name] = measure(tool, runs)  # type: ignore[attr-defined]
                finally:
                    if isinstance(tool, BuildStream):
                        tool.stop()
            except (RuntimeError, subprocess.CalledProcessError, AssertionError) as exc:
                why[name] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                print(f"{name}: {why[name]}", file=sys.stderr)
            print(name, {k: [round(x, 3) for x in v] for k, v in results.get(getattr(tool, "name", ""), {}).items()},
                  flush=True)
    finally:
        stop(nginx)
        load = os.getloadavg()
        shutil.rmtree(tmp, ignore_errors=True)

    body = render(results, why, n, runs, f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print(body)
    if n == 100:
        write_section("peers", ".venv/bin/python bench/peers.py", body)


def render(results: dict[str, dict[str, list[float]]], why: dict[str, str], n: int, runs: int, load: str) -> str:
    tools = list(results)
    lines = ["| phase | " + " | ".join(tools) + " |", "|---|" + "---:|" * len(tools)]
    for p in PHASES:
        cells = [f"{statistics.median(results[t][p]):.2f} s" for t in tools]
        lines.append(f"| {LABELS[p]} | " + " | ".join(cells) + " |")
    if all(f"{p}cpu" in results[t] for t in tools for p in PHASES):
        lines += ["", "CPU time (user+sys of the tool's processes; a server's own CPU, nginx's or BuildStream's "
                  "artifact server's, is not in it), medians:", "",
                  "| phase | " + " | ".join(tools) + " |", "|---|" + "---:|" * len(tools)]
        for p in PHASES:
            cells = [f"{statistics.median(results[t][f'{p}cpu']):.2f} s" for t in tools]
            lines.append(f"| {LABELS[p]} | " + " | ".join(cells) + " |")
    ratio_lines = []
    for t in tools:
        if t != Pib.name and Pib.name in results:
            ratios = ", ".join(f"({p}) {statistics.median(results[t][p]) / statistics.median(results[Pib.name][p]):.1f}x"
                               for p in PHASES)
            ratio_lines.append(f"- {t} / pib: {ratios}")
    body = (f"{n} components of {FILES} files each (a binary tree of dependencies), one trivial build step each; "
            f"medians of {runs} runs for (a), of {max(3, runs // 2)} for (b), of 3 for (c) and (d). "
            f"Load average when the run ended: {load} (1/5/15 min) on {os.cpu_count()} cores shared with other "
            "work, so every figure carries that noise.\n\n"
            + "\n".join(lines) + "\n\nHow much longer each peer takes than pib (above 1: pib is faster):\n\n"
            + "\n".join(ratio_lines) + "\n")
    for name, reason in why.items():
        body += f"\n{name} could not be measured here: {reason}\n"
    return body + "\n" + BEHIND + "\n\n" + NOTES


def parse_log(log: Path) -> dict[str, dict[str, list[float]]]:
    """The per-tool samples a run printed (`NAME {...}` lines), to render them again."""
    names = {"pib": Pib.name, "BuildStream": BuildStream.name, "Nix": Nix.name}
    out = {}
    for line in log.read_text().splitlines():
        m = re.match(r"^(pib|BuildStream|Nix) (\{.+\})$", line)
        if m and m.group(2) != "{}":
            out[names[m.group(1)]] = ast.literal_eval(m.group(2))
    return out


BEHIND = """Where pib is behind: Nix restores the 100 outputs from its cache faster, from the local one (c): 1.09 s
against 1.26 s wall, 1.10 s against 1.82 s of CPU; from the remote one (d): 1.24 s against 1.65 s wall,
1.24 s against 2.19 s of CPU (run of 2026-12-01, load 1.5 to 2.9). The measured reason is the fresh
workspace's first plan: no tree of a checkout is remembered there yet, so each checkout runs git three
times (the content paths, `update-index`, `write-tree`; the private index is the user's, copied, and
the HEAD commit's tree is read from its loose object). On a 100-component workspace made the same way
`pib status` in a fresh workspace takes 1.6 to 1.8 s of CPU (303 processes: 300 git, 2 find, pib), a
second plan 0.35 s. So about 1.4 s of CPU, 14 ms per checkout, is the first look at 100 git checkouts,
which Nix does not pay: its store is the workspace, and `builtins.path` hashes the sources in-process.
The 100 restores themselves are cheap (3.9 ms of CPU each, measured before: fetch, signature check,
SHA-256, policy-checked unpack, lstat audit). Cutting the rest needs git's trees computed in-process,
exactly as `git write-tree` writes them and with the objects stored (dependents' change lists diff
them): not attempted here. The no-op (a) and the one change (b), which run on every edit, are 3.7x and
2.3x faster than Nix in wall time and 3.3x and 2.1x in CPU; BuildStream 1.6 is 2.4 to 4.8x slower than
pib in wall time in every phase (it hashes every local source on each invocation and stages every
element in a bubblewrap sandbox)."""


NOTES = """How each tool was set up (`bench/setup-peers` installs the peers from Debian's archive):

- pib: `path` components (the source directories used in place), `prebuilt = true`, a local store, and an
  HTTP store (nginx on loopback, the test suite's configuration) that the first build published to with
  a signing key. (c) is a new workspace with the warm local store; (d) a new workspace with an empty
  local store and the HTTP store.
- BuildStream 1.6.8 (Debian bookworm's `buildstream`; BuildStream 2, on PyPI, needs buildbox-casd and
  buildbox-run, for which bookworm has no package, so it was not tried): `manual` elements with a `local` source each, built in its bubblewrap
  sandbox on a busybox-static `import` element (its sandbox holds only an element's dependencies);
  `strip-binaries` emptied. (c) is `bst build` (every artifact cached) plus `bst checkout` of a `stack`
  element of all components into a new directory; (d) the same with an empty local artifact cache and
  the artifact server from the same package (`buildstream._artifactcache.casserver`; Debian ships the
  module but not its `bst-artifact-server` script), the stack pushed to it with `bst push --deps all`,
  its listening address forced from `[::]` to 127.0.0.1.
- Nix 2.8.0 (Debian's `nix-bin`), single user as root, store /nix/store; no nixpkgs (no network here):
  one `derivation` per component with `builder = "/bin/sh"` from the host, `PATH` set, the sources by
  `builtins.path`, the dependency outputs as inputs; `sandbox = false`, `build-users-group =` empty,
  `substituters =` empty. (c): the outputs are copied to a `file://` binary cache with `nix copy`, deleted
  from the store with `nix-store --delete`, and `nix-build --option substituters file://...` fetches them;
  (d): the same cache directory served by nginx on loopback (`require-sigs = false`: unsigned).
  Nix has no workspace: its "fresh workspace" is the store without the outputs.
"""


if __name__ == "__main__":
    main()
