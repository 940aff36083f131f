"""Durable nearest-neighbour collections: SQLite as the source of truth and FAISS for search,
or a Milvus engine (`backend="milvus"`) or PostgreSQL with pgvector (`backend="pgvector"`) for
both."""

from lens_server.collections.collection import Collection, Hit
from lens_server.collections.faiss_index import IndexConfig
from lens_server.collections.manager import AnyCollection, Collections
from lens_server.collections.shadow import ReindexState
from lens_server.collections.spec import CollectionSpec, VersionChanged
from lens_server.collections.store import NewItem

__all__ = [
    "AnyCollection",
    "Collection",
    "CollectionSpec",
    "Collections",
    "Hit",
    "IndexConfig",
    "NewItem",
    "ReindexState",
    "VersionChanged",
]
