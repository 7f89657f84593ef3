"""A fresh clone with cold caches: setup, fetch, CBE install, build and boot, and `pib fetch` from a store.

Run: python3 bench/fresh.py

Clones this repository, runs `./scripts/setup` in the clone (system packages are
already there on a machine that ran it once; the virtual environment is new),
then the main job's steps one by one with an empty download cache, a new CBE
root and an empty local store: `pib fetch` (everything from upstream: Debian's
archive through the private apt), `pib configure` (installs the CBE from the
fetched packages), `pib build`, `pib boot`. Then `pib fetch` again on a second
"machine" (an empty download cache) whose local store holds every pinned file,
against copying the same bytes with `cp` (the floor).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import ROOT, write_section


def timed(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return took, res.stdout


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pib-bench-fresh-"))
    try:
        clone = tmp / "pib"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp / "home"), "LANG": "C.UTF-8",
               "PIB_CACHE": str(tmp / "cache-a"), "CI": ""}
        (tmp / "home").mkdir()
        t_setup, _ = timed(["./scripts/setup"], cwd=clone, env=env)
        py = str(clone / ".venv" / "bin" / "python")
        _, out = timed([py, "examples/platform/make_workspace.py", str(tmp / "demo")], cwd=clone, env=env)
        ws = Path(out.strip().splitlines()[-1])
        (ws / "pib.local.toml").write_text(f'[local_store]\npath = "{tmp / "store-a"}"\n\n'
                                           f'[cbe]\nroot = "{tmp / "cbe"}"\n')

        def pib(*args: str, e: dict[str, str] = env) -> tuple[float, str]:
            return timed([py, "-m", "pib", "-C", str(ws), *args], env=e)

        t_fetch, out = pib("fetch", "--json")
        files = json.loads(out)["files"]
        total = sum(f["size"] for f in files)
        assert {f["came_from"] for f in files} == {"upstream"}, files
        t_conf, _ = pib("configure")
        t_build, _ = pib("build")
        t_boot, out = pib("boot", "--json")
        assert json.loads(out)["passed"]

        # A second machine: empty download cache, a local store that mirrors every pinned file.
        from pib.fetch import blob_path
        from pib.store.local import LocalStore

        store_b = LocalStore(tmp / "store-b")
        for f in files:
            store_b.put_blob(blob_path(f["sha256"]), tmp / "cache-a" / "sha256" / f["sha256"])
        (ws / "pib.local.toml").write_text(f'[local_store]\npath = "{tmp / "store-b"}"\n\n'
                                           f'[cbe]\nroot = "{tmp / "cbe"}"\n')
        env_b = {**env, "PIB_CACHE": str(tmp / "cache-b")}
        t_store, out = pib("fetch", "--json", e=env_b)
        assert {f["came_from"] for f in json.loads(out)["files"]} == {"store local"}
        dest = tmp / "cp"
        dest.mkdir()
        t0 = time.perf_counter()
        for f in files:
            shutil.copyfile(tmp / "cache-a" / "sha256" / f["sha256"], dest / f["sha256"])
        t_cp = time.perf_counter() - t0

        main_job = t_fetch + t_conf + t_build + t_boot
        body = f"""\
A fresh clone of this repository, cold caches (empty download cache, new CBE root, empty
local store); system packages were already installed, so `scripts/setup` only made the
virtual environment. The main job's steps, run one by one:

| step | seconds | share |
|---|---|---|
| `./scripts/setup` (virtual environment, pib and test tools) | {t_setup:.1f} | — |
| `pib fetch`: {len(files)} pinned files, {total / 1e6:.0f} MB, all from upstream | {t_fetch:.1f} | {t_fetch / main_job:.0%} |
| `pib configure`: CBE installed from the fetched packages | {t_conf:.1f} | {t_conf / main_job:.0%} |
| `pib build`: kernel, busybox and core built | {t_build:.1f} | {t_build / main_job:.0%} |
| `pib boot`: QEMU (TCG) until the marker | {t_boot:.1f} | {t_boot / main_job:.0%} |
| main job (fetch + configure + build + boot) | {main_job:.1f} | 100% |

`pib fetch` of the whole example ({len(files)} files, {total / 1e6:.0f} MB) on a second machine:

| from | seconds | ratio |
|---|---|---|
| upstream (Debian's archive, private apt), cold | {t_fetch:.2f} | 1.00 |
| a warm local store (every file verified by SHA-256 on the way in) | {t_store:.2f} | {t_store / t_fetch:.2f} |
| `cp` of the same files (the floor) | {t_cp:.2f} | {t_cp / t_fetch:.2f} |

pib's fetch from the local store is {t_store / max(t_cp, 1e-9):.1f}x a plain copy (it also
starts pib, hashes every file and asks the store once for all of them).
"""
        write_section("fresh", "python3 bench/fresh.py", body)
        print(body)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
