"""All collections of a server: `<root>/<name>/` for the FAISS backend, opened (and recovered)
at start-up, and those of the Milvus engine, listed from it (see docs/backends.md)."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from lens_server.collections.collection import Collection
from lens_server.collections.milvus import MilvusCollection
from lens_server.collections.milvus_engine import MilvusEngine
from lens_server.collections.spec import SPEC, CollectionSpec
from lens_server.errors import AlreadyExists, InvalidInput, NotFound, Unavailable, available
from lens_server.repository.store import check_name

log = logging.getLogger(__name__)

AnyCollection = Collection | MilvusCollection


class Collections:
    """Creates, finds and drops collections. Blocking: call from worker threads.

    `milvus`: the engine that holds the collections created with backend "milvus", if this
    server has one; other servers pointed at it see the same ones.
    """

    def __init__(self, root: Path, milvus: MilvusEngine | None = None) -> None:
        self.root = Path(root)
        self.milvus = milvus
        self._open: dict[str, AnyCollection] = {}
        self._lock = threading.RLock()  # `drop` calls `get`

    def open_all(self) -> None:
        """Opens every collection folder, replaying what its snapshot lacks, and lists the
        engine's collections (an engine that is down is logged: its collections answer
        UNAVAILABLE until it is back)."""
        if self.root.is_dir():
            for folder in sorted(self.root.iterdir()):
                if (folder / SPEC).is_file():
                    collection = Collection.open(folder)
                    self._open[folder.name] = collection
                    log.info("collection %s: %d items", folder.name, collection.store.count())
        if self.milvus is not None:
            try:
                self._refresh()
            except Unavailable as e:
                log.error("%s", e)

    def _refresh(self) -> None:
        """Opens the engine's collections this server does not hold yet (made by a replica)."""
        assert self.milvus is not None
        for name, record in self.milvus.records().items():
            with self._lock:
                if name not in self._open:
                    self._open[name] = MilvusCollection(self.milvus, record)
                    log.info("collection %s: in milvus at %s", name, self.milvus.uri)

    def create(self, spec: CollectionSpec) -> AnyCollection:
        check_name(spec.name, "collection")
        if spec.backend == "milvus" and self.milvus is None:
            raise InvalidInput(
                f"collection {spec.name}: backend milvus needs a server started with "
                "--milvus-uri (or LENS_MILVUS_URI)"
            )
        with self._lock:
            if spec.name in self._open or (self.root / spec.name).exists():
                raise AlreadyExists(f"collection {spec.name!r} already exists")
            collection: AnyCollection
            if spec.backend == "milvus":
                assert self.milvus is not None
                if self.milvus.record(spec.name) is not None:
                    raise AlreadyExists(f"collection {spec.name!r} already exists in milvus")
                collection = MilvusCollection.create(self.milvus, spec)
            else:
                self.root.mkdir(parents=True, exist_ok=True)
                collection = Collection.create(self.root / spec.name, spec)
            self._open[spec.name] = collection
        return collection

    def get(self, name: str) -> AnyCollection:
        collection = self._open.get(name)
        if collection is None and self.milvus is not None:
            record = self.milvus.record(name)  # created by another replica
            if record is not None:
                with self._lock:
                    collection = self._open.setdefault(name, MilvusCollection(self.milvus, record))
        if collection is None:
            raise NotFound(
                f"collection {name!r} not found. {available('collections', self.names())}"
            )
        return collection

    def names(self) -> list[str]:
        return sorted(self._open)

    def drop(self, name: str) -> None:
        with self._lock:
            collection = self.get(name)
            del self._open[name]
        collection.close()
        if isinstance(collection, MilvusCollection):
            collection.drop()
        else:
            shutil.rmtree(collection.folder)

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
        if self.milvus is not None:
            self.milvus.close()
