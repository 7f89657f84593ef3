"""`pib plan`: what `pib build` would do, without doing it; and CI pipelines made from that plan."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pib.build.ci import PlanReport


def register(sub: Any) -> None:
    from pib.cli.common import common_options

    p = sub.add_parser(
        "plan", parents=[common_options()],
        help="what pib build would do with each component (up to date, restorable, build) and why; "
             "or a CI pipeline of it",
        description="Exit status: 0 when nothing must be built, 8 when something must be built (errors keep "
                    "their own codes). With --format gitlab or github the pipeline is the answer: 0 once written.")
    p.add_argument("components", nargs="*", metavar="COMPONENT")
    p.add_argument("--format", choices=("text", "json", "gitlab", "github"), default=None,
                   help="text (default), json (same as --json), gitlab (a child pipeline), github (a workflow)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the pipeline or report here (default: stdout)")
    p.add_argument("--offline", action="store_true", help="ask the local store only")
    p.add_argument("--all", action="store_true",
                   help="pipelines: a job for every component, also those the stores hold (a workflow to commit)")
    p.add_argument("--pib", default="pib", metavar="CMD", help="pipelines: how a job runs pib (default: pib)")
    p.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="pipelines: a shell line every job runs first (repeatable), e.g. installing pib")
    p.add_argument("--runner", default="", metavar="LABEL",
                   help="pipelines: GitLab runner tag, or GitHub runs-on (default: ubuntu-latest)")
    p.add_argument("--environment", default="", metavar="NAME",
                   help="github: the environment build jobs run in (its secrets, its branch rules)")
    p.add_argument("--allow-old-platform", action="store_true")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pib.build import ci, commands
    from pib.cli.common import load_config, want_json

    cfg = load_config(args)
    fmt = args.format or ("json" if want_json(args) else "text")
    report = commands.plan_only(cfg, tuple(args.components) or None, offline=args.offline,
                                allow_old=args.allow_old_platform)
    status = ci.EXIT_MUST_BUILD if report.must_build else 0
    if fmt in ("gitlab", "github"):
        opts = ci.PipelineOptions(pib=args.pib, setup=tuple(args.setup), runner=args.runner, every=args.all,
                                  environment=args.environment, image=not args.components)
        text = ci.render(cfg, report, fmt, opts)
        status = 0
    elif fmt == "json":
        text = json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
    else:
        text = _text(report)
    if args.output:
        ci.write(Path(args.output), text)
    else:
        sys.stdout.write(text)
    if fmt != "json":
        for w in report.warnings:
            print(f"warning: {w}", file=sys.stderr)
    return status


def _text(report: PlanReport) -> str:
    from pib.cli.ui import seconds, table

    rows = []
    for s in report.steps:
        where = f"from {s.stores[0]}" if s.action == "restorable" else ""
        rows.append([s.component, s.action, s.key[:12] if s.key else "pending", where, "; ".join(s.reasons)])
    out = table(rows, ["component", "action", "key", "", "why"]) + "\n"
    todo = report.must_build
    out += (f"must build: {', '.join(todo)}" if todo else "nothing to build") + f" (planned in {seconds(report.seconds)})\n"
    return out
