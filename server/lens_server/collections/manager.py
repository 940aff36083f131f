"""All collections of a server: `<root>/<name>/` for the FAISS backend, opened (and recovered)
at start-up, and those of the Milvus engine and of the PostgreSQL database, listed from them
(see docs/backends.md)."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from lens_server.collections.collection import Collection
from lens_server.collections.milvus import MilvusCollection
from lens_server.collections.milvus_engine import MilvusEngine, Record
from lens_server.collections.pgvector import PgCollection
from lens_server.collections.pgvector_engine import PgEngine
from lens_server.collections.spec import SPEC, CollectionSpec
from lens_server.errors import AlreadyExists, InvalidInput, NotFound, Unavailable, available
from lens_server.repository.store import check_name

log = logging.getLogger(__name__)

AnyCollection = Collection | MilvusCollection | PgCollection
Engine = MilvusEngine | PgEngine
# The option that gives a server each engine.
_OPTIONS = {"milvus": "--milvus-uri (or LENS_MILVUS_URI)", "pgvector": "--pg-dsn (or LENS_PG_DSN)"}


class Collections:
    """Creates, finds and drops collections. Blocking: call from worker threads.

    `milvus`, `pgvector`: the engines that hold the collections created with backend
    "milvus" and "pgvector", if this server has them; other servers pointed at one see the
    same ones.
    """

    def __init__(
        self, root: Path, milvus: MilvusEngine | None = None, pgvector: PgEngine | None = None
    ) -> None:
        self.root = Path(root)
        self.milvus = milvus
        self.pgvector = pgvector
        self.engines: dict[str, Engine] = {
            kind: engine for kind, engine in (("milvus", milvus), ("pgvector", pgvector)) if engine
        }
        self._open: dict[str, AnyCollection] = {}
        self._lock = threading.RLock()  # `drop` calls `get`

    def open_all(self) -> None:
        """Opens every collection folder, replaying what its snapshot lacks, and lists the
        engines' collections (an engine that is down is logged: its collections answer
        UNAVAILABLE until it is back)."""
        if self.root.is_dir():
            for folder in sorted(self.root.iterdir()):
                if (folder / SPEC).is_file():
                    collection = Collection.open(folder)
                    self._open[folder.name] = collection
                    log.info("collection %s: %d items", folder.name, collection.store.count())
        for engine in self.engines.values():
            try:
                self._refresh(engine)
            except Unavailable as e:
                log.error("%s", e)

    def _refresh(self, engine: Engine) -> None:
        """Opens the engine's collections this server does not hold yet (made by a replica)."""
        for name, record in engine.records().items():
            with self._lock:
                if name not in self._open:
                    self._open[name] = _opened(engine, record)
                    log.info("collection %s: in %s", name, _where(engine))

    def create(self, spec: CollectionSpec) -> AnyCollection:
        check_name(spec.name, "collection")
        if spec.backend in _OPTIONS and spec.backend not in self.engines:
            raise InvalidInput(
                f"collection {spec.name}: backend {spec.backend} needs a server started with "
                f"{_OPTIONS[spec.backend]}"
            )
        with self._lock:
            if spec.name in self._open or (self.root / spec.name).exists():
                raise AlreadyExists(f"collection {spec.name!r} already exists")
            collection: AnyCollection
            engine = self.engines.get(spec.backend)
            if engine is not None:
                if engine.record(spec.name) is not None:
                    raise AlreadyExists(
                        f"collection {spec.name!r} already exists in {spec.backend}"
                    )
                collection = (
                    MilvusCollection.create(engine, spec)
                    if isinstance(engine, MilvusEngine)
                    else PgCollection.create(engine, spec)
                )
            else:
                self.root.mkdir(parents=True, exist_ok=True)
                collection = Collection.create(self.root / spec.name, spec)
            self._open[spec.name] = collection
        return collection

    def get(self, name: str) -> AnyCollection:
        collection = self._open.get(name)
        for engine in self.engines.values():
            if collection is not None:
                break
            record = engine.record(name)  # created by another replica
            if record is not None:
                with self._lock:
                    collection = self._open.setdefault(name, _opened(engine, record))
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
        if isinstance(collection, MilvusCollection | PgCollection):
            collection.drop()
        else:
            shutil.rmtree(collection.folder)

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
        for engine in self.engines.values():
            engine.close()


def _opened(engine: Engine, record: Record) -> MilvusCollection | PgCollection:
    if isinstance(engine, MilvusEngine):
        return MilvusCollection(engine, record)
    return PgCollection(engine, record)


def _where(engine: Engine) -> str:
    return (
        f"milvus at {engine.uri}"
        if isinstance(engine, MilvusEngine)
        else f"pgvector at {engine.where}"
    )
