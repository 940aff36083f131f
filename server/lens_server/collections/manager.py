"""All collections of a server: `<root>/<name>/`, opened (and recovered) at start-up."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from lens_server.collections.collection import Collection
from lens_server.collections.spec import SPEC, CollectionSpec
from lens_server.errors import AlreadyExists, NotFound, available
from lens_server.repository.store import check_name

log = logging.getLogger(__name__)


class Collections:
    """Creates, finds and drops collections. Blocking: call from worker threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._open: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def open_all(self) -> None:
        """Opens every collection folder, replaying what its snapshot lacks."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if (folder / SPEC).is_file():
                self._open[folder.name] = Collection.open(folder)
                log.info(
                    "collection %s: %d items", folder.name, self._open[folder.name].store.count()
                )

    def create(self, spec: CollectionSpec) -> Collection:
        check_name(spec.name, "collection")
        with self._lock:
            if spec.name in self._open or (self.root / spec.name).exists():
                raise AlreadyExists(f"collection {spec.name!r} already exists")
            self.root.mkdir(parents=True, exist_ok=True)
            collection = Collection.create(self.root / spec.name, spec)
            self._open[spec.name] = collection
        return collection

    def get(self, name: str) -> Collection:
        collection = self._open.get(name)
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
        shutil.rmtree(collection.folder)

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
