"""The plan of a build: every component's key and whether (and why) it is stale.

A key depends on inputs (sources, recipe, CBE, baseline, key files) and on the
output digests of the component's dependencies (pib.build.output). A
dependency's output digest is known when it is built and up to date, or
through an equivalence (its input key gave that output before: the last local
build, or signed artifact metadata in a store). Otherwise the dependent's key
is pending: the runner settles it when the dependency is done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from pib import keys
from pib.build import output, state
from pib.build.checkout import SourceState, source_states
from pib.build.env import BuildEnv
from pib.build.sandbox import key_fields
from pib.config.loader import topo_order
from pib.config.types import ComponentConfig, Config
from pib.parallel import parallel_map

# (component, input key) -> (output digest, where the equivalence came from), or None when none is known.
Lookup = Callable[[ComponentConfig, str], tuple[str, str] | None]

BUILT = "built"  # the dependency's proto area as built (or as just built or restored)
PENDING = "pending"  # not known until the dependency is built or restored
LOCAL = "equivalence: last local build"


class Plan(NamedTuple):
    comp: ComponentConfig
    source: SourceState
    doc: dict[str, Any]
    key: str  # "" while pending
    record: state.Record | None
    reasons: tuple[str, ...]  # empty: up to date
    via: Mapping[str, str] = {}  # dependency -> how its output digest is known (BUILT, PENDING, an equivalence)

    @property
    def up_to_date(self) -> bool:
        return not self.reasons

    @property
    def local_only(self) -> bool:
        """Never from or to a shared store: a dirty tree, or a build that may reach the network
        (its output may depend on more than its key)."""
        return self.source.dirty or self.comp.network

    @property
    def pending(self) -> tuple[str, ...]:
        """Dependencies whose output digest is not known yet (then the key is not known either)."""
        return tuple(d for d, how in sorted(self.via.items()) if how == PENDING)


def plan(cfg: Config, names: Sequence[str] | None, benv: BuildEnv, *, lookup: Lookup | None = None) -> list[Plan]:
    """Every named component's plan (all by default, with what they depend on).

    `lookup` finds equivalences in the stores for stale dependencies the local state cannot vouch for.
    """
    comps = topo_order(cfg, tuple(names) if names else None)
    index_dir = cfg.workspace.state_dir / "index"
    states: list[SourceState] = []
    records: dict[str, state.Record | None] = {}
    protos: dict[str, list[str] | None] = {}

    def task(k: int) -> None:
        if k == 0:
            states.extend(source_states([(c.checkout, index_dir / c.name) for c in comps], index_dir / ".walk"))
        else:  # while the working trees are walked: the records, and the proto areas they describe
            records.update(state.load_all(cfg.workspace.state_dir, [c.name for c in comps]))
            for c in comps:
                rec = records[c.name]
                if rec is not None:
                    protos[c.name] = rec.proto_changes(c.proto)

    parallel_map(task, [0, 1], workers=2)
    sources = {c.name: st for c, st in zip(comps, states, strict=True)}
    plans: dict[str, Plan] = {}
    for c in comps:
        outputs: dict[str, str] = {}
        via: dict[str, str] = {}
        for d in c.depends:
            got = _dep_output(plans[d], lookup)
            if got is None:
                via[d] = PENDING
            else:
                outputs[d], via[d] = got
        rec = records[c.name]
        plans[c.name] = _make(cfg, benv, c, sources[c.name], rec, outputs, via,
                              (protos[c.name],) if rec is not None else None)
    return [plans[c.name] for c in comps]


def settle(cfg: Config, benv: BuildEnv, p: Plan, outputs: Mapping[str, str]) -> Plan:
    """`p` keyed by the output digests its dependencies really have now that they are done."""
    return _make(cfg, benv, p.comp, p.source, p.record, {d: outputs[d] for d in p.comp.depends},
                 dict.fromkeys(p.comp.depends, BUILT))


def _dep_output(dp: Plan, lookup: Lookup | None) -> tuple[str, str] | None:
    if not dp.key:
        return None
    rec = dp.record
    if rec is not None and rec.key == dp.key and output.is_current(rec.output):
        assert rec.output is not None
        return rec.output, BUILT if dp.up_to_date else LOCAL
    if lookup is not None and dp.comp.prebuilt and not dp.source.dirty:
        return lookup(dp.comp, dp.key)
    return None


def _make(cfg: Config, benv: BuildEnv, c: ComponentConfig, source: SourceState, rec: state.Record | None,
          outputs: Mapping[str, str], via: Mapping[str, str],
          proto: tuple[list[str] | None] | None = None) -> Plan:
    """`proto`: rec.proto_changes(c.proto), when the caller has it already."""
    pending = sorted(d for d in c.depends if d not in outputs)
    doc = keys.key_document(
        c,
        workspace=cfg.workspace.root,
        tree=source.tree,
        epoch=cfg.workspace.source_date_epoch,
        cbe=benv.key,
        baseline=cfg.platform.min_version,
        dep_outputs={d: outputs.get(d) for d in c.depends},
        isolation=key_fields(cfg, c),
    )
    key = "" if pending else keys.digest(doc)
    return Plan(c, source, doc, key, rec, _reasons(c, key, doc, rec, pending, proto), dict(via))


def _reasons(c: ComponentConfig, key: str, doc: dict[str, Any], rec: state.Record | None,
             pending: Sequence[str], proto: tuple[list[str] | None] | None = None) -> tuple[str, ...]:
    out = [f"key pending: the output of {d} is known once it is built or restored" for d in pending]
    if rec is None:
        return (*out, "never built")
    if rec.key != key:
        unknown = {f"depends.{d}" for d in pending}
        changed = [f"{path} changed" for path, _old, _new in keys.diff(rec.doc, doc) if path not in unknown]
        out += changed
        if not changed and not pending:
            out.append("key changed")
    changed_files = proto[0] if proto is not None else rec.proto_changes(c.proto)
    if changed_files is None:
        out.append("proto area missing")
    elif changed_files:
        more = f" and {len(changed_files) - 5} more" if len(changed_files) > 5 else ""
        out.append(f"proto area changed: {', '.join(changed_files[:5])}{more}")
    return tuple(out)
