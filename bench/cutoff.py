"""Early cutoff on the example platform: a comment-only change in `lib`, which `core` depends on.

With cutoff (what pib does): the change is committed in lib's checkout and
`pib build` runs; lib is rebuilt into the same bytes, so core and the image stay.
Without cutoff (what keying dependents by their dependencies' input keys
does): the same kind of change, then lib and core rebuilt and the image
remade, as `pib build --force lib core` followed by `pib image`. Both in one
run, on the same workspace, alternating, medians of --runs.

Run: python3 bench/cutoff.py [--runs N] [--workspace DIR]
  --workspace: an example workspace that is configured and built already
  (e.g. the one scripts/demo leaves in _work/demo/example); without it a fresh
  one is laid out, configured and built first (not timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.media import fresh_workspace, pib
from bench.report import write_section
from pib.run import minimal_env, run

GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@pib.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@pib.invalid", "GIT_CONFIG_NOSYSTEM": "1"}


def comment_change(ws: Path, n: int) -> None:
    """A committed comment-only change in lib's release.c."""
    repo = ws / "projects" / "lib"
    src = repo / "src" / "release.c"
    src.write_text(src.read_text() + f"/* bench change {n} */\n")
    env = minimal_env(GIT_ENV)
    env["GIT_CONFIG_GLOBAL"] = "/dev/null"
    run(["git", "commit", "-q", "-am", f"lib: comment {n}"], cwd=repo, env=env, what="git commit")


def built(report: dict[str, Any]) -> list[str]:
    return [c["component"] for c in report["components"] if c["action"] == "built"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workspace", type=Path)
    args = ap.parse_args()
    ws = args.workspace.resolve() if args.workspace else fresh_workspace(
        Path(tempfile.mkdtemp(prefix="pib-bench-cutoff-")))
    noop, _ = pib(ws, "build")
    assert noop["ok"] and not built(noop), "the workspace must be built first"

    with_walls: list[float] = []
    without_walls: list[float] = []
    with_built: set[tuple[str, ...]] = set()
    with_image: set[str] = set()
    cutoffs: set[str] = set()
    without_built: set[tuple[str, ...]] = set()
    n = 0
    for _ in range(args.runs):
        n += 1
        comment_change(ws, n)
        out, wall = pib(ws, "build")
        with_walls.append(wall)
        with_built.add(tuple(built(out)))
        with_image.add(out["image"]["action"])
        cutoffs.add(repr(out["cutoff"]))

        n += 1
        comment_change(ws, n)
        forced, wall1 = pib(ws, "build", "--force", "lib", "core")
        _image, wall2 = pib(ws, "image")
        without_walls.append(wall1 + wall2)
        without_built.add(tuple(built(forced)))

    w, wo = statistics.median(with_walls), statistics.median(without_walls)
    load = os.getloadavg()
    body = f"""\
The example platform (`examples/platform`): a comment-only change in `lib` (committed), which `core`
depends on; medians of {args.runs} runs of each, alternating, on one workspace. Load average when the run
ended: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min).

| | wall time | components built | image |
|---|---:|---|---|
| with cutoff: `pib build` | {w:.2f} s | {", ".join(sorted(set().union(*with_built))) or "none"} | {", ".join(sorted(with_image))} |
| without cutoff: `pib build --force lib core` + `pib image` | {wo:.2f} s | \
{", ".join(sorted(set().union(*without_built)))} | remade |

Without cutoff / with cutoff: {wo / w:.1f}x. Cutoff reported by `pib build --json`: {", ".join(sorted(cutoffs))}.

"Without cutoff" is what keying a dependent by its dependencies' input keys does for this change: lib's
key changes, so core's key and the image's inputs change with it, and both are made again. With cutoff,
core is keyed by lib's output digest, which the comment does not change.
"""
    write_section("cutoff", "python3 bench/cutoff.py", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
