"""CI fan-out: a generated GitLab pipeline in gitlab-ci-local against `pib build -jN` on one machine.

Run: .venv/bin/python bench/ci.py [--sleep S] [--layers L --width W]

A synthetic platform of L x W components (default 8 x 5 = 40): each component of a
layer depends on two of the layer before; each build sleeps S seconds (default 1)
and writes a file, so the numbers show what scheduling and the store cost, not
compilers. One SeaweedFS S3 store on loopback is shared by every "machine".

For each N in 1, 2, 4, on a new platform (new repositories, an empty bucket):
  - `pib build -jN --publish` on one machine (configured, empty local store);
  - the pipeline: `pib plan --format gitlab` on a generating machine, then
    gitlab-ci-local --concurrency N --shell-isolation, each job its own HOME.
Both publish every component and make the image. Then `pib plan --json` on a fresh
machine, before anything is published (all to build) and after (all restorable).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import write_section
from tests.cifixture import NODE_BIN, Platform, make_platform, pib_cmd
from tests.services.ports import stop
from tests.services.seaweed import start_seaweed


def graph(layers: int, width: int) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for layer in range(layers):
        for i in range(width):
            deps = () if layer == 0 else tuple(sorted({f"c{layer - 1}x{i}", f"c{layer - 1}x{(i + 1) % width}"}))
            out[f"c{layer}x{i}"] = deps
    return out


def machine(plat: Platform, name: str) -> tuple[Path, Path]:
    ws = plat.workspace()
    home = plat.root / f"home-{name}"
    r = pib_cmd(ws, plat.env(home), "configure")
    if r.returncode != 0:
        raise SystemExit(f"pib configure failed:\n{r.stderr}")
    return ws, home


def timed(argv: list[str], *, cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}")
    return took


def one_machine(plat: Platform, jobs: int) -> float:
    ws, home = machine(plat, f"single-j{jobs}")
    return timed([sys.executable, "-m", "pib", "-C", str(ws), "build", f"-j{jobs}", "--publish"], cwd=ws,
                 env={**os.environ, **plat.env(home)})


def pipeline(plat: Platform, concurrency: int) -> tuple[float, float, int]:
    """(seconds to generate, seconds the pipeline took, jobs in it)."""
    project, home = machine(plat, f"generator-{concurrency}")
    t0 = time.perf_counter()
    r = pib_cmd(project, plat.env(home), "plan", "--format", "gitlab", "-o", str(project / "pib-child.yml"))
    gen = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"pib plan failed:\n{r.stderr}")
    jobs = sum(1 for line in (project / "pib-child.yml").read_text().splitlines()
               if line and not line[0].isspace() and line.endswith(":") and line not in ("stages:",))
    h = "$CI_PROJECT_DIR/.home"
    env = {**os.environ, **plat.env(plat.root / "home-runner")}
    took = timed([str(NODE_BIN / "gitlab-ci-local"), "--file", "pib-child.yml", "--shell-isolation",
                  "--concurrency", str(concurrency), "--variable", f"HOME={h}",
                  "--variable", f"XDG_CACHE_HOME={h}/cache", "--variable", f"XDG_CONFIG_HOME={h}/config"],
                 cwd=project, env=env)
    return gen, took, jobs


def plan_seconds(plat: Platform, runs: int = 3) -> tuple[float, str]:
    ws, home = machine(plat, f"planner-{time.monotonic_ns()}")
    samples = []
    summary = ""
    for _ in range(runs):
        t0 = time.perf_counter()
        r = pib_cmd(ws, plat.env(home), "plan", "--json")
        samples.append(time.perf_counter() - t0)
        if r.returncode not in (0, 8):
            raise SystemExit(f"pib plan failed:\n{r.stderr}")
        acts = [c["action"] for c in json.loads(r.stdout)["components"]]
        summary = ", ".join(f"{acts.count(a)} {a}" for a in sorted(set(acts)))
    return statistics.median(samples), summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=5)
    ap.add_argument("--sleep", type=float, default=1.0)
    ap.add_argument("--jobs", default="1,2,4")
    ap.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = ap.parse_args()
    g = graph(args.layers, args.width)
    tmp = Path(tempfile.mkdtemp(prefix="pib-bench-ci-"))
    # The jobs run `pib` from this virtual environment; nothing of the caller's pib settings leaks in.
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    for k in [k for k in os.environ if k.startswith(("PIB_", "XDG_", "AWS_"))]:
        del os.environ[k]
    proc, server, _ = start_seaweed(tmp / "seaweed")
    rows = []
    try:
        counter = 0

        def platform() -> Platform:
            nonlocal counter
            counter += 1
            return make_platform(tmp / f"p{counter}", server, g, sleep=args.sleep)

        plan_before = plan_after = (0.0, "")
        for n in (int(x) for x in args.jobs.split(",")):
            single = one_machine(platform(), n)
            plat = platform()
            if n == 1:
                plan_before = plan_seconds(plat)
            gen, took, njobs = pipeline(plat, n)
            if n == 1:
                plan_after = plan_seconds(plat)
            rows.append((n, single, gen, took, njobs))
            print(f"N={n}: pib build -j{n} {single:.1f}s; pipeline {took:.1f}s ({njobs} jobs, generated in {gen:.1f}s)",
                  flush=True)
    finally:
        stop(proc)
    lines = [
        f"A synthetic platform of {len(g)} components ({args.layers} layers of {args.width}; each depends on two "
        f"of the layer before; each build sleeps {args.sleep:g}s and writes a file), one SeaweedFS S3 store on "
        "loopback. Each run starts from new repositories and an empty bucket, publishes every component and makes "
        "the image. The pipeline is `pib plan --format gitlab` run by gitlab-ci-local 4.65.1 (shell executor, "
        "`--shell-isolation`: every job its own copy of the checkout and its own HOME, so its own local store).",
        "",
        "| concurrent jobs N | `pib build -jN --publish`, one machine (s) | pipeline in gitlab-ci-local (s) | "
        "jobs | pipeline / one machine |",
        "|---|---|---|---|---|",
    ]
    for n, single, _gen, took, njobs in rows:
        lines.append(f"| {n} | {single:.1f} | {took:.1f} | {njobs} | {took / single:.1f}x |")
    lines += [
        "",
        f"Critical path: {args.layers} builds of {args.sleep:g}s. Each pipeline job pays for a checkout copy, "
        "`pib configure`, planning against the store and restoring its whole dependency closure "
        "before its own build: the price of separate machines, which one machine does not pay.",
        "",
        "`pib plan --json` on a fresh, configured machine (median of 3):",
        "",
        "| store holds | seconds | plan |",
        "|---|---|---|",
        f"| nothing | {plan_before[0]:.2f} | {plan_before[1]} |",
        f"| every component | {plan_after[0]:.2f} | {plan_after[1]} |",
        "",
        "The example platform is not measured here: its `core` is not prebuilt (a pipeline refuses a component "
        "that cannot be shared) and each job would install the Debian CBE first.",
        "",
        "The machine is shared with other work and was loaded while this ran; the ratios matter more than "
        "the seconds.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("ci", "python3 bench/ci.py", body)


if __name__ == "__main__":
    main()
