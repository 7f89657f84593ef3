"""Platforms for CI tests: a small synthetic one and the example, each with real git repositories, a
workspace that is itself a git repository (what a CI runner checks out), one shared SeaweedFS S3 store and
a publishing key."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pib.artifacts.signing import generate_keypair
from tests.gitutil import commit, make_repo, sh, write
from tests.services.seaweed import Seaweed

REPO = Path(__file__).resolve().parents[1]
NODE_BIN = Path(sys.executable).parent.parent / "node" / "node_modules" / ".bin"

# A component's build: its data, and (stamped) when the build command started and ended, to see overlap.
BUILD = """\
#!/bin/sh
set -e
mkdir -p "$DESTDIR/share/{name}"
{start}
sleep {sleep}
echo "{name} {version}" > "$DESTDIR/share/{name}/data"
{end}
"""
MANIFEST = "d share 0755 root root\nd share/{name} 0755 root root\nf share/{name}/data 0644 root root\n"


def build_script(name: str, *, version: str = "1", sleep: float = 0, stamped: bool = False) -> str:
    start = f'date +%s.%N > "$DESTDIR/share/{name}/start"' if stamped else ""
    end = f'date +%s.%N > "$DESTDIR/share/{name}/end"' if stamped else ""
    return BUILD.format(name=name, version=version, sleep=sleep, start=start, end=end)


@dataclass
class Platform:
    root: Path
    server: Seaweed
    bucket: str
    graph: dict[str, tuple[str, ...]]  # component -> dependencies
    stamped: tuple[str, ...] = ()
    sleep: float = 0
    image: bool = True
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def key(self) -> Path:
        return self.root / "keys" / "publish.key"

    def env(self, home: Path) -> dict[str, str]:
        """A machine: its own HOME (so its own local store and machine key), the shared store's credentials."""
        return {"HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home / "config"),
                "AWS_ACCESS_KEY_ID": self.server.access_key, "AWS_SECRET_ACCESS_KEY": self.server.secret_key,
                "PIB_SIGNING_KEY": str(self.key), "CI": "true"}

    def workspace(self) -> Path:
        """A fresh clone of the workspace repository: a new machine's checkout."""
        self.counter[0] += 1
        ws = self.root / f"clone{self.counter[0]}"
        sh(["git", "clone", "-q", str(self.root / "workspace"), str(ws)], self.root)
        return ws

    def change(self, name: str, version: str) -> None:
        """A new commit of component `name` (its output changes)."""
        repo = self.root / "repos" / name
        write(repo, {"build.sh": build_script(name, version=version, sleep=self.sleep,
                                              stamped=name in self.stamped)})
        commit(repo, f"{name} {version}")


_IGNORED = "/projects/\n/proto.*/\n/.proto.*\n/log/\n/output/\n/.pib/\n/.gitlab-ci-local/\n"


def _shared_store(bucket: str, server: Seaweed) -> str:
    """The pib.toml tables every job shares: the S3 store and the publishing key it trusts."""
    return f"""[[store]]
name = "shared"
type = "s3"
bucket = "{bucket}"
endpoint_url = "{server.endpoint_url}"
region = "us-east-1"

[trust]
public_keys = ["keys/publish.pub"]
"""


def make_platform(root: Path, server: Seaweed, graph: dict[str, tuple[str, ...]], *, stamped: tuple[str, ...] = (),
                  sleep: float = 0, image: bool = True, extra: str = "") -> Platform:
    bucket = f"ci-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    plat = Platform(root, server, bucket, graph, stamped, sleep, image)
    (root / "keys").mkdir(parents=True)
    for name in graph:
        make_repo(root / "repos" / name, {"build.sh": build_script(name, sleep=sleep, stamped=name in stamped),
                                          "manifest": MANIFEST.format(name=name)})
    comps = "".join(
        f'[components.{name}]\nsource = "{root}/repos/{name}"\nbuild = ["./build.sh"]\nmanifest = "manifest"\n'
        f"prebuilt = true\ndepends = {list(deps)!r}\n\n".replace("'", '"')
        for name, deps in graph.items())
    ws = root / "workspace"
    ws.mkdir()
    (ws / "keys").mkdir()
    generate_keypair(plat.key, ws / "keys" / "publish.pub")
    image_section = ('[image]\ncompression = "gzip"\noverlays = [{ path = "overlay", manifest = "overlay/manifest" }]\n'
                     if image else "")
    if image:
        write(ws, {"overlay/etc/passwd": "root:x:0:0:root:/:/bin/sh\n", "overlay/etc/group": "root:x:0:\n",
                   "overlay/manifest": "d etc 0755 root root\nf etc/passwd 0644 root root\n"
                                       "f etc/group 0644 root root\n"})
    (ws / "pib.toml").write_text(f"""\
[platform]
min_version = "1"

{comps}{_shared_store(bucket, server)}
{image_section}{extra}""")
    write(ws, {".gitignore": _IGNORED})
    sh(["git", "init", "-q", "-b", "main"], ws)
    commit(ws, "workspace")
    return plat


# Jobs and machines without network: any HTTP(S) request but to the loopback store meets a closed port.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}

# A job's first line: the CBE installed under the job's own HOME (a machine of its own), not in the
# shared /opt/<name> a runner host may already have.
OWN_CBE = 'printf \'[cbe]\\nroot = "%s/cbe"\\n\' "$HOME" > pib.local.toml'


def own_cbe(ws: Path, home: Path) -> None:
    """What OWN_CBE does in a job, for a machine outside the runner."""
    (ws / "pib.local.toml").write_text(f'[cbe]\nroot = "{home}/cbe"\n')


def example_platform(root: Path, server: Seaweed) -> Platform:
    """The example platform as a CI project: its workspace a git repository with the shared S3 store and
    the publishing key's public half committed; component repositories at absolute paths (jobs run in
    copies of the checkout)."""
    from examples.platform.make_workspace import make_workspace

    bucket = f"example-ci-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    plat = Platform(root, server, bucket, {})
    ws = make_workspace(root, name="workspace", repos=root / "repos")
    (root / "keys").mkdir()
    (ws / "keys").mkdir()
    generate_keypair(plat.key, ws / "keys" / "publish.pub")
    toml = ws / "pib.toml"
    text = toml.read_text().replace('"../repos/', f'"{root / "repos"}/')
    toml.write_text(text + "\n" + _shared_store(bucket, server))
    write(ws, {".gitignore": _IGNORED + "/pib.local.toml\n"})
    sh(["git", "init", "-q", "-b", "main"], ws)
    commit(ws, "the example platform")
    return plat


def pib_cmd(ws: Path, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pib", "-C", str(ws), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, **env}, timeout=timeout)


def run_pipeline(plat: Platform, project: Path, pipeline: Path, concurrency: int = 4,
                 extra_env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run a GitLab pipeline file with gitlab-ci-local's shell executor: every job in its own copy of the
    checkout (--shell-isolation) with its own HOME, so separate machines that share only the S3 store."""
    home = "$CI_PROJECT_DIR/.home"
    env = {**os.environ, **plat.env(plat.root / "home-runner"), **(extra_env or {})}
    return subprocess.run(
        [str(NODE_BIN / "gitlab-ci-local"), "--file", pipeline.name, "--shell-isolation",
         "--concurrency", str(concurrency), "--variable", f"HOME={home}",
         "--variable", f"XDG_CACHE_HOME={home}/cache", "--variable", f"XDG_CONFIG_HOME={home}/config"],
        cwd=project, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=timeout)


def passed(run: subprocess.CompletedProcess[str]) -> set[str]:
    """The jobs gitlab-ci-local reports as passed."""
    return {line.split("PASS", 1)[1].strip() for line in run.stdout.splitlines() if line.strip().startswith("PASS")}
