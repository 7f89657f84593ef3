"""From a workspace's config and the keys of its components to the platform image.

pib.image.write is imported only when an image is really made: an up-to-date
image costs a no-op build nothing but a fingerprint of its inputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pib.config.types import Config, ImageSpec
from pib.errors import ConfigError
from pib.fsutil import remove_stale, write_atomic
from pib.run import Log

if TYPE_CHECKING:
    from pib.image.resolve import ProtoArea
    from pib.image.sbom import Bill
    from pib.image.write import Attest, ImageResult


def image_spec(cfg: Config) -> ImageSpec:
    if cfg.image is None:
        raise ConfigError("this workspace has no [image] section", hint="add [image] to pib.toml (see README)")
    return cfg.image


def proto_areas(cfg: Config) -> list[ProtoArea]:
    """Component proto areas in config order, each with its manifest (if it has one)."""
    from pib.image.resolve import ProtoArea

    return [
        ProtoArea(c.name, c.proto, c.checkout / c.manifest if c.manifest else None)
        for c in cfg.components
    ]


def build_image(cfg: Config, keys: Mapping[str, str], info: Mapping[str, Any] | None = None,
                stamp: str | None = None, *, bill: Bill | None = None, attest: Attest | None = None) -> ImageResult:
    """Write the image of the proto areas as built under `keys` (component -> key), with its SBOMs
    (given the `bill`) and its signed provenance (given `attest`)."""
    from pib.image.write import assemble, buildstamp

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
            bill=bill,
            attest=attest,
        )


def image_inputs(cfg: Config, outputs: Mapping[str, str]) -> str:
    """A digest of everything the image is made from, to skip remaking an unchanged image.

    Components count by the output digests of their proto areas (a component rebuilt into the same
    bytes keeps the image); overlays by path, mode, size and mtime: any edit shows.
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
        "components": dict(outputs),
        # The SBOMs name each component's license; the provenance's signer follows the trust settings.
        "licenses": {c.name: c.license for c in cfg.components},
        "trust": repr(cfg.trust),
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
    write_atomic(path, json.dumps({"inputs": inputs, "image": image}, indent=1, sort_keys=True))


def make_image(cfg: Config, keys: Mapping[str, str], info: Callable[[], Mapping[str, Any]], *,
               outputs: Mapping[str, str], force: bool = False,
               trace: Callable[[], tuple[Bill, Attest]] | None = None) -> tuple[dict[str, Any], bool]:
    """The image step of `pib build`: the image of the components as built under `keys`, whose proto
    areas have the output digests `outputs`.

    `info` gives what build.json records about the build; it is asked for
    only when an image is made. When no input of the image changed since the
    last one and it is still there, it is not made again (a no-op build stays
    a no-op). Returns the image's facts and whether it was made now.
    """
    inputs = image_inputs(cfg, outputs)
    last = _last_image(cfg)
    if (not force and last is not None and last.get("inputs") == inputs
            and Path(last["image"]["boot_archive"]).is_file()):
        # A run killed while it replaced an image left the old one whole, and its temporaries.
        remove_stale(cfg.workspace.output_dir)
        return dict(last["image"]), False
    bill, attest = trace() if trace is not None else (None, None)
    res = build_image(cfg, keys, info(), bill=bill, attest=attest)
    out = image_json(res)
    _record_image(cfg, inputs, out)
    return out, True


def image_json(res: ImageResult) -> dict[str, Any]:
    return {
        "dir": str(res.dir),
        "buildstamp": res.buildstamp,
        "boot_archive": str(res.boot_archive),
        "sha256": res.hash,
        "size": res.size,
        "tarball": str(res.tarball),
        "kernels": [str(k) for k in res.kernels],
        "outputs": {k: str(res.dir / v) for k, v in res.outputs.items()},
        "entries": res.entries,
        "warnings": list(res.warnings),
        "timings": {k: round(v, 3) for k, v in res.timings.items()},
    }
