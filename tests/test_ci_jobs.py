"""The job graph of a CI pipeline and its YAML, without services."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pib.build.ci import BUILD, EXIT_MUST_BUILD, RESTORABLE, PlanReport, Step, jobs, to_yaml
from pib.config.loader import load
from pib.errors import EXIT_CODES


def _cfg(tmp_path: Path, graph: dict[str, tuple[str, ...]]) -> Any:
    comps = "".join(f'[components.{n}]\nsource = "/nowhere/{n}"\nbuild = ["true"]\nprebuilt = true\n'
                    f"depends = {list(d)!r}\n".replace("'", '"') for n, d in graph.items())
    (tmp_path / "pib.toml").write_text(f'[platform]\nmin_version = "1"\n{comps}'
                                       '[[store]]\nname = "shared"\ntype = "http"\nurl = "http://127.0.0.1:9/"\n')
    return load(tmp_path, local=False)


def _step(name: str, action: Any, depends: tuple[str, ...], stores: tuple[str, ...] = ()) -> Step:
    return Step(name, action, "k" + name, depends, stores, (), {}, True, False)


def test_a_job_waits_for_jobs_behind_a_dependency_the_store_holds(tmp_path: Path) -> None:
    # y is in the shared store, but the z it depends on is not (built here, never published): building x
    # restores its whole closure, so x's job must wait for z's.
    cfg = _cfg(tmp_path, {"z": (), "y": ("z",), "x": ("y",), "w": ("x", "z")})
    report = PlanReport((_step("z", BUILD, ()), _step("y", RESTORABLE, ("z",), ("shared",)),
                         _step("x", BUILD, ("y",)), _step("w", BUILD, ("x", "z"))), 0.0)
    got = {j.component: j.needs for j in jobs(cfg, report)}
    assert got == {"z": (), "x": ("z",), "w": ("x",)}  # w's need of z is implied by x's
    # Restorable from the local store only is not in the stores CI jobs share.
    local = report._replace(steps=(report.steps[0]._replace(action=RESTORABLE, stores=("local",)),
                                   *report.steps[1:]))
    assert "z" in {j.component for j in jobs(cfg, local)}
    assert {j.component for j in jobs(cfg, report, every=True)} == {"z", "y", "x", "w"}


def test_yaml_reads_back_as_written() -> None:
    from ruamel.yaml import YAML

    doc = {"on": {"push": {"branches": ["main"]}, "workflow_dispatch": {}},
           "build:a b": {"needs": [], "script": ['echo "x: y" # not a comment', "yes", "${{ secrets.K }}", "*a", "- b"],
                         "run": "line one\n  indented: two\n\nlast", "r2": "a\nb\n", "r3": " lead\nx"},
           "steps": [{"uses": "actions/checkout@v4"}, {"name": "n", "env": {"K": "'q'"}}], "n": 3, "t": True}
    back = YAML(typ="safe").load(io.StringIO(to_yaml(doc)))
    assert back == doc


def test_must_build_has_an_exit_status_no_error_uses() -> None:
    assert EXIT_MUST_BUILD not in {0, 1, *EXIT_CODES.values()}
