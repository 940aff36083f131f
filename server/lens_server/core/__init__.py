"""What a request means, apart from how it arrived.

The core takes and returns plain Python types (dataclasses, numpy arrays) and raises the
errors of `lens_server.errors`; it imports no grpc and no web framework. The gRPC servicers
(`lens_server.services`) and the HTTP routes (`lens_server.http`) only translate to and from
it, so both front doors share one registry, one set of batchers, collections and classifiers:
an HTTP request and a gRPC request for the same model land in the same batch.
"""

from lens_server.core.classify import Classification, Classified, LabelScore
from lens_server.core.core import Core
from lens_server.core.embed import Embedded, Embedding
from lens_server.core.index import Indexing, ItemIn, QueryIn, SearchResult
from lens_server.core.models import ModelInfo, Models

__all__ = [
    "Classification",
    "Classified",
    "Core",
    "Embedded",
    "Embedding",
    "Indexing",
    "ItemIn",
    "LabelScore",
    "ModelInfo",
    "Models",
    "QueryIn",
    "SearchResult",
]
