"""Shared test fixtures. Service fixtures (nginx, SeaweedFS, ...) live in tests/services/.

The suite must pass the same way on a new machine and on a developer's: before any
test runs, the process environment is reduced to what the tests choose. HOME and
the XDG directories point into a fresh directory, git reads no system or user
configuration (a developer's `commit.gpgsign` or `core.excludesFile` must not
change an outcome) and gets a fixed identity, and the virtual environment's
`bin/` comes first on PATH so tools installed by `scripts/setup` are found
without relying on the caller's PATH.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

pytest_plugins: list[str] = [
    "tests.services.nginx", "tests.services.seaweed", "tests.services.badhttp",
]

# Variables of the caller that would change what pib or git does under test.
_DROP_PREFIXES = ("PIB_", "XDG_", "GIT_", "AWS_", "SOURCE_DATE_EPOCH")
_KEEP = {"PIB_RELIABILITY_DIR", "PIB_FUZZ_EXAMPLES"}  # the test harness's own (bench/reliability.py sets them)
_DROP = {"CI", "SSH_AUTH_SOCK", "GNUPGHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "http_proxy", "https_proxy",
         "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"}


def hermetic_environ(base: Path) -> dict[str, str]:
    """The environment every test (and every process it starts) runs with."""
    home = base / "home"
    for d in ("cache", "config", "data"):
        (home / d).mkdir(parents=True, exist_ok=True)
    gitconfig = home / "gitconfig"
    gitconfig.write_text("[user]\n\tname = pib tests\n\temail = tests@pib.invalid\n"
                         "[init]\n\tdefaultBranch = main\n")
    env = {k: v for k, v in os.environ.items()
           if k in _KEEP or (k not in _DROP and not k.startswith(_DROP_PREFIXES))}
    venv_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and p != venv_bin]
    env.update({
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": str(gitconfig),
        "PATH": os.pathsep.join([venv_bin, *path, "/usr/sbin", "/sbin"]),
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    })
    return env


_BASE: list[Path] = []


def pytest_configure(config: object) -> None:
    # Before collection, so module-level code and every subprocess see it too.
    base = Path(tempfile.mkdtemp(prefix="pib-tests-"))
    _BASE.append(base)
    env = hermetic_environ(base)
    os.environ.clear()
    os.environ.update(env)


def pytest_unconfigure(config: object) -> None:
    import shutil

    for base in _BASE:
        shutil.rmtree(base, ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "platform"


@pytest.fixture(scope="session")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example platform's pinned Debian kernel: fetched as its declared source (the session's own
    download cache), installed by the kernel component's build script, once per session."""
    from pib.build.sources import Sources
    from pib.config.loader import load
    from pib.fetch import stage
    from pib.run import minimal_env, run

    example = load(EXAMPLE, local=False)
    fetched = Sources(example).fetch(example.component("kernel").sources)
    sources = stage(fetched.values(), tmp_path_factory.mktemp("kernel-sources"))
    proto = tmp_path_factory.mktemp("kernel-proto")
    env = minimal_env({"DESTDIR": str(proto), "PIB_SOURCES": str(sources)})
    run(["./build.sh"], cwd=EXAMPLE / "components" / "kernel", env=env, timeout=600)
    vmlinuz = proto / "boot" / "vmlinuz"
    assert vmlinuz.is_file() and vmlinuz.stat().st_size > 1 << 20
    return vmlinuz
