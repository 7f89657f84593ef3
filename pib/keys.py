"""Input keys: a canonical JSON document of everything that can change a
component's output, and its SHA-256.

A dependency enters the document by its output digest, so a dependency
rebuilt into the same bytes leaves its dependents' keys as they were.

The document never holds absolute paths, host names, users or times, so two
machines with the same inputs compute the same key. FORMAT changes whenever
the document's shape changes; golden tests pin it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pib.errors import ConfigError
from pib.fsutil import canonical_json as canonical
from pib.fsutil import sha256_file

if TYPE_CHECKING:
    from pib.config.types import ComponentConfig

# 2: epoch (the SOURCE_DATE_EPOCH every build gets) and cbe.system_path joined the document.
# 3: depends holds each dependency's output digest (pib.build.output), not its input key.
FORMAT = 3


def digest(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(doc)).hexdigest()


def key_document(
    comp: ComponentConfig,
    *,
    workspace: Path,
    tree: str,
    epoch: int,
    cbe: Mapping[str, str] | None,
    baseline: str | None,
    dep_outputs: Mapping[str, str | None],  # None: not known yet (the key is pending)
    isolation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    key_files: dict[str, str] = {}
    for path in comp.key_files:
        try:
            rel = str(path.relative_to(workspace))
        except ValueError:
            rel = path.name  # outside the workspace: name only, never the absolute path
        try:
            key_files[rel] = sha256_file(path)[0]
        except OSError as exc:
            raise ConfigError(
                f"component {comp.name!r}: key file {path} cannot be read ({exc.strerror})",
                where=comp.where,
                hint="create it, or remove it from key_files",
            ) from exc
    doc: dict[str, Any] = {
        "format": FORMAT,
        "component": comp.name,
        "source": {"tree": tree},
        "epoch": epoch,
        "recipe": {"build": list(comp.build), "env": dict(comp.env)},
        "cbe": dict(cbe) if cbe else None,
        "platform": {"baseline": baseline},
        "key_files": key_files,
        "depends": {d: dep_outputs[d] for d in sorted(comp.depends)},
    }
    if comp.sources:
        # Declared downloads by name and content, never by origin: a mirror or a new URL for the
        # same bytes keeps the key. Absent when there are none, so such keys are unchanged.
        doc["sources"] = {p.name: p.sha256 for p in comp.sources}
    # Only a build isolated differently from the default (sandboxed, no network) says how, so the
    # keys of default builds stay what they were.
    if isolation:
        doc["isolation"] = dict(isolation)
    return doc


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Leaf fields that differ: (dotted path, old value, new value)."""
    out: list[tuple[str, Any, Any]] = []

    def walk(prefix: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(f"{prefix}.{k}" if prefix else str(k), a.get(k), b.get(k))
        elif a != b:
            out.append((prefix, a, b))

    walk("", dict(old) if old else {}, dict(new))
    return out
