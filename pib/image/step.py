"""From a workspace's config and its last build to the platform image.

pib.image is imported only when an image is really made: an up-to-date image
costs a no-op build nothing but a fingerprint of its inputs.
"""

from __future__ import annotations

import json
import os
import platform as host_platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pib import state
from pib.config import Config
from pib.errors import ConfigError
from pib.run import Log

if TYPE_CHECKING:
    from pib.build import BuildEnv, BuildReport, Plan
    from pib.image import ImageResult, ImageSpec, ProtoArea
    from pib.platform import FloorCheck


def image_spec(cfg: Config) -> ImageSpec:
    from pib.image import ImageSpec, KernelSpec, Overlay

    im = cfg.image
    if im is None:
        raise ConfigError("this workspace has no [image] section", hint="add [image] to pib.toml (see README)")
    return ImageSpec(
        kernels=tuple(KernelSpec(comp, path) for comp, path in im.kernels),
        overlays=tuple(Overlay(f"overlay:{o.path.name}", o.path, o.manifest) for o in im.overlays),
        compression="gzip" if im.compression == "gzip" else "zstd",
        max_size=im.max_size,
        archive_command=im.archive_command or None,
        release_file=im.release_file,
        where=im.where,
    )


def proto_areas(cfg: Config) -> list[ProtoArea]:
    """Component proto areas in config order, each with its manifest (if it has one)."""
    from pib.image import ProtoArea

    return [
        ProtoArea(c.name, c.proto, c.checkout / c.manifest if c.manifest else None)
        for c in cfg.components
    ]


def component_keys(cfg: Config) -> dict[str, str]:
    """Keys of the last successful build or restore of each component."""
    out: dict[str, str] = {}
    for c in cfg.components:
        rec = state.load(cfg.workspace.state_dir, c.name)
        if rec is not None:
            out[c.name] = rec.key
    return out


def build_image(cfg: Config, info: Mapping[str, Any] | None = None, stamp: str | None = None) -> ImageResult:
    from pib.image import assemble, buildstamp

    keys = component_keys(cfg)
    missing = [c.name for c in cfg.components if c.name not in keys]
    if missing:
        raise ConfigError(
            f"not built yet: {', '.join(missing)}",
            hint="run pib build first (it makes the image too)",
        )
    stamp = stamp or buildstamp()
    with Log(cfg.workspace.log_dir / f"image.{stamp}.log") as log:
        return assemble(
            image_spec(cfg),
            proto_areas(cfg),
            cfg.workspace.output_dir,
            stamp,
            dict(info or {}),
            component_keys=keys,
            log=log,
        )


def image_inputs(cfg: Config, keys: Mapping[str, str]) -> str:
    """A digest of everything the image is made from, to skip remaking an unchanged image.

    Overlays are fingerprinted by path, mode, size and mtime: any edit shows.
    """
    import pib
    from pib import keys as keymod

    overlays: dict[str, list[tuple[str, int, int, int]]] = {}
    im = cfg.image
    assert im is not None
    for o in im.overlays:
        entries = []
        for dirpath, dirnames, filenames in os.walk(o.path):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                entries.append((os.path.relpath(full, o.path), st.st_mode, st.st_size, st.st_mtime_ns))
        if o.manifest is not None and o.manifest.exists():
            st = o.manifest.stat()
            entries.append((str(o.manifest), st.st_mode, st.st_size, st.st_mtime_ns))
        overlays[str(o.path)] = entries
    doc = {
        "components": dict(keys),
        "image": repr(im),
        "overlays": overlays,
        "source_date_epoch": os.environ.get("SOURCE_DATE_EPOCH"),
        "pib": pib.__version__,
    }
    return keymod.digest(doc)


def _last_image(cfg: Config) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((cfg.workspace.state_dir / "image.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def _record_image(cfg: Config, inputs: str, image: dict[str, Any]) -> None:
    path = cfg.workspace.state_dir / "image.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"inputs": inputs, "image": image}, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def make_image(
    cfg: Config, plans: Sequence[Plan], report: BuildReport, benv: BuildEnv, floor: FloorCheck,
    *, force: bool = False,
) -> dict[str, Any]:
    """The image step of `pib build`: build.json gets what the build did.

    When no input of the image changed since the last one and it is still
    there, it is not made again (a no-op build stays a no-op).
    """
    inputs = image_inputs(cfg, {p.comp.name: p.key for p in plans})
    last = _last_image(cfg)
    if (not force and last is not None and last.get("inputs") == inputs
            and Path(last["image"]["boot_archive"]).is_file()):
        return {**last["image"], "action": "up-to-date"}
    by_name = {o.component: o for o in report.outcomes}
    info = {
        "workspace": cfg.workspace.name,
        "components": [
            {
                "name": p.comp.name,
                "key": p.key,
                "action": by_name[p.comp.name].action if p.comp.name in by_name else "up-to-date",
                "seconds": round(by_name[p.comp.name].seconds, 3) if p.comp.name in by_name else 0.0,
                "dirty": p.source.dirty,
                "head": p.source.head,
                "store": by_name[p.comp.name].store if p.comp.name in by_name else None,
            }
            for p in plans
        ],
        "cbe": dict(benv.key) if benv.key else None,
        "cbe_description": benv.description,
        "host": {
            "platform": floor.host.version,
            "kind": floor.host.kind,
            "description": floor.host.description,
            "machine": host_platform.machine(),
            "oldest_supported": floor.minimum,
        },
        "build_seconds": round(report.seconds, 3),
    }
    if "SOURCE_DATE_EPOCH" not in os.environ:
        info["note"] = "SOURCE_DATE_EPOCH unset: the build stamp is the current time"
    res = build_image(cfg, info)
    out = image_json(res)
    _record_image(cfg, inputs, out)
    return {**out, "action": "built"}


def image_json(res: ImageResult) -> dict[str, Any]:
    return {
        "dir": str(res.dir),
        "buildstamp": res.buildstamp,
        "boot_archive": str(res.boot_archive),
        "sha256": res.hash,
        "size": res.size,
        "tarball": str(res.tarball),
        "kernels": [str(k) for k in res.kernels],
        "entries": res.entries,
        "warnings": list(res.warnings),
        "timings": {k: round(v, 3) for k, v in res.timings.items()},
    }
