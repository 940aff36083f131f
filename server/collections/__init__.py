"""Durable nearest-neighbour collections: SQLite as the source of truth, FAISS for search."""

from server.collections.collection import Collection, CollectionSpec, Hit
from server.collections.faiss_index import IndexConfig
from server.collections.manager import Collections
from server.collections.shadow import ReindexState, VersionChanged
from server.collections.store import NewItem

__all__ = [
    "Collection",
    "CollectionSpec",
    "Collections",
    "Hit",
    "IndexConfig",
    "NewItem",
    "ReindexState",
    "VersionChanged",
]
