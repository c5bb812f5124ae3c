"""Models: the catalog of what exists, the content-addressed store, and residency in memory."""

from appliance.models.catalog import Catalog, CatalogError, ModelEntry, load_catalog
from appliance.models.store import ModelFiles, ModelStore, StoreError, default_store_path

__all__ = [
    "Catalog",
    "CatalogError",
    "ModelEntry",
    "ModelFiles",
    "ModelStore",
    "StoreError",
    "default_store_path",
    "load_catalog",
]
