"""How pib's cost grows with the workspace: no-op, one change and plan time for 10, 100 and 1,000
components, and for one component holding 60,000 files.

Run: .venv/bin/python bench/scale.py [--quick]   (matplotlib from the bench extra: pip install -e ".[bench]";
writes BENCHMARKS.md and docs/scale.png)

Each workspace is made fresh: N git repositories of 200 small files each (the
60,000-file case: one repository), components in a binary tree of dependencies
(component i depends on component (i-1)//2), a trivial `./build.sh`, built once.
Then, medians of several runs:

- no-op: `pib build --json` with nothing changed (the wall time of the process);
- one change: one line of one file of a leaf component edited, `pib build` (one
  component rebuilt, every other one checked);
- plan: `pib status --json` (the plan alone: every key, every reason; no lock,
  no runner, no image step).

The plot (matplotlib, from the `bench` extra) shows the cost per component.
"""

from __future__ import annotations

import ast
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import ROOT, machine, sh, write_section

FILES = 200  # per component
BIG = 60_000  # files of the single-component case
SIZES = (10, 100, 1000)
BUILD_SH = '#!/bin/sh\nmkdir -p "$DESTDIR/bin"\ncat src0/f0.c > "$DESTDIR/bin/out"\n'


def pib_cmd() -> list[str]:
    pib = ROOT / ".venv" / "bin" / "pib"
    return [str(pib)] if pib.exists() else [sys.executable, "-m", "pib"]


def _git(repo: Path, *args: str) -> None:
    sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "-C", str(repo), *args])


def make_repo(repo: Path, files: int, seed: int) -> None:
    """A git repository of `files` small C files in directories of 100, plus build.sh, committed."""
    repo.mkdir(parents=True)
    sh(["git", "init", "-q", "-b", "main", str(repo)])
    per_dir = 100
    for d in range((files + per_dir - 1) // per_dir):
        sub = repo / f"src{d}"
        sub.mkdir()
        for f in range(min(per_dir, files - d * per_dir)):
            (sub / f"f{f}.c").write_text(f"int v{d}_{f} = {seed};\n" * 8)
    (repo / "build.sh").write_text(BUILD_SH)
    (repo / "build.sh").chmod(0o755)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")


def make_workspace(tmp: Path, n: int, files: int) -> Path:
    """A workspace of n in-place components (a binary tree of dependencies), configured and built once."""
    ws = tmp / f"ws-{n}x{files}"
    ws.mkdir(parents=True)
    body = ['[platform]\nmin_version = "1"\n']
    for i in range(n):
        make_repo(ws / "src" / f"c{i}", files, i)
        deps = f'depends = ["c{(i - 1) // 2}"]\n' if i else ""
        body.append(f'[components.c{i}]\npath = "src/c{i}"\nbuild = ["./build.sh"]\n{deps}')
    (ws / "pib.toml").write_text("\n".join(body))
    (ws / "pib.local.toml").write_text(f'[local_store]\npath = "{tmp / "store"}"\n')
    sh([*pib_cmd(), "-C", str(ws), "configure"])
    sh([*pib_cmd(), "-C", str(ws), "build", "-q"])
    return ws


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


LAST_CPU = [0.0]  # CPU seconds (user+sys) of the last pib process and its children


def timed_json(ws: Path, *args: str) -> tuple[float, dict]:  # type: ignore[type-arg]
    c0 = _children_cpu()
    t0 = time.perf_counter()
    res = subprocess.run([*pib_cmd(), "-C", str(ws), *args, "--json"], capture_output=True, text=True)
    took = time.perf_counter() - t0
    LAST_CPU[0] = _children_cpu() - c0
    if res.returncode != 0:
        raise SystemExit(f"pib {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return took, json.loads(res.stdout)


class Row(NamedTuple):
    label: str
    components: int
    files: int
    noop: float
    change: float
    plan: float
    noop_cpu: float


def measure(ws: Path, n: int, files: int, runs: int) -> Row:
    def actions(out: dict) -> dict[str, int]:  # type: ignore[type-arg]
        counts: dict[str, int] = {}
        for c in out["components"]:
            counts[c["action"]] = counts.get(c["action"], 0) + 1
        return counts

    timed_json(ws, "build")  # warm-up: the page cache and the private indexes
    noops, cpus = [], []
    for _ in range(runs):
        t, out = timed_json(ws, "build")
        assert actions(out) == {"up-to-date": n}, actions(out)
        noops.append(t)
        cpus.append(LAST_CPU[0])
    plans = []
    for _ in range(runs):
        t, out = timed_json(ws, "status")
        assert all(c["state"] == "up-to-date" for c in out["components"]), out["components"][:3]
        plans.append(t)
    leaf = ws / "src" / f"c{n - 1}" / "src0" / "f1.c"
    changes = []
    for r in range(max(3, runs // 2)):
        leaf.write_text(f"int changed = {r};\n")
        t, out = timed_json(ws, "build")
        want = {"built": 1, "up-to-date": n - 1} if n > 1 else {"built": 1}
        assert actions(out) == want, actions(out)
        changes.append(t)
    label = f"{n:,} components x {files} files" if n > 1 else f"1 component x {files:,} files"
    return Row(label, n, files, statistics.median(noops), statistics.median(changes), statistics.median(plans),
               statistics.median(cpus))


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    multi = [r for r in rows if r.components > 1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r.components for r in multi]
    for attr, name in (("noop", "no-op build"), ("noop_cpu", "no-op CPU (user+sys)"), ("change", "one change"),
                       ("plan", "plan (status)")):
        ax1.plot(xs, [getattr(r, attr) for r in multi], marker="o", label=name)
        ax2.plot(xs, [getattr(r, attr) / r.components * 1000 for r in multi], marker="o", label=name)
    ax1.axhline(1.0, color="grey", linestyle=":", label="1 s target")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel(f"components ({FILES} files each)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax1.set_yscale("log")
    ax1.set_ylabel("seconds (wall, or CPU where marked)")
    ax2.set_ylabel("ms per component")
    ax1.set_title("pib: total time")
    ax2.set_title("pib: cost per component")
    fig.suptitle(machine(), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_rows(log: Path) -> list[Row]:
    """The rows a run printed (one `Row(...)` line each), to render them again."""
    rows = []
    for line in log.read_text().splitlines():
        m = re.match(r"Row\((.*)\)$", line.strip())
        if m:
            fields = dict(re.findall(r"(\w+)=('[^']*'|[-0-9.e]+)", m.group(1)))
            rows.append(Row(**{k: ast.literal_eval(v) for k, v in fields.items()}))
    return rows


def render(rows: list[Row], runs: int, load: str) -> str:
    lines = ["| workspace | no-op build | no-op CPU (user+sys) | one change | plan (`pib status`) | "
             "no-op per component | no-op per 1,000 files |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.label} | {r.noop:.3f} s | {r.noop_cpu:.3f} s | {r.change:.3f} s | {r.plan:.3f} s | "
                     f"{r.noop / r.components * 1000:.2f} ms | {r.noop / (r.components * r.files) * 1e6:.2f} ms |")
    table = "\n".join(lines) + "\n"
    by_n = {r.components: r for r in rows if r.components > 1 or r.files == FILES}
    notes = [f"Medians of {runs} runs (one change: of {max(3, runs // 2)}), wall time of the `pib` process; the CPU "
             "column is the user+sys time of `pib` and the processes it started (find, git), which the load of a "
             f"shared machine inflates less than the wall time. Load average (1 min): {load}, on "
             f"{os.cpu_count()} cores shared with other work."]
    if 1000 in by_n:
        r = by_n[1000]
        notes.append(f"Target: a 1,000-component no-op under 1 s: {'met' if r.noop < 1 else 'NOT met'} "
                     f"({r.noop:.3f} s wall, {r.noop_cpu:.3f} s CPU over {os.cpu_count()} cores).")
    if 10 in by_n and 1000 in by_n:
        for what, a, b in (("wall", by_n[10].noop, by_n[1000].noop), ("CPU", by_n[10].noop_cpu, by_n[1000].noop_cpu)):
            notes.append(f"No-op {what} per component from 10 to 1,000 components: {a / 10 * 1000:.2f} ms to "
                         f"{b / 1000 * 1000:.2f} ms ({'flat or falling' if b / 1000 <= a / 10 * 1.1 else 'RISING'}).")
    notes.append(WHY)
    return table + "\n" + "\n\n".join(notes) + "\n\n![cost per component](docs/scale.png)\n"


WHY = """Where a 1,000-component no-op's time goes (profiled with cProfile and `python -X importtime`,
`find` measured with `strace -c -f` and as CPU time of the children). Before this run it took 1.7 s of
CPU (3.4 s wall at load 15): `find` 0.6 s, start-up 0.1 s, reading pib.toml with the file:line of every
value 0.25 to 0.35 s (of which 0.2 s the proto-area checks: 2,000 `Path.resolve` calls and hashing
Paths), the 1,000 state records 0.24 s, the rest of the plan 0.3 s. Now, with keys unchanged
(tests/test_keys.py golden values):

- the parsed configuration is kept in `.pib/config-cache`, keyed by the bytes of pib.toml and
  pib.local.toml (not their stat data: an edit in the same second to the same size, a file replaced by
  a rename and a clock set back are all seen, each tested), HOME, XDG_CACHE_HOME, the CPU count, the
  Python version and the configuration code; loading it takes 0.05 s. What depends on the file system
  (proto areas resolved through links) and on installed packages (the SPDX list) is checked on every
  load, now with each parent directory resolved once: 0.2 s to 0.05 s;
- the state records are read as bytes and parsed only when their SHA-256 differs from the one kept in
  `.pib/records-cache` beside the parsed record; reading itself had cost a 256 MiB allocation per
  record (`os.read` of the size limit): 0.24 s to 0.06 s.

What remains: about 0.6 s of CPU in the two `find` processes (0.1 s user, 0.5 s system: an lstat of each
of the 204,000 entries; a content edit moves only the file's own ctime, so no sound walk can skip a
file without a file-system watcher) and about 0.5 s in Python (start-up and imports 0.1 s, the cached
configuration and its checks 0.1 s, fingerprints, HEAD reads and the walk memo 0.15 s, records, proto
areas and keys 0.15 s, the runner, the image step and the JSON report). `find` runs beside the Python
work, so on 2 free cores the wall time is close to the larger of the two; on this shared machine it
depends on the load more than on pib: the 10- and 100-component rows ran at load 12.7 and are mostly
waiting for a CPU (0.18 s and 0.27 s of CPU against 1.4 s and 1.3 s of wall). The 60,000-file component's one change runs git over the
changed checkout (update-index re-hashes the edited file, write-tree) and is wall time at that load."""


def main() -> None:
    quick = "--quick" in sys.argv
    runs = 3 if quick else 7
    if "--render" in sys.argv:  # re-render the rows a run printed: --render LOG "LOAD TEXT"
        i = sys.argv.index("--render")
        saved = parse_rows(Path(sys.argv[i + 1]))
        body = render(saved, runs, sys.argv[i + 2])
        print(body)
        plot(saved, ROOT / "docs" / "scale.png")
        write_section("scale", ".venv/bin/python bench/scale.py", body)
        return
    sizes = (10, 100) if quick else SIZES
    tmp = Path(tempfile.mkdtemp(prefix="pib-bench-scale-"))
    rows: list[Row] = []
    loads = []
    try:
        for n in sizes:
            ws = make_workspace(tmp / f"n{n}", n, FILES)
            rows.append(measure(ws, n, FILES, runs))
            loads.append(os.getloadavg()[0])
            print(rows[-1], flush=True)
            shutil.rmtree(tmp / f"n{n}", ignore_errors=True)
        if not quick:
            ws = make_workspace(tmp / "big", 1, BIG)
            rows.append(measure(ws, 1, BIG, runs))
            loads.append(os.getloadavg()[0])
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = render(rows, runs, "after each workspace " + ", ".join(f"{x:.1f}" for x in loads))
    print(body)
    if not quick:
        plot(rows, ROOT / "docs" / "scale.png")
        write_section("scale", ".venv/bin/python bench/scale.py", body)


if __name__ == "__main__":
    main()
