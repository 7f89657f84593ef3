"""The `pib` command: parse arguments, call one core function, render its result.

Only this package prints or exits; core modules raise PibError, which is mapped to an exit code here. Imports of the
core happen inside handlers so `pib --help` and a no-op build stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from pib.cli.common import Printable, common_options, emit_json, load_config, want_json

# Command groups living in their own modules; each has register(subparsers).
# Only the one being run is imported.
_EXTENSIONS = {
    "pib.cli.cbe": ("cbe",),
    "pib.cli.store": ("cache", "keygen"),
    "pib.cli.image": ("image", "manifest"),
    "pib.cli.boot": ("boot",),
    "pib.cli.media": ("media",),
    "pib.cli.fetch": ("fetch",),
    "pib.cli.plan": ("plan",),
    "pib.cli.verify": ("verify", "rebuild"),
}
_CORE = ("config", "configure", "build", "live", "ci", "publish", "status", "explain", "clobber")


class _Skipped:
    """Stands in for the parsers of commands not being run: building all of
    them costs more than a no-op build's own work."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


class _OnlySub:
    def __init__(self, sub: Any, only: str | None) -> None:
        self._sub = sub
        self._only = only

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self._only is None or name == self._only:
            return self._sub.add_parser(name, **kwargs)
        return _Skipped()


def _command_of(argv: list[str]) -> str | None:
    """The command word of argv, when it names a known command (else None: build everything)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help", "--version"):
            return None
        if a == "-C":
            i += 2
            continue
        if not a.startswith("-"):
            known = _CORE + tuple(c for cmds in _EXTENSIONS.values() for c in cmds)
            return a if a in known else None
        i += 1
    return None


# --------------------------------------------------------------------------
# handlers


def _cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if want_json(args):
        emit_json({
            "files": [str(f) for f in cfg.files],
            "config": cfg.data,
            "sources": {k: str(v) for k, v in cfg.sources.items()},
        })
        return 0
    print(f"# workspace {cfg.workspace.root}")
    print(f"# files: {', '.join(str(f) for f in cfg.files)}")
    width = max((len(k) for k in cfg.sources), default=10)
    for key, where in sorted(cfg.sources.items()):
        value = _lookup(cfg.data, key)
        print(f"{key.ljust(width)} = {json.dumps(value, default=str)}    # {where}")
    return 0


def _lookup(data: Any, dotted: str) -> Any:
    cur = data
    for part in dotted.replace("[", ".[").split("."):
        if not part:
            continue
        cur = cur[int(part[1:-1])] if part.startswith("[") else cur[part]
    return cur


def _cmd_configure(args: argparse.Namespace) -> int:
    from pib.build import commands

    cfg = load_config(args)
    rep = commands.configure(cfg, update=args.update, allow_old=args.allow_old_platform, install_cbe=not args.no_install,
                             offline=args.offline, wait_for_lock=args.wait)
    if want_json(args):
        emit_json(rep.to_json())
        return 0
    from pib.cli.ui import seconds, table

    if rep.floor.overridden:
        print(f"WARNING: host platform {rep.floor.host.version} is OLDER than the oldest supported "
              f"{rep.floor.minimum}; builds may not run on supported platforms and will not be published",
              file=sys.stderr)
    print(f"host: {rep.floor.host}  (oldest supported: {rep.floor.minimum or 'any'})")
    print(f"build environment: {rep.cbe}")
    rows = [[c.name, c.action, c.branch or "(detached)", (c.head or "")[:12], "dirty" if c.dirty else "clean"]
            for c in rep.checkouts]
    print(table(rows, ["component", "checkout", "branch", "head", "tree"]))
    for c in rep.checkouts:
        if c.note:
            print(f"{c.name}: {c.note}", file=sys.stderr)
    print(f"configured in {seconds(rep.seconds)}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from pib.build import commands
    from pib.build.runner import BuildOptions, State
    from pib.cli.ui import Progress, summary, terminal_size
    from pib.config.loader import topo_order
    from pib.errors import PibError

    cfg = load_config(args)
    opts = BuildOptions(
        jobs=args.jobs or cfg.workspace.jobs,
        keep_going=args.keep_going,
        force=args.force,
        publish=args.publish,
        require_prebuilt=args.require_prebuilt,
        deps_from_store=args.deps_from_store,
    )
    names = tuple(args.components) or None
    order = [c.name for c in topo_order(cfg, names)]
    json_out = want_json(args)

    def on_wait(holder: str) -> None:
        print(f"waiting for another build of this workspace ({holder})", file=sys.stderr)

    ci = args.command == "ci"
    report_path = Path(args.report) if ci and args.report else cfg.workspace.output_dir / "ci-report.json"
    if ci:
        report_path.unlink(missing_ok=True)  # a refused run must not leave the last run's report looking current
    with Progress(order, live=False if json_out or args.quiet else None) as prog:
        report = commands.build(
            cfg, names, opts,
            wait_for_lock=args.wait, allow_old=args.allow_old_platform, offline=args.offline,
            image=not args.no_image, ci=ci, on_event=None if args.quiet and not prog.live else prog.event,
            on_lock_wait=on_wait,
        )
    if args.boot and report.error is None and report.image:
        from pib.image.boot import boot_configured, locate

        result = boot_configured(cfg, locate(cfg.workspace.output_dir, report.image["buildstamp"]))
        report.boot = result.to_json()
        try:
            result.check()
        except PibError as exc:
            report.error = exc
    if ci:
        path = report_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
        print(f"report: {path}", file=sys.stderr)
    if json_out:
        emit_json(report.to_json())
    else:
        for w in report.warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(summary(report, terminal_size(sys.stdout)[0] if sys.stdout.isatty() else None))
        if report.image:
            print(f"image: {report.image.get('dir')} ({report.image.get('action', 'built')})")
            for kind, m in (report.image.get("media") or {}).items():
                print(f"{kind}: {m['path']} ({m['action']})")
        if report.boot:
            b = report.boot
            print(f"boot: {'PASS' if b['passed'] else 'FAIL'} in {b['seconds']:.1f}s: {b['marker_line']}")
        if report.error is not None:
            policy = "other running builds were allowed to finish" if opts.keep_going else \
                "other running builds were stopped"
            print(f"error: {report.error.message} ({policy})", file=sys.stderr)
            for o in report.outcomes:
                if o.action is State.FAILED:
                    print(f"--- {o.component}: {o.detail}", file=sys.stderr)
                    if o.log:
                        print(f"--- full log: {o.log}", file=sys.stderr)
    return report.error.exit_code if report.error is not None else 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from pib.build import commands

    cfg = load_config(args)
    done = commands.publish(cfg, tuple(args.components) or None, wait_for_lock=args.wait)
    if want_json(args):
        emit_json([{"component": p.component, "key": p.key, "stores": list(p.stores), "warnings": list(p.warnings)}
                   for p in done])
        return 0
    for p in done:
        print(f"{p.component} {p.key[:12]}: published to {', '.join(p.stores)}")
        for w in p.warnings:
            print(f"warning: {w}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from pib.build import commands
    from pib.cli.ui import table

    cfg = load_config(args)
    rows = commands.status(cfg, tuple(args.components) or None, remote=args.remote)
    if want_json(args):
        emit_json({"components": [r.to_json() for r in rows]})
        return 0
    out = []
    for r in rows:
        why = "; ".join(r.reasons)
        out.append([r.name, "up to date" if r.up_to_date else "stale", r.key[:12] or "pending",
                    ("dirty" if r.dirty else "clean"), r.next and f"will {r.next}", why])
    print(table(out, ["component", "state", "key", "tree", "next", "why"]))
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from pib.build import commands

    cfg = load_config(args)
    data = commands.explain(cfg, args.component)
    if want_json(args):
        emit_json(data)
        return 0
    print(f"component {data['component']}  key {data['key'] or 'pending'}  "
          f"({'dirty' if data['dirty'] else 'clean'} tree)")
    for dep, how in sorted(data["depends"].items()):
        print(f"dependency {dep}: output digest {how}")
    print(json.dumps(data["document"], indent=2, sort_keys=True))
    if data["up_to_date"]:
        print("up to date with the last local build")
    for label, k in (("last local build", "last_build"), ("newest artifact in the stores", "nearest_artifact")):
        section = data.get(k)
        if section is None:
            print(f"{label}: none")
            continue
        where = f" in {section['store']}" if "store" in section else ""
        if not section["differs"]:
            print(f"{label}{where}: same key {section['key'][:12]}")
            continue
        print(f"{label}{where} ({section['key'][:12]}) differs in:")
        for d in section["differs"]:
            print(f"  {d['field']}: {json.dumps(d['was'])} -> {json.dumps(d['now'])}")
        if section.get("changed_files"):
            print("  files changed since then: " + ", ".join(section["changed_files"][:20])
                  + (f" and {len(section['changed_files']) - 20} more" if len(section["changed_files"]) > 20 else ""))
    return 0


def _cmd_clobber(args: argparse.Namespace) -> int:
    from pib.build import commands

    cfg = load_config(args)
    if args.all:
        names = list(cfg.names)
    elif args.components:
        names = args.components
    else:
        print("pib clobber: name components, or --all", file=sys.stderr)
        return 2
    reps = commands.clobber(cfg, names, wait_for_lock=args.wait, force=args.force)
    if want_json(args):
        emit_json([r._asdict() for r in reps])
        return 0
    for r in reps:
        print(f"{r.component}: proto area {'removed' if r.removed_proto else 'absent'}, "
              f"checkout {'cleaned' if r.cleaned_checkout else 'absent'}")
    return 0


# --------------------------------------------------------------------------
# parser


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, just that command's sub-parser is built."""
    common = common_options()
    p = argparse.ArgumentParser(prog="pib", description="Build platform images from components, "
                                "never rebuilding what has not changed.", parents=[common])
    from pib import __version__

    p.add_argument("--version", action="version", version=f"pib {__version__}")
    sub: Any = _OnlySub(p.add_subparsers(dest="command", metavar="COMMAND"), only)

    cfg = sub.add_parser("config", help="show the resolved configuration", parents=[common])
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    show = cfg_sub.add_parser("show", help="print resolved values and where each came from", parents=[common])
    show.set_defaults(func=_cmd_config_show)

    c = sub.add_parser("configure", help="check the host, install the build environment, check out components",
                       parents=[common])
    c.add_argument("--update", action="store_true", help="fetch and fast-forward every component")
    c.add_argument("--allow-old-platform", action="store_true", help="continue on a host older than the floor (loudly)")
    c.add_argument("--no-install", action="store_true", help="do not install a missing build environment")
    c.add_argument("--offline", action="store_true",
                   help="install the build environment from the download cache and local store only")
    c.add_argument("--wait", action="store_true", help="wait for a build of this workspace to end")
    c.set_defaults(func=_cmd_configure)

    for name, helptext in (("build", "build stale components (and the image)"), ("live", "same as build"),
                           ("ci", "CI entry point: build everything, publish prebuilt components, write a JSON report")):
        b = sub.add_parser(name, help=helptext, parents=[common])
        if name == "ci":
            b.add_argument("--report", metavar="FILE", help="JSON report (default: output/ci-report.json)")
            b.set_defaults(publish=True)
        b.add_argument("components", nargs="*", metavar="COMPONENT")
        b.add_argument("-j", "--jobs", type=int, default=0, help="components built at once (default: workspace.jobs)")
        b.add_argument("-k", "--keep-going", action="store_true",
                       help="after a failure, let other builds finish (default: stop them)")
        b.add_argument("--force", action="store_true", help="rebuild even if up to date; do not restore")
        if name != "ci":
            b.add_argument("--publish", action="store_true", help="upload artifacts of prebuilt components")
        b.add_argument("--offline", action="store_true",
                       help="no network: the local store and the download cache only (see pib fetch)")
        b.add_argument("--require-prebuilt", action="store_true",
                       help="a prebuilt component without an artifact is an error")
        b.add_argument("--deps-from-store", action="store_true",
                       help="build only the named components and those not prebuilt (none named: the image); "
                            "every other one must be up to date or restored from a store, else it is an error "
                            "(a CI job's build)")
        b.add_argument("--no-image", action="store_true", help="build components only")
        b.add_argument("--boot", action="store_true", help="then boot the image in QEMU (like pib boot)")
        b.add_argument("--wait", action="store_true", help="wait for another build of this workspace to end")
        b.add_argument("--allow-old-platform", action="store_true")
        b.add_argument("-q", "--quiet", action="store_true", help="no progress view")
        b.set_defaults(func=_cmd_build)

    pb = sub.add_parser("publish", help="upload signed artifacts of built, clean prebuilt components",
                        parents=[common])
    pb.add_argument("components", nargs="*", metavar="COMPONENT")
    pb.add_argument("--wait", action="store_true")
    pb.set_defaults(func=_cmd_publish)

    s = sub.add_parser("status", help="up to date or stale, and why", parents=[common])
    s.add_argument("components", nargs="*", metavar="COMPONENT")
    s.add_argument("--remote", action="store_true",
                   help="also ask the remote stores which stale components a build would restore (network)")
    s.set_defaults(func=_cmd_status)

    e = sub.add_parser("explain", help="show a component's key document and what changed", parents=[common])
    e.add_argument("component")
    e.set_defaults(func=_cmd_explain)

    cl = sub.add_parser("clobber", help="remove a component's proto area, build record and build products",
                        parents=[common])
    cl.add_argument("components", nargs="*", metavar="COMPONENT")
    cl.add_argument("--all", action="store_true")
    cl.add_argument("--wait", action="store_true")
    cl.add_argument("--force", action="store_true", help="also delete untracked files no .gitignore ignores")
    cl.set_defaults(func=_cmd_clobber)

    for mod_name, commands in _EXTENSIONS.items():
        if only is not None and only not in commands:
            continue
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name != mod_name:
                raise
            continue
        mod.register(sub)
    return p


# After a stop signal, how long pib may take to clean up before it ends anyway: a worker thread stuck in a
# store request (or anything else that does not return) must not hold the process past it.
STOP_GRACE = 10.0


def _stop_on_signals() -> None:
    """SIGTERM (how CI cancels) and SIGHUP (a closed terminal) stop pib the way Ctrl-C does: running builds
    are killed, nothing half-made is kept, exit 130 (within STOP_GRACE seconds, whatever is stuck)."""
    import signal
    import threading

    def stop(signum: int, frame: object) -> None:
        if not any(t.name == "pib-stop" for t in threading.enumerate()):
            threading.Thread(target=_end_after_grace, name="pib-stop", daemon=True).start()
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # started in the background: stays ignored
        signal.signal(signal.SIGINT, stop)


def _end_after_grace() -> None:
    """The last resort after a stop signal: whatever the main thread waits for, end the process. What a
    thread leaves half-made then is what a kill leaves, and the next build sweeps it."""
    import time

    time.sleep(STOP_GRACE)
    _exit_now(130, "pib: interrupted; a stuck operation was abandoned\n")


def _exit_now(code: int, message: str = "") -> None:
    import os

    try:
        if message:
            sys.stderr.write(message)
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def _ended_by_signal(rc: int) -> int:
    """Exit now when a stop signal ended the command and another thread still runs (a store request that
    never returns): the interpreter's exit would join it, daemon or not (concurrent.futures joins its
    workers), for as long as it takes."""
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.name != "pib-stop"]
    if rc == 130 and others and any(t.name == "pib-stop" for t in threading.enumerate()):
        _exit_now(130)
    return rc


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    _stop_on_signals()
    p = parser(_command_of(argv))
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Printable(sys.stdout), Printable(sys.stderr)  # type: ignore[assignment]
    try:
        return _ended_by_signal(_run(args))
    finally:
        sys.stdout, sys.stderr = streams


def _run(args: argparse.Namespace) -> int:
    from pib.errors import PibError

    try:
        rc = int(args.func(args))
        sys.stdout.flush()  # a reader that went away shows up here, not in the interpreter's exit
        return rc
    except BrokenPipeError:
        # The reader went away (`pib config show | head -1`): nothing more to say, and nowhere to say it.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except PibError as exc:
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        if want_json(args):
            emit_json({"error": exc.to_json()})
        print(f"pib: error: {exc}", file=sys.stderr)
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pib: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line only: expected failures are PibErrors above
        return _internal_error(args, exc)


def _internal_error(args: argparse.Namespace, exc: Exception) -> int:
    """A bug in pib: a short message and where the traceback went, not the traceback itself."""
    import os
    import time
    import traceback

    from pib.errors import EXIT_CODES, PibError, Reason

    text = "".join(traceback.format_exception(exc))
    if getattr(args, "debug", False):
        print(text, file=sys.stderr, end="")
    log = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pib" / "internal-errors.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pib {' '.join(sys.argv[1:])}\n{text}")
        where = f"the traceback is in {log}"
    except OSError as why:
        where = f"its traceback could not be kept ({why.strerror}); run again with --debug to see it"
    err = PibError(f"internal error (a bug in pib): {type(exc).__name__}: {str(exc)[:200]}", reason=Reason.INTERNAL,
                   hint=f"{where}; please report it")
    if want_json(args):
        emit_json({"error": err.to_json()})
    print(f"pib: error: {err}", file=sys.stderr)
    return EXIT_CODES[Reason.INTERNAL]
