"""CBE costs on the real gcc-12 toolchain CBE (examples/platform/cbe/gcc12.lock.toml).

- install from a warm download cache (34 .debs: dpkg -x each, [[files]], the
  install record with every file's SHA-256, rename into place) against the
  bare `dpkg -x` of the same .debs into a directory (the unavoidable part);
- the check every `pib configure`/`pib build` pays (cheap: type, mode, size
  and mtime of every path) against the full re-hash (`pib cbe verify --full`).

Run: python3 bench/cbe.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import ROOT, median_time, sh, write_section
from pib import cbe
from pib.cbe.install import RECORD, read_record
from pib.cbe.providers import debian
from pib.config.types import CbeSpec
from pib.fetch import download_cache

LOCK = ROOT / "examples" / "platform" / "cbe" / "gcc12.lock.toml"
RUNS_INSTALL = 3
RUNS_CHECK = 10


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pib-bench-cbe-"))
    try:
        root = tmp / "root"
        spec = CbeSpec("pib-example-cbe", "gcc12-1", root, LOCK)
        inst = cbe.ensure(spec, install=True)  # also fills the download cache
        lock = cbe.load_lock(LOCK)
        debs = {n: f.path for n, f in debian.fetch(lock.packages, download_cache(), None, apt=lock.apt).items()}

        def install() -> float:
            shutil.rmtree(inst.prefix)  # not timed: only the install itself is
            t0 = time.perf_counter()
            cbe.ensure(spec, install=True)
            return time.perf_counter() - t0

        def bare_dpkg() -> float:
            out = tmp / "bare"
            if out.exists():
                shutil.rmtree(out)
            out.mkdir()
            t0 = time.perf_counter()
            for p in lock.packages:
                sh(["dpkg", "-x", str(debs[p.name]), str(out)])
            return time.perf_counter() - t0

        # Interleaved, so both see the same machine load.
        samples = [(install(), bare_dpkg()) for _ in range(RUNS_INSTALL)]
        t_install = statistics.median(a for a, _ in samples)
        t_dpkg = statistics.median(b for _, b in samples)
        t_cheap = median_time(lambda: cbe.ensure(spec, install=False), RUNS_CHECK)
        t_full = median_time(lambda: cbe.verify_full(spec), RUNS_INSTALL)
        record = read_record(inst.prefix)
        assert record is not None
        files = sum(1 for e in record["files"].values() if e[0] == "f")
        size = sum(e[2] for e in record["files"].values() if e[0] == "f")
        rec_kb = (inst.prefix / RECORD).stat().st_size / 1024
        load = os.getloadavg()[0]
        table = (
            f"Load average when measured: {load:.1f} (other work on the machine slows the install rows most).\n\n"
            f"gcc-12 CBE: {len(lock.packages)} packages, {len(record['files'])} paths, {files} files, "
            f"{size / 1e6:.0f} MB; install record {rec_kb:.0f} KiB.\n\n"
            "| what | median | baseline | ratio |\n|---|---|---|---|\n"
            f"| install from the download cache | {t_install:.2f} s (of {RUNS_INSTALL}) | bare `dpkg -x` of the "
            f"same .debs {t_dpkg:.2f} s | {t_install / t_dpkg:.2f}x |\n"
            f"| check of an installed version (cheap, every configure/build) | {t_cheap * 1000:.1f} ms "
            f"(of {RUNS_CHECK}) | full re-hash {t_full:.2f} s | {t_full / t_cheap:.0f}x faster |\n"
        )
        print(table)
        write_section("cbe", "python3 bench/cbe.py", table)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
