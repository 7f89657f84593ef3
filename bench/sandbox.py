"""What the bubblewrap sandbox costs: per component build, and on the example's one-line change in core,
against sandbox.mode = "none", in one run (runs of the two modes alternate, so load changes hit both).

  (1) a trivial component (its build.sh writes one file), `pib build --force`: the build command as its
      log times it (bwrap's start-up and mount set-up included) and the whole `pib build`
  (2) the example platform's core after a one-line change to pib-info.c, `pib build core` (the CBE's
      gcc 12, in the sandbox and not); the image step that follows is the same in both modes

Run: python3 bench/sandbox.py   (needs the example's CBE, which scripts/demo installs)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.e2e import make_workspace, one_line_change
from bench.report import ROOT, sh, write_section

RUNS = 15
CHANGES = 5
MODES = ("bwrap", "none")
_EXIT_RE = re.compile(r"\] exit 0 after ([0-9.]+)s$")


def _pib() -> list[str]:
    venv = ROOT / ".venv" / "bin" / "python"
    return [str(venv) if venv.exists() else sys.executable, "-m", "pib"]


def build(ws: Path, *args: str) -> tuple[float, float]:
    """(wall seconds of `pib build`, seconds of the build command as its log timed it)."""
    t0 = time.perf_counter()
    out = subprocess.run([*_pib(), "-C", str(ws), "build", "--json", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    report = json.loads(out.stdout)
    if out.returncode != 0:
        raise SystemExit(f"pib build failed in {ws}: {report.get('error')}")
    built = [c for c in report["components"] if c["action"] == "built"]
    assert len(built) == 1, report
    m = [_EXIT_RE.search(line) for line in Path(built[0]["log"]).read_text().splitlines()]
    return wall, float(next(x for x in reversed(m) if x).group(1))


def sandbox_section(mode: str) -> str:
    return f'\n[sandbox]\nmode = "{mode}"\n'


def trivial(tmp: Path) -> dict[str, list[tuple[float, float]]]:
    repo = tmp / "repos" / "t"
    repo.mkdir(parents=True)
    sh(["git", "init", "-q", "-b", "main", str(repo)])
    (repo / "build.sh").write_text('#!/bin/sh\nmkdir -p "$DESTDIR/bin"\necho ok > "$DESTDIR/bin/t"\n')
    (repo / "build.sh").chmod(0o755)
    sh(["git", "add", "-A"], cwd=repo)
    sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init"], cwd=repo)
    spaces = {}
    for mode in MODES:
        ws = tmp / f"trivial-{mode}"
        ws.mkdir()
        (ws / "pib.toml").write_text('[platform]\nmin_version = "1"\n\n[components.t]\nsource = "../repos/t"\n'
                                     'build = ["./build.sh"]\n' + sandbox_section(mode))
        sh([*_pib(), "-C", str(ws), "configure"])
        build(ws, "--force")  # warm-up
        spaces[mode] = ws
    out: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for _ in range(RUNS):
        for mode in MODES:
            out[mode].append(build(spaces[mode], "--force"))
    return out


def example(tmp: Path) -> dict[str, list[tuple[float, float]]]:
    spaces = {}
    for mode in MODES:
        ws = make_workspace(tmp / "example", name=f"example-{mode}", repos=tmp / "example" / "repos")
        with (ws / "pib.toml").open("a") as fh:
            fh.write(sandbox_section(mode))
        (ws / "pib.local.toml").write_text(f'[local_store]\npath = "{tmp / "store"}"\n')
        sh([*_pib(), "-C", str(ws), "configure"])
        build(ws, "core")
        spaces[mode] = ws
    out: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for n in range(CHANGES):
        for mode in MODES:
            one_line_change(spaces[mode], n)
            out[mode].append(build(spaces[mode], "core"))
    return out


def _row(what: str, runs: dict[str, list[tuple[float, float]]], index: int) -> str:
    box, bare = (statistics.median(r[index] for r in runs[m]) for m in MODES)
    return f"| {what} | {box:.3f} s | {bare:.3f} s | {box - bare:+.3f} s | {box / bare:.2f}x |\n"


def main() -> None:
    if shutil.which("bwrap") is None:
        raise SystemExit("bubblewrap is not installed (run scripts/setup)")
    tmp = Path(tempfile.mkdtemp(prefix="pib-bench-sandbox-"))
    load = os.getloadavg()[1]
    try:
        small = trivial(tmp)
        change = example(tmp)
        table = ("| what | sandboxed (bwrap) | mode = \"none\" | difference | ratio |\n|---|---:|---:|---:|---:|\n"
                 + _row(f"trivial component: build command (median of {RUNS})", small, 1)
                 + _row(f"trivial component: `pib build --force` (median of {RUNS})", small, 0)
                 + _row(f"example core, one-line change: build command (median of {CHANGES})", change, 1)
                 + _row(f"example core, one-line change: `pib build core` (median of {CHANGES})", change, 0))
        note = ("The sandbox costs bwrap's start-up and its mounts (namespaces, about 25 bind mounts, "
                "tmpfs for /tmp and HOME) once per component build; nothing else in a build changes. "
                "Runs of the two modes alternate within one run of this script. Build commands are timed by "
                "pib's build log (bwrap's set-up included); `pib build` is the whole process, key computation "
                "and proto-area swap included. The image step after a change is the same in both modes. "
                f"Load average (5 min) {load:.1f} at the start and {os.getloadavg()[1]:.1f} at the end: "
                "the network namespace and the mounts cost more on a busy machine.")
        print(table + "\n" + note)
        write_section("sandbox", "python3 bench/sandbox.py", table + "\n" + note)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
