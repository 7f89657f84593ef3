"""The plan of a build: every component's key and whether (and why) it is stale.

Keys depend only on inputs (sources, recipe, CBE, baseline, key files and the
keys of dependencies), so the whole plan is known before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from pib import keys
from pib.build import state
from pib.build.checkout import SourceState, source_states
from pib.build.env import BuildEnv
from pib.build.sandbox import key_fields
from pib.config.loader import topo_order
from pib.config.types import ComponentConfig, Config


class Plan(NamedTuple):
    comp: ComponentConfig
    source: SourceState
    doc: dict[str, Any]
    key: str
    record: state.Record | None
    reasons: tuple[str, ...]  # empty: up to date

    @property
    def up_to_date(self) -> bool:
        return not self.reasons

    @property
    def local_only(self) -> bool:
        """Never from or to a shared store: a dirty tree, or a build that may reach the network
        (its output may depend on more than its key)."""
        return self.source.dirty or self.comp.network


def plan(cfg: Config, names: Sequence[str] | None, benv: BuildEnv) -> list[Plan]:
    comps = topo_order(cfg, tuple(names) if names else None)
    index_dir = cfg.workspace.state_dir / "index"
    states = source_states([(c.checkout, index_dir / c.name) for c in comps])
    sources = {c.name: st for c, st in zip(comps, states, strict=True)}
    plans: dict[str, Plan] = {}
    for c in comps:
        doc = keys.key_document(
            c,
            workspace=cfg.workspace.root,
            tree=sources[c.name].tree,
            epoch=cfg.workspace.source_date_epoch,
            cbe=benv.key,
            baseline=cfg.platform.min_version,
            dep_keys={d: plans[d].key for d in c.depends},
            isolation=key_fields(cfg, c),
        )
        key = keys.digest(doc)
        rec = state.load(cfg.workspace.state_dir, c.name)
        plans[c.name] = Plan(c, sources[c.name], doc, key, rec, _reasons(c, key, doc, rec))
    return [plans[c.name] for c in comps]


def _reasons(c: ComponentConfig, key: str, doc: dict[str, Any], rec: state.Record | None) -> tuple[str, ...]:
    if rec is None:
        return ("never built",)
    out: list[str] = []
    if rec.key != key:
        for path, _old, _new in keys.diff(rec.doc, doc):
            out.append(f"{path} changed")
        if not out:
            out.append("key changed")
    changed = rec.proto_changes(c.proto)
    if changed is None:
        out.append("proto area missing")
    elif changed:
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        out.append(f"proto area changed: {', '.join(changed[:5])}{more}")
    return tuple(out)
