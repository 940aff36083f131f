"""The one table of what each call needs: every gRPC method the server serves (lens.v1,
KServe v2, health, reflection) and every HTTP route (lens's, OpenAI's, KServe's, the
--compat APIs') names its scope here, or is open (health, metrics, the schema). A test
checks that no method of the services and no route of the app is missing.

- `embed`: embedding, classification, search, and every read (list, get, describe);
- `write`: a collection's or a classifier's contents (create a collection, upsert, delete
  items, re-index; create and delete classifiers);
- `admin`: what changes the models served, or drops a collection (deploy, rollback, load,
  unload, reload the repository, drop).

A key holds each scope it is given; none implies another.
"""

from __future__ import annotations

import re

from lens_server.access.keys import ADMIN, EMBED, WRITE

# Calls that need no key: health checks, metrics and the API's own description.
OPEN = ""

GRPC: dict[str, str] = {
    "/lens.v1.Inference/Embed": EMBED,
    "/lens.v1.Inference/EmbedStream": EMBED,
    "/lens.v1.Inference/Classify": EMBED,
    "/lens.v1.Models/ListModels": EMBED,
    "/lens.v1.Models/GetModel": EMBED,
    "/lens.v1.Models/LoadModel": ADMIN,
    "/lens.v1.Models/UnloadModel": ADMIN,
    "/lens.v1.Models/Deploy": ADMIN,
    "/lens.v1.Models/Rollback": ADMIN,
    "/lens.v1.Models/ReloadRepository": ADMIN,
    "/lens.v1.Index/CreateCollection": WRITE,
    "/lens.v1.Index/ListCollections": EMBED,
    "/lens.v1.Index/DescribeCollection": EMBED,
    "/lens.v1.Index/DropCollection": ADMIN,
    "/lens.v1.Index/Upsert": WRITE,
    "/lens.v1.Index/UpsertStream": WRITE,
    "/lens.v1.Index/Delete": WRITE,
    "/lens.v1.Index/Get": EMBED,
    "/lens.v1.Index/Search": EMBED,
    "/lens.v1.Index/SearchBatch": EMBED,
    "/lens.v1.Index/FindDuplicates": EMBED,
    "/lens.v1.Index/Reindex": WRITE,
    "/lens.v1.Classifiers/CreateClassifier": WRITE,
    "/lens.v1.Classifiers/GetClassifier": EMBED,
    "/lens.v1.Classifiers/ListClassifiers": EMBED,
    "/lens.v1.Classifiers/DeleteClassifier": WRITE,
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.health.v1.Health/List": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": OPEN,
    # KServe v2 (--compat kserve): health and readiness open, as lens's own; Triton's clients
    # send a key as `authorization` metadata (their `headers=`).
    "/inference.GRPCInferenceService/ServerLive": OPEN,
    "/inference.GRPCInferenceService/ServerReady": OPEN,
    "/inference.GRPCInferenceService/ModelReady": OPEN,
    "/inference.GRPCInferenceService/ServerMetadata": EMBED,
    "/inference.GRPCInferenceService/ModelMetadata": EMBED,
    "/inference.GRPCInferenceService/ModelInfer": EMBED,
    "/inference.GRPCInferenceService/ModelStreamInfer": EMBED,
    "/inference.GRPCInferenceService/RepositoryIndex": EMBED,
    "/inference.GRPCInferenceService/RepositoryModelLoad": ADMIN,
    "/inference.GRPCInferenceService/RepositoryModelUnload": ADMIN,
}

# (method, route path as the app declares it) → scope.
HTTP: dict[tuple[str, str], str] = {
    ("POST", "/v1/embeddings"): EMBED,
    ("POST", "/v1/embed"): EMBED,
    ("POST", "/v1/classify"): EMBED,
    ("GET", "/v1/classifiers"): EMBED,
    ("POST", "/v1/classifiers"): WRITE,
    ("GET", "/v1/classifiers/{name}"): EMBED,
    ("DELETE", "/v1/classifiers/{name}"): WRITE,
    ("GET", "/v1/collections"): EMBED,
    ("POST", "/v1/collections"): WRITE,
    ("GET", "/v1/collections/{collection}"): EMBED,
    ("DELETE", "/v1/collections/{collection}"): ADMIN,
    ("POST", "/v1/collections/{collection}/reindex"): WRITE,
    ("POST", "/v1/collections/{collection}/items"): WRITE,
    ("POST", "/v1/collections/{collection}/get"): EMBED,
    ("POST", "/v1/collections/{collection}/delete"): WRITE,
    ("POST", "/v1/collections/{collection}/search"): EMBED,
    ("POST", "/v1/collections/{collection}/search/batch"): EMBED,
    ("POST", "/v1/collections/{collection}/duplicates"): EMBED,
    ("GET", "/v1/collections/{collection}/items/{item:path}/thumbnail"): EMBED,
    ("GET", "/v1/collections/{collection}/map"): EMBED,
    ("GET", "/v1/models"): EMBED,
    ("GET", "/v1/models/{name}"): EMBED,
    ("POST", "/v1/models/{name}/load"): ADMIN,
    ("POST", "/v1/models/{name}/unload"): ADMIN,
    ("POST", "/v1/models/{name}/deploy"): ADMIN,
    ("POST", "/v1/models/{name}/rollback"): ADMIN,
    ("POST", "/v1/repository/reload"): ADMIN,
    # Immich's and Weaviate's APIs (--compat): these apps send no key, so where keys are
    # required only their health checks answer them.
    ("POST", "/predict"): EMBED,
    ("GET", "/meta"): EMBED,
    ("POST", "/vectorize"): EMBED,
    ("GET", "/ping"): OPEN,
    # KServe v2 (--compat kserve), as the gRPC methods above.
    ("GET", "/v2"): EMBED,
    ("GET", "/v2/health/live"): OPEN,
    ("GET", "/v2/health/ready"): OPEN,
    ("GET", "/v2/models/{name}"): EMBED,
    ("GET", "/v2/models/{name}/versions/{version}"): EMBED,
    ("GET", "/v2/models/{name}/ready"): OPEN,
    ("GET", "/v2/models/{name}/versions/{version}/ready"): OPEN,
    ("POST", "/v2/models/{name}/infer"): EMBED,
    ("POST", "/v2/models/{name}/versions/{version}/infer"): EMBED,
    ("POST", "/v2/repository/index"): EMBED,
    ("POST", "/v2/repository/models/{name}/load"): ADMIN,
    ("POST", "/v2/repository/models/{name}/unload"): ADMIN,
    ("GET", "/.well-known/live"): OPEN,
    ("GET", "/.well-known/ready"): OPEN,
    ("GET", "/health"): OPEN,
    ("GET", "/health/live"): OPEN,
    ("GET", "/health/ready"): OPEN,
    ("GET", "/metrics"): OPEN,
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/oauth2-redirect"): OPEN,
    ("GET", "/redoc"): OPEN,
    # The web page (its files; what it shows comes through the routes above, with a key).
    ("GET", "/"): OPEN,
    ("GET", "/web/{name}"): OPEN,
}


def _pattern(path: str) -> re.Pattern[str]:
    """A route's path as a regular expression: a parameter is one segment, or several where
    it is a `{name:path}` (as Starlette matches them)."""
    escaped = re.escape(path)
    escaped = re.sub(r"\\\{[^}:]+:path\\\}", ".+", escaped)
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", escaped) + "$")


# Paths with parameters, tried in order after an exact match fails.
_HTTP_PATTERNS = [(method, path, _pattern(path)) for (method, path) in HTTP if "{" in path]


def grpc_scope(method: str) -> str | None:
    """The scope of a gRPC method (`/package.Service/Method`); None: not in the table."""
    return GRPC.get(method)


def http_scope(method: str, path: str) -> tuple[str, str] | None:
    """(the route, as the table names it; its scope) for a request; None: no such route.
    HEAD is read as GET, as the app answers it."""
    method = "GET" if method == "HEAD" else method
    if (scope := HTTP.get((method, path))) is not None:
        return path, scope
    for route_method, route, pattern in _HTTP_PATTERNS:
        if route_method == method and pattern.match(path):
            return route, HTTP[(route_method, route)]
    return None
