"""The application core: one object per API family over one registry, one set of batchers,
collections and classifiers."""

from __future__ import annotations

from dataclasses import dataclass

from lens_server.classifiers import ClassifierStore
from lens_server.collections import Collections
from lens_server.config import ServerConfig
from lens_server.core.browse import Browsing
from lens_server.core.classify import Classification
from lens_server.core.embed import Embedding
from lens_server.core.index import Indexing
from lens_server.core.models import Models
from lens_server.deploy import Deployments
from lens_server.metrics import Metrics
from lens_server.registry import Registry


@dataclass(frozen=True)
class Core:
    embedding: Embedding
    classification: Classification
    indexing: Indexing
    models: Models
    browsing: Browsing

    @classmethod
    def of(
        cls,
        registry: Registry,
        collections: Collections,
        classifiers: ClassifierStore,
        deployments: Deployments,
        config: ServerConfig,
        metrics: Metrics | None = None,
    ) -> Core:
        return cls(
            Embedding(registry, config),
            Classification(registry, classifiers, config),
            Indexing(collections, registry, deployments, config, metrics),
            Models(registry, deployments, metrics),
            Browsing(collections),
        )
