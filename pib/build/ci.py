"""What a build would do (`pib plan`), and CI pipelines made from it.

`pib plan` runs the planning of `pib build` (pib.build.commands.plan_only) and
reports, per component, what the build would take: up to date, restorable
from a store, or to be built. From that report this module writes a GitLab CI
child pipeline or a GitHub Actions workflow: one job per component no shared
store holds, `needs:` from the dependency graph, and a last job that makes
the image from the stores. Jobs on different machines meet only through the
shared stores. A component that is not prebuilt is never published (RFD 141),
so it gets no job of its own: the last job, which makes the image, builds it
from its commit after restoring its prebuilt dependencies.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pib.config.types import Config
from pib.errors import PibError, Reason

Action = Literal["up-to-date", "restorable", "build"]
UP_TO_DATE: Action = "up-to-date"
RESTORABLE: Action = "restorable"
BUILD: Action = "build"

EXIT_MUST_BUILD = 8  # `pib plan`: something must be built (0: nothing; errors keep their own codes)


class Step(NamedTuple):
    """One component in a plan: what `pib build` would do with it, and why."""

    component: str
    action: Action
    key: str  # "" while pending on a dependency that must be built first
    depends: tuple[str, ...]
    stores: tuple[str, ...]  # stores that hold the artifact of this key, the machine's local store first
    reasons: tuple[str, ...]  # why it is not up to date (empty: it is)
    via: dict[str, str]  # dependency -> how its output digest is known (pib.build.plan)
    prebuilt: bool
    local_only: bool  # dirty tree or network build: never from or to a shared store

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "action": self.action, "key": self.key or None,
                "key_pending": not self.key, "depends": list(self.depends), "stores": list(self.stores),
                "reasons": list(self.reasons), "via": dict(self.via), "prebuilt": self.prebuilt,
                "local_only": self.local_only}


class PlanReport(NamedTuple):
    steps: tuple[Step, ...]
    seconds: float
    warnings: tuple[str, ...] = ()

    @property
    def must_build(self) -> tuple[str, ...]:
        return tuple(s.component for s in self.steps if s.action == BUILD)

    def to_json(self) -> dict[str, Any]:
        return {"components": [s.to_json() for s in self.steps], "must_build": list(self.must_build),
                "seconds": round(self.seconds, 3), "warnings": list(self.warnings)}


# --------------------------------------------------------------------------
# Pipelines


class PipelineOptions(NamedTuple):
    pib: str = "pib"  # how a job runs pib
    setup: tuple[str, ...] = ()  # shell lines every job runs first (install pib, ...)
    runner: str = ""  # GitLab: a runner tag; GitHub: runs-on ("" = ubuntu-latest)
    every: bool = False  # a job for every component, also those the stores hold (a workflow to commit)
    environment: str = ""  # GitHub: the environment build jobs run in (whose secrets only protected branches get)
    image: bool = True  # the last job makes the image (a plan of some components only: no image job)


_DEFAULTS = PipelineOptions()


class Job(NamedTuple):
    component: str
    needs: tuple[str, ...]  # components whose jobs must finish first


def jobs(cfg: Config, report: PlanReport, *, every: bool = False) -> list[Job]:
    """The component jobs: prebuilt components no shared store holds (all with `every`), in dependency order.

    A job needs every job of its dependency closure (not only of its direct dependencies): `pib build X`
    restores X's whole closure, and a dependency the stores hold may itself depend on one that gets a job.
    Components that are not prebuilt get no job: the last job builds them (`unpublished`).
    """
    local = cfg.local_store.name
    by_name = {s.component: s for s in report.steps}
    _check_shareable(cfg, report)
    chosen = [s.component for s in report.steps if s.prebuilt
              and (every or s.action == BUILD or not any(n != local for n in s.stores))]
    closure: dict[str, set[str]] = {}
    for s in report.steps:  # dependency order: a dependency's closure is known first
        closure[s.component] = set().union(*({d} | closure[d] for d in s.depends)) if s.depends else set()
    out = []
    for name in chosen:
        wanted = closure[name] & set(chosen)
        # Only the nearest: a job that another wanted job already waits for is implied.
        direct = {d for d in wanted if not any(d in closure[o] for o in wanted)}
        out.append(Job(name, tuple(s for s in by_name if s in direct)))
    return out


def unpublished(report: PlanReport) -> tuple[str, ...]:
    """Components that are not prebuilt: never published, so the last job of a pipeline builds them."""
    return tuple(s.component for s in report.steps if not s.prebuilt)


def _check_shareable(cfg: Config, report: PlanReport) -> None:
    if not any(s.publish for s in cfg.stores):
        raise PibError("a CI pipeline needs a shared store that takes published artifacts, and none is configured",
                       reason=Reason.CONFIG, where=cfg.sources.get("store"),
                       hint="add an http or s3 [[store]] (publish = true) to pib.toml; see docs/ci.md")
    local = {s.component for s in report.steps if not s.prebuilt}
    for s in report.steps:
        c = cfg.component(s.component)
        if s.local_only:
            why = "is built with network access" if c.network else "has uncommitted changes"
            raise PibError(f"component {c.name!r} {why}, so its artifacts are never shared and its build is not "
                           "the commit CI checks out", reason=Reason.PUBLISH,
                           where=cfg.sources.get(f"components.{c.name}.network", c.where) if c.network else c.where,
                           hint="commit the changes (CI builds commits)" if not c.network
                           else "declare its downloads as sources and drop network = true")
        behind = [d for d in s.depends if d in local]
        if c.prebuilt and behind:
            # Its artifact would be keyed by an output only the job that built it has: every job restoring it
            # would have to rebuild that dependency into the very same bytes first.
            raise PibError(
                f"component {c.name!r} is prebuilt but depends on {behind[0]!r}, which is not: CI jobs on separate "
                f"machines share only published artifacts, and {behind[0]} is never published",
                reason=Reason.CONFIG, where=cfg.sources.get(f"components.{c.name}.depends", c.where),
                hint=f"set prebuilt = true for {behind[0]}, or drop prebuilt = true from {c.name}, in pib.toml")


def _workspace_dir(cfg: Config) -> str:
    """The workspace's directory relative to the top of its git repository (what a CI job checks out)."""
    root = cfg.workspace.root.resolve()
    for top in (root, *root.parents):
        if (top / ".git").exists():
            rel = root.relative_to(top).as_posix()
            return "" if rel == "." else rel
    raise PibError(f"the workspace {root} is not in a git repository: CI checks out a repository",
                   reason=Reason.CONFIG, hint="commit the workspace (pib.toml and its files) to a git repository")


def _pib(opts: PipelineOptions, wsdir: str, *args: str) -> str:
    head = [opts.pib] + (["-C", wsdir] if wsdir else [])
    return " ".join([*head, *args])


def _image_lines(cfg: Config, opts: PipelineOptions, wsdir: str) -> list[str]:
    boot = ["--boot"] if cfg.image is not None and cfg.image.kernels else []
    return [_pib(opts, wsdir, "configure"), _pib(opts, wsdir, "build", "--deps-from-store", *boot)]


def _last_job(cfg: Config, report: PlanReport, opts: PipelineOptions) -> str:
    """What the last job does: "image" (make it, building the unpublished components), "local" (build the
    unpublished components of a plan without an image) or "" (no last job)."""
    if cfg.image is not None and opts.image:
        return "image"
    return "local" if unpublished(report) else ""


def _local_lines(opts: PipelineOptions, wsdir: str, names: tuple[str, ...]) -> list[str]:
    return [_pib(opts, wsdir, "configure"), _pib(opts, wsdir, "build", *names, "--deps-from-store", "--no-image")]


def _build_lines(opts: PipelineOptions, wsdir: str, name: str) -> list[str]:
    return [_pib(opts, wsdir, "configure"), _pib(opts, wsdir, "build", name, "--publish", "--deps-from-store")]


def gitlab(cfg: Config, report: PlanReport, opts: PipelineOptions = _DEFAULTS) -> str:
    """A GitLab CI child pipeline: a job per component to build, then the image."""
    wsdir = _workspace_dir(cfg)
    todo = jobs(cfg, report, every=opts.every)
    names = {j.component: f"build:{j.component}" for j in todo}
    doc: dict[str, Any] = {"stages": ["build", "image"]}
    tags = {"tags": [opts.runner]} if opts.runner else {}
    for j in todo:
        doc[names[j.component]] = {
            "stage": "build", **tags,
            "needs": [names[d] for d in j.needs],
            "script": [*opts.setup, *_build_lines(opts, wsdir, j.component)],
        }
    last = _last_job(cfg, report, opts)
    if last == "image":
        out = cfg.workspace.output_dir.resolve()
        artifacts: dict[str, Any] = {}
        if out.is_relative_to(cfg.workspace.root.resolve()):
            rel = out.relative_to(cfg.workspace.root.resolve()).as_posix()
            artifacts = {"artifacts": {"paths": [f"{wsdir}/{rel}/" if wsdir else f"{rel}/"], "expire_in": "1 week"}}
        doc["image:boot"] = {
            "stage": "image", **tags,
            "needs": [names[j.component] for j in todo],
            "script": [*opts.setup, *_image_lines(cfg, opts, wsdir)],
            **artifacts,
        }
    elif last == "local":
        doc["build:unpublished"] = {
            "stage": "image", **tags,
            "needs": [names[j.component] for j in todo],
            "script": [*opts.setup, *_local_lines(opts, wsdir, unpublished(report))],
        }
    if not todo and not last:
        # A child pipeline must have a job.
        doc["up-to-date"] = {"stage": "build", **tags, "needs": [],
                             "script": ["echo every component is in the stores: nothing to build"]}
    return _header("GitLab CI child pipeline", report, "image:boot" if last == "image" else "build:unpublished") \
        + to_yaml(doc)


_GITHUB_ID = re.compile(r"[^A-Za-z0-9_-]")


def github(cfg: Config, report: PlanReport, opts: PipelineOptions = _DEFAULTS) -> str:
    """A GitHub Actions workflow with the same graph as the GitLab pipeline."""
    wsdir = _workspace_dir(cfg)
    todo = jobs(cfg, report, every=opts.every)
    ids: dict[str, str] = {}
    for j in todo:
        base = "build-" + _GITHUB_ID.sub("-", j.component)
        ident, n = base, 1
        while ident in ids.values():
            n += 1
            ident = f"{base}-{n}"
        ids[j.component] = ident
    secrets = _secret_env(cfg)
    key_env = cfg.trust.signing_key_env or "PIB_SIGNING_KEY"
    # The signing key arrives as a secret's text; pib reads it from a file named by trust.signing_key_env.
    key_step = {"name": "signing key from the secret", "run": "\n".join([
        'umask 077',
        'printf "%s\\n" "$PIB_SIGNING_KEY_TEXT" > "$RUNNER_TEMP/pib-signing.key"',
        f'echo "{key_env}=$RUNNER_TEMP/pib-signing.key" >> "$GITHUB_ENV"',
    ]), "env": {"PIB_SIGNING_KEY_TEXT": "${{ secrets.PIB_SIGNING_KEY }}"}}
    runs_on = opts.runner or "ubuntu-latest"
    job_docs: dict[str, Any] = {}
    for j in todo:
        job_docs[ids[j.component]] = {
            "name": f"build {j.component}",
            "runs-on": runs_on,
            "needs": [ids[d] for d in j.needs],
            "steps": [{"uses": "actions/checkout@v4"}, key_step,
                      {"name": f"pib build {j.component}",
                       "run": "\n".join([*opts.setup, *_build_lines(opts, wsdir, j.component)])}],
        }
        if not j.needs:
            del job_docs[ids[j.component]]["needs"]
        if opts.environment:
            job_docs[ids[j.component]]["environment"] = opts.environment
    last = _last_job(cfg, report, opts)
    if last or not todo:
        steps: list[dict[str, Any]] = [{"uses": "actions/checkout@v4"}]
        if last == "image":
            steps.append({"name": "pib build (image from the stores)",
                          "run": "\n".join([*opts.setup, *_image_lines(cfg, opts, wsdir)])})
        elif last == "local":
            steps.append({"name": "pib build (components that are not prebuilt)",
                          "run": "\n".join([*opts.setup, *_local_lines(opts, wsdir, unpublished(report))])})
        else:
            steps.append({"name": "nothing to build", "run": "echo every component is in the stores"})
        title = {"image": "image", "local": "unpublished components", "": "up to date"}[last]
        job_docs["image" if last != "local" else "unpublished"] = {
            "name": title, "runs-on": runs_on, **({"needs": [ids[j.component] for j in todo]} if todo else {}),
            "steps": steps}
    doc: dict[str, Any] = {
        "name": "pib platform",
        "on": {"workflow_dispatch": {}, "push": {"branches": ["main"]}},
        "permissions": {"contents": "read"},
        "concurrency": {"group": "pib-${{ github.ref }}", "cancel-in-progress": False},
    }
    if secrets:
        doc["env"] = {name: f"${{{{ secrets.{name} }}}}" for name in secrets}
    doc["jobs"] = job_docs
    return _header("GitHub Actions workflow", report, "image" if last != "local" else "unpublished") + to_yaml(doc)


def _secret_env(cfg: Config) -> list[str]:
    """Environment variables the stores read their credentials from (names only: the values are secrets)."""
    from pib.config.types import HttpStoreSpec, S3StoreSpec

    out: list[str] = []
    for s in cfg.stores:
        if isinstance(s, HttpStoreSpec):
            out += [n for n in (s.token_env, s.user_env, s.password_env) if n]
        elif isinstance(s, S3StoreSpec) and s.profile is None:
            out += ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    return list(dict.fromkeys(out))


def _header(what: str, report: PlanReport, last: str) -> str:
    todo = ", ".join(report.must_build) or "nothing"
    out = f"# {what} written by `pib plan`; to build: {todo}\n"
    local = unpublished(report)
    if local:
        out += (f"# Not prebuilt, so never published (RFD 141): {', '.join(local)}. No other job could restore\n"
                f"# what a job of its own built, so the {last} job builds it from its commit, after restoring\n"
                "# its prebuilt dependencies from the stores.\n")
    return out


# --------------------------------------------------------------------------
# YAML: the block style of the small subset pipelines use (mappings, sequences, strings, numbers, booleans)

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_:.-]*")


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return json.dumps(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a YAML double-quoted scalar
    raise TypeError(f"not a pipeline value: {v!r}")


def _key(k: str) -> str:
    # `on`, `yes`... are booleans to YAML 1.1 readers only as values; keys stay plain where they can.
    return k if _PLAIN_KEY.fullmatch(k) and not k.endswith(":") else json.dumps(k)


def to_yaml(doc: dict[str, Any]) -> str:
    return "\n".join(_lines(doc, 0)) + "\n"


def _lines(v: Any, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(v, dict):
        for k, item in v.items():
            if isinstance(item, dict | list) and item:
                out += [f"{pad}{_key(k)}:", *_lines(item, indent + 2)]
            elif isinstance(item, str) and "\n" in item and not item[0].isspace() and not item.endswith("\n\n"):
                # A literal block (scripts stay readable): "|" keeps one final newline, "|-" none.
                body, chomp = (item[:-1], "") if item.endswith("\n") else (item, "-")
                out += [f"{pad}{_key(k)}: |{chomp}",
                        *(f"{pad}  {line}" if line else "" for line in body.split("\n"))]
            else:
                out.append(f"{pad}{_key(k)}: {_empty(item) if isinstance(item, dict | list) else _scalar(item)}")
    elif isinstance(v, list):
        for item in v:
            if isinstance(item, dict) and item:
                inner = _lines(item, indent + 2)
                out += [f"{pad}- {inner[0][indent + 2:]}", *inner[1:]]
            elif isinstance(item, list) and item:
                raise TypeError("nested sequences are not used in pipelines")
            else:
                out.append(f"{pad}- {_empty(item) if isinstance(item, dict | list) else _scalar(item)}")
    else:
        out.append(pad + _scalar(v))
    return out


def _empty(v: dict[str, Any] | list[Any]) -> str:
    return "{}" if isinstance(v, dict) else "[]"


def write(path: Path, text: str) -> None:
    from pib.fsutil import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def render(cfg: Config, report: PlanReport, fmt: str, opts: PipelineOptions) -> str:
    if fmt == "gitlab":
        return gitlab(cfg, report, opts)
    if fmt == "github":
        return github(cfg, report, opts)
    raise PibError(f"unknown pipeline format {fmt!r}", reason=Reason.USAGE, hint="use gitlab or github")

