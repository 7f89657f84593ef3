"""What an image is traced to: the facts for its SBOMs and its signed provenance.

The image step (pib.image) writes the SBOMs from a Bill and asks an Attest
callback to sign the provenance; both are made here, where the plan, the
CBE lock and the signing keys are known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import pib
from pib.artifacts import provenance
from pib.artifacts.signing import Signer
from pib.config.types import ComponentConfig, Config, Pinned, UrlOrigin
from pib.image.sbom import Bill, BuildEnvFacts, ComponentFacts, EnvPackage, SourceFile
from pib.image.write import Attest


class Built(NamedTuple):
    """A component as it went into the image."""

    comp: ComponentConfig
    key: str
    tree: str
    commit: str | None
    dirty: bool


def _origin(p: Pinned) -> str:
    o = p.origin
    return o.url if isinstance(o, UrlOrigin) else f"apt {o.spec()}"


def bill(cfg: Config, built: Sequence[Built], builder: str) -> Bill:
    comps = tuple(
        ComponentFacts(b.comp.name, b.key, b.comp.source, b.commit, b.tree, b.dirty, b.comp.license,
                       tuple(SourceFile(p.name, p.sha256, _origin(p)) for p in b.comp.sources))
        for b in built)
    return Bill(cfg.workspace.name, comps, _environment(cfg), builder, pib.__version__)


def _environment(cfg: Config) -> BuildEnvFacts | None:
    if cfg.cbe is None:
        return None
    from pib.cbe.pins import load

    lock = load(cfg.cbe.lock)
    return BuildEnvFacts(lock.name, lock.version, lock.digest, lock.provider,
                         tuple(EnvPackage(p.name, p.version, p.arch, p.sha256) for p in lock.packages))


def signer(cfg: Config) -> Signer:
    """The workspace's signing key when one is configured, else this machine's key (trusted here only)."""
    from pib.artifacts.policy import machine_signer, publishing_signer

    if cfg.trust.signing_key is not None or (cfg.trust.signing_key_env and _env(cfg.trust.signing_key_env)):
        return publishing_signer(cfg)
    return machine_signer()[0]


def _env(name: str) -> str | None:
    import os

    return os.environ.get(name) or None


def dependencies(b: Bill) -> list[provenance.Dependency]:
    """Each component's source and artifact, its declared sources, and the CBE's packages."""
    deps: list[provenance.Dependency] = []
    for c in b.components:
        digest = {"gitTree": c.tree, **({"gitCommit": c.commit} if c.commit else {})}
        uri = f"git+{c.repository}@{c.commit}" if c.repository and c.commit else c.repository
        deps.append(provenance.Dependency(f"source:{c.name}", uri, digest, {"dirty": c.dirty}))
        deps.append(provenance.Dependency(
            f"artifact:{c.name}", f"pib:artifact/{c.name}/{c.key}", {"pibKey": c.key},
            {"component": c.name, "key": c.key, "commit": c.commit, "tree": c.tree, "license": c.license}))
        for s in c.sources:
            deps.append(provenance.Dependency(f"source:{c.name}/{s.name}", s.origin if "://" in s.origin else None,
                                              {"sha256": s.sha256}, {"origin": s.origin}))
    env = b.environment
    if env is not None:
        for p in env.packages:
            for sha in p.sha256:
                deps.append(provenance.Dependency(f"cbe:{env.name}/{p.name}@{p.version}:{p.arch}", None,
                                                  {"sha256": sha}))
    return deps


def image_attest(cfg: Config, b: Bill, sign: Signer, cbe_key: Mapping[str, str] | None) -> Attest:
    def attest(_pdir: Any, subjects: Sequence[tuple[str, str]]) -> bytes:
        stmt = provenance.statement(
            [provenance.Subject(n, s) for n, s in subjects],
            build_type=provenance.IMAGE_BUILD_TYPE,
            external={"workspace": b.workspace, "components": [c.name for c in b.components],
                      "source_date_epoch": cfg.workspace.source_date_epoch},
            internal={"builder": b.builder, "cbe": dict(cbe_key) if cbe_key else None},
            dependencies=dependencies(b),
            builder_version={"pib": b.pib_version},
            invocation_id=f"{b.workspace}/{subjects[-1][0]}" if subjects else b.workspace,
        )
        return provenance.envelope(stmt, sign)
    return attest


def image_trace(cfg: Config, built: Sequence[Built], builder: str,
                cbe_key: Mapping[str, str] | None) -> tuple[Bill, Attest]:
    b = bill(cfg, built, builder)
    return b, image_attest(cfg, b, signer(cfg), cbe_key)


def recorded_trace(cfg: Config) -> tuple[dict[str, str], tuple[Bill, Attest]]:
    """`pib image` (no build): the keys of the last build of each component, and the trace of those builds."""
    from pib.build import state
    from pib.host import detect

    built: list[Built] = []
    for c in cfg.components:
        rec = state.load(cfg.workspace.state_dir, c.name)
        if rec is None:
            continue
        src = rec.doc.get("source") or {}
        built.append(Built(c, rec.key, str(src.get("tree", "")), rec.head, rec.dirty))
    keys = {b.comp.name: b.key for b in built}
    cbe = next((rec_cbe for b in built if isinstance(rec_cbe := _recorded_cbe(cfg, b.comp.name), dict)), None)
    return keys, image_trace(cfg, built, str(detect(cfg.platform)), cbe)


def _recorded_cbe(cfg: Config, name: str) -> Any:
    from pib.build import state

    rec = state.load(cfg.workspace.state_dir, name)
    return rec.doc.get("cbe") if rec is not None else None
