"""The pip provider: a pinned, hash-checked set of Python distributions.

Toolchains delivered on PyPI (ziglang, cmake, ninja, ...) install into the
prefix with `pip install --require-hashes --no-deps --prefix`, so every file
comes from a distribution whose hash the lock pins and nothing else is pulled
in. Works on any host with Python; the prefix's site-packages is exported as
PYTHONPATH (user site-packages switched off) so entry-point scripts find
their modules, and no bytecode is written into the prefix later.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from pib.cbe.pins import Lock
from pib.cbe.providers import Context, write_files
from pib.errors import CbeError, PibError, Reason
from pib.run import minimal_env, run

RELOCATABLE = True


def requirements(lock: Lock) -> str:
    lines = []
    for p in lock.packages:
        hashes = " ".join(f"--hash=sha256:{h}" for h in p.sha256)
        lines.append(f"{p.name}=={p.version} {hashes}")
    return "\n".join(lines) + "\n"


def site_dirs(prefix: Path, python_version: str | None = None) -> list[str]:
    """Prefix-relative site-packages directories that `pip --prefix` fills."""
    vars_ = {"base": str(prefix), "platbase": str(prefix)}
    if python_version:
        vars_["py_version_short"] = python_version
    out: list[str] = []
    for kind in ("purelib", "platlib"):
        rel = os.path.relpath(sysconfig.get_path(kind, vars=vars_), prefix)
        if rel not in out:
            out.append(rel)
    return out


_NETWORK_ENV = frozenset({
    "PIP_CERT", "PIP_CLIENT_CERT", "PIP_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
})


_SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"  # Debian's bundle (update-ca-certificates)


def install_argv(lock: Lock, prefix: Path, req_file: Path, cache: Path, python: str) -> list[str]:
    argv = [
        python, "-m", "pip", "install",
        "--require-hashes", "--no-deps", "--only-binary=:all:",
        "--prefix", str(prefix),
        "--no-compile", "--no-warn-script-location", "--disable-pip-version-check", "--no-input",
        "--cache-dir", str(cache),
        "-r", str(req_file),
    ]
    opts = lock.pip
    if opts is not None:
        if opts.index_url:
            argv += ["--index-url", opts.index_url]
        elif opts.find_links:
            argv += ["--no-index"]
        for link in opts.find_links:
            argv += ["--find-links", link]
    return argv


def populate(lock: Lock, prefix: Path, ctx: Context) -> dict[str, str]:
    python = ctx.python or sys.executable
    req_file = prefix.parent / "requirements.txt"  # beside the prefix, in the install's scratch dir
    req_file.write_text(requirements(lock), encoding="utf-8")
    cache = ctx.cache / "pip"
    env = minimal_env({"PIP_CONFIG_FILE": os.devnull, "PYTHONNOUSERSITE": "1", "HOME": str(prefix.parent)})
    # How this machine reaches the index (certificates, proxies) carries over; what gets
    # installed does not depend on it: every file is pinned by hash.
    env.update({k: v for k, v in os.environ.items() if k in _NETWORK_ENV})
    if not env.keys() & {"PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"} and os.path.isfile(_SYSTEM_CA):
        # pip trusts its own bundled CAs, not the machine's; a site CA (a proxy that inspects
        # TLS) is installed in the system bundle, which pip's ignored config would have named.
        env["PIP_CERT"] = _SYSTEM_CA
    try:
        run(install_argv(lock, prefix, req_file, cache, python), env=env, log=ctx.log, reason=Reason.CBE,
            what="pip install of the CBE's packages")
    except PibError as exc:
        raise CbeError(
            f"cannot install the CBE's Python packages: {exc.message}",
            where=lock.packages[0].where,
            hint="check that every [[packages]] name/version exists on the index for this Python and "
                 "that its sha256 matches (see the log)",
            detail=exc.detail,
        ) from None
    write_files(lock, prefix)
    sites = ":".join(f"${{PREFIX}}/{d}" for d in site_dirs(prefix))
    # No bytecode written at build time: the prefix must stay exactly as installed.
    return {"PYTHONPATH": sites, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
