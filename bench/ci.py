"""CI fan-out: a generated GitLab pipeline in gitlab-ci-local against `pib build -jN` on one machine.

Run: .venv/bin/python bench/ci.py [--sleep S] [--layers L --width W]
     .venv/bin/python bench/ci.py --example   (the example platform; its own section, "ci-example")

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

With --example, the same for the example platform (examples/platform: a kernel
package, busybox compiled, GRUB, lib and core, the Debian CBE), whose pipeline has
four build jobs and an image job that builds core (not prebuilt) and boots the image
in QEMU; `pib build -jN --publish --boot` is its one-machine counterpart. Every
machine and job installs the CBE into its own root from one download cache filled
first (`pib fetch`), never from the network. Wall and CPU time (all processes) and
the load average are reported: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import write_section
from tests.cifixture import (
    NO_NETWORK,
    NODE_BIN,
    OWN_CBE,
    Platform,
    example_platform,
    make_platform,
    own_cbe,
    pib_cmd,
    run_pipeline,
)
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


class Run(NamedTuple):
    wall: float
    cpu: float  # user + system seconds of every process it ran

    def __str__(self) -> str:
        return f"{self.wall:.0f} (CPU {self.cpu:.0f})"


CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def measured(fn: Callable[..., subprocess.CompletedProcess[str]], *args: Any, **kw: Any) -> Run:
    """Wall and CPU time of fn's processes. CPU from a cpuacct cgroup the benchmark joins for the call
    (its children inherit it): getrusage misses what runs in a sandbox's PID namespace, whose init
    reaps the build's processes. Without a writable cgroup v1 cpuacct, getrusage it is."""
    group = CPUACCT / f"pib-bench-{os.getpid()}-{time.monotonic_ns()}"
    try:
        group.mkdir()
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        group = Path()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        r = fn(*args, **kw)
    finally:
        wall = time.perf_counter() - t0
        if group != Path():
            (CPUACCT / "cgroup.procs").write_text(str(os.getpid()))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if group != Path():
        cpu = int((group / "cpuacct.usage").read_text()) / 1e9
        with contextlib.suppress(OSError):  # a process it started lives on
            group.rmdir()
    else:
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if r.returncode != 0:
        raise SystemExit(f"{r.args!r} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}")
    return Run(wall, cpu)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def example(args: argparse.Namespace, tmp: Path) -> str:
    from pib.fetch import download_cache

    cache = download_cache()
    env = {"PIB_CACHE": str(cache), **NO_NETWORK}
    proc, server, _ = start_seaweed(tmp / "seaweed")
    rows = []
    plans: list[tuple[str, float, str]] = []
    try:
        counter = 0

        def platform() -> Platform:
            nonlocal counter
            counter += 1
            return example_platform(tmp / f"x{counter}", server)

        def ex_machine(plat: Platform, name: str) -> tuple[Path, Path, Run]:
            ws = plat.workspace()
            home = plat.root / f"home-{name}"
            own_cbe(ws, home)
            run = measured(pib_cmd, ws, {**plat.env(home), **env}, "configure", timeout=3600)
            return ws, home, run

        seed = platform()
        timed([sys.executable, "-m", "pib", "-C", str(seed.workspace()), "fetch"], cwd=tmp, env=dict(os.environ))
        for n in (int(x) for x in args.jobs.split(",")):
            plat = platform()
            ws, home, conf = ex_machine(plat, f"single-j{n}")
            load0 = loadavg()
            single = measured(pib_cmd, ws, {**plat.env(home), **env}, "build", f"-j{n}", "--publish", "--boot",
                              timeout=7200)
            plat = platform()
            project, ghome, _ = ex_machine(plat, f"generator-{n}")
            if n == 1:
                t0 = time.perf_counter()
                r = pib_cmd(project, {**plat.env(ghome), **env}, "plan", "--json")
                plans.append(("nothing", time.perf_counter() - t0, summary(r)))
            t0 = time.perf_counter()
            r = pib_cmd(project, {**plat.env(ghome), **env}, "plan", "--format", "gitlab", "-o",
                        str(project / "pib-child.yml"), "--setup", OWN_CBE)
            gen = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(f"pib plan failed:\n{r.stderr}")
            load1 = loadavg()
            pipe = measured(run_pipeline, plat, project, project / "pib-child.yml", concurrency=n, extra_env=env,
                            timeout=7200)
            if n == 1:
                fresh, fhome, _ = ex_machine(plat, "planner")
                t0 = time.perf_counter()
                r = pib_cmd(fresh, {**plat.env(fhome), **env}, "plan", "--json")
                plans.append(("every prebuilt component", time.perf_counter() - t0, summary(r)))
            rows.append((n, conf, single, gen, pipe, f"{load0} / {load1} / {loadavg()}"))
            print(f"N={n}: configure {conf}; pib build -j{n} --boot {single}; pipeline {pipe}; plan {gen:.1f}s; "
                  f"load {rows[-1][-1]}", flush=True)
    finally:
        stop(proc)
    lines = [
        "The example platform (`examples/platform`: the kernel from its Debian package, busybox compiled from "
        "its upstream tarball, GRUB, lib and core, built with the Debian gcc-12 CBE) in one SeaweedFS S3 store "
        "on loopback. Each run starts from new repositories and an empty bucket. One machine: "
        "`pib build -jN --publish --boot` after `pib configure`. The pipeline: `pib plan --format gitlab` "
        "(jobs kernel, extra, boot, lib, then `image:boot`, which restores them, builds core, not prebuilt, and "
        "boots the image in QEMU) run by gitlab-ci-local 4.65.1 `--concurrency N --shell-isolation`, every job "
        "its own checkout copy, HOME, local store and CBE root. Every CBE install (each job's `pib configure`, "
        "the one machine's) takes the signed CBE prefix from the store once a build has published it, else "
        "unpacks the pinned packages from one download cache filled first; nothing comes from the network. "
        "Seconds of wall time, with the CPU seconds (user + system, every process) in brackets.",
        "",
        "| N | `pib configure` (CBE from the cache) | `pib build -jN --publish --boot`, one machine | "
        "pipeline in gitlab-ci-local, `--concurrency N` | pipeline / one machine (configure included) | "
        "load average (1, 5, 15 min) before the build / before the pipeline / after |",
        "|---|---|---|---|---|---|",
    ]
    for n, conf, single, _gen, pipe, load in rows:
        lines.append(f"| {n} | {conf} | {single} | {pipe} | {pipe.wall / (conf.wall + single.wall):.1f}x | {load} |")
    lines += [
        "",
        "`pib plan` on a configured machine (one run each): "
        + "; ".join(f"store holds {what}: {sec:.1f}s ({summ})" for what, sec, summ in plans)
        + "; `pib plan --format gitlab` (the generating job's own work): "
        + ", ".join(f"{gen:.1f}s" for _n, _c, _s, gen, _p, _l in rows) + ".",
        "",
        f"`uptime` at the end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}",
    ]
    return "\n".join(lines)


def summary(r: subprocess.CompletedProcess[str]) -> str:
    if r.returncode not in (0, 8):
        raise SystemExit(f"pib plan failed:\n{r.stderr}")
    acts = [c["action"] for c in json.loads(r.stdout)["components"]]
    return ", ".join(f"{acts.count(a)} {a}" for a in sorted(set(acts)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=5)
    ap.add_argument("--sleep", type=float, default=1.0)
    ap.add_argument("--jobs", default="1,2,4")
    ap.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    ap.add_argument("--example", action="store_true", help="the example platform (section ci-example)")
    args = ap.parse_args()
    g = graph(args.layers, args.width)
    tmp = Path(tempfile.mkdtemp(prefix="pib-bench-ci-"))
    # The jobs run `pib` from this virtual environment; nothing of the caller's pib settings leaks in.
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    for k in [k for k in os.environ if k.startswith(("PIB_", "XDG_", "AWS_"))]:
        del os.environ[k]
    if args.example:
        body = example(args, tmp)
        print(body)
        if not args.no_write:
            write_section("ci-example", "python3 bench/ci.py --example", body)
        return
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
        "The example platform is measured in the section ci-example (`bench/ci.py --example`).",
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
