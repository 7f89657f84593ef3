"""Opening the backend a store spec names; each backend is imported only when used."""

from __future__ import annotations

from pib.config.types import StoreSpec
from pib.store import Store


def open_store(spec: StoreSpec) -> Store:
    """The store a spec (from pib.toml, or made by hand) describes."""
    from pib.config.types import HttpStoreSpec, LocalStoreSpec

    if isinstance(spec, LocalStoreSpec):
        from pib.store.local import LocalStore

        return LocalStore(spec.path, quota_bytes=spec.quota_bytes, name=spec.name)
    if isinstance(spec, HttpStoreSpec):
        from pib.store.http import HttpStore

        return HttpStore(spec)
    from pib.store.s3 import S3Store

    return S3Store(spec)
