"""The Milvus engine that holds collections with `backend="milvus"` (see docs/backends.md).

Everything that makes such a collection lives in Milvus, so that every lens replica pointed at
the same engine sees the same collections: a `lens_collections` table holds each one's spec,
the generation of its data table and the target of a re-index in progress; each generation is
a Milvus collection (`lens_<name>_g<n>`: id, vector, metadata, source) and the alias
`lens_<name>` names the one that serves. pymilvus speaks the same gRPC API to a Milvus
cluster and to `milvus-lite server`; it is an optional extra (`pip install 'lens[milvus]'`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from lens_server.collections.faiss_index import IndexConfig
from lens_server.collections.spec import CollectionSpec, ModelVersion
from lens_server.errors import InvalidInput, LensError, Unavailable

log = logging.getLogger(__name__)

META = "lens_collections"
# Milvus tables need a vector field; the meta table's is a placeholder.
_META_DIM = 2
# A source (image bytes, text) is kept base64-encoded in pieces of a VARCHAR array.
SOURCE_PIECE = 65_535
SOURCE_PIECES = 64
MAX_SOURCE_BYTES = SOURCE_PIECE * SOURCE_PIECES * 3 // 4
METRIC_TYPES = {"cosine": "COSINE", "inner_product": "IP", "l2": "L2"}
_PLAIN = re.compile(r"[A-Za-z0-9_]+")


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise Unavailable(
            "the milvus backend needs pymilvus, which this server does not have: "
            "pip install 'lens[milvus]'"
        ) from None
    return pymilvus


@dataclass(frozen=True)
class Record:
    """A collection's row in the meta table."""

    spec: CollectionSpec
    generation: int
    target: ModelVersion | None = None  # the re-index in progress, if any

    def to_row(self) -> dict[str, Any]:
        raw = {
            "spec": asdict(self.spec),
            "generation": self.generation,
            "target": asdict(self.target) if self.target else None,
        }
        return {"name": self.spec.name, "record": json.dumps(raw), "vector": [0.0] * _META_DIM}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        raw = json.loads(row["record"])
        spec = raw["spec"]
        target = raw["target"]
        return cls(
            CollectionSpec(**{**spec, "index": IndexConfig(**spec["index"])}),
            int(raw["generation"]),
            ModelVersion(**target) if target else None,
        )


class MilvusEngine:
    """One Milvus deployment at `uri` (`http://host:19530`), connected on first use.

    Thread-safe: pymilvus's client is. Errors from the engine become `Unavailable` naming it.
    """

    def __init__(self, uri: str, token: str = "", timeout_s: float = 10.0) -> None:
        if not uri:
            raise InvalidInput("the milvus backend needs an address: --milvus-uri http://host:port")
        self.uri = uri
        self.token = token
        self.timeout_s = timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    # -- connection and errors ---------------------------------------------------------------

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                pymilvus = _pymilvus()
                with self.errors("connect"):
                    client = pymilvus.MilvusClient(
                        uri=self.uri,
                        token=self.token,
                        timeout=self.timeout_s,
                        # Its own channel: pymilvus otherwise shares one per address across
                        # clients, and a channel broken under one (below) breaks them all.
                        dedicated=True,
                        # pymilvus pings every 10 s even while idle; an engine that does not
                        # permit that (milvus-lite) answers GOAWAY "too many pings" and the
                        # next call fails. Pings only while calls are in flight.
                        grpc_options={"grpc.keepalive_permit_without_calls": False},
                    )
                    self._ensure_meta(client)
                self._client = client
            return self._client

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Engine failures (down, refused, timed out) as `Unavailable` naming the backend."""
        try:
            yield
        except LensError:
            raise
        except Exception as e:  # pymilvus raises MilvusException and grpc errors alike
            message = getattr(e, "message", None) or str(e).splitlines()[0]
            if any(w in message.lower() for w in ("connect", "unavailable", "released")):
                # The next call connects again and loads the tables (the engine restarted).
                self._reset()
            raise Unavailable(f"milvus backend at {self.uri}: {doing} failed: {message}") from e

    def close(self) -> None:
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a client of a dead engine
                log.debug("milvus client close failed", exc_info=True)

    # -- the meta table ----------------------------------------------------------------------

    def _ensure_meta(self, client: Any) -> None:
        """The meta table, made if missing; lens's tables loaded (a restarted engine holds
        them released)."""
        for table in client.list_collections():
            if table.startswith("lens_"):
                client.load_collection(table)
        if client.has_collection(META):
            return
        datatype = _pymilvus().DataType
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("name", datatype.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("record", datatype.VARCHAR, max_length=65_535)
        schema.add_field("vector", datatype.FLOAT_VECTOR, dim=_META_DIM)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        client.create_collection(
            META, schema=schema, index_params=index, consistency_level="Strong"
        )

    def records(self) -> dict[str, Record]:
        client = self.client()
        with self.errors("listing collections"):
            rows = client.query(
                META, filter='name != ""', output_fields=["name", "record"], limit=16_384
            )
        return {row["name"]: Record.from_row(row) for row in rows}

    def record(self, name: str) -> Record | None:
        client = self.client()
        with self.errors(f"reading collection {name}"):
            rows = client.query(META, ids=[name], output_fields=["name", "record"])
        return Record.from_row(rows[0]) if rows else None

    def save(self, record: Record) -> None:
        client = self.client()
        with self.errors(f"saving collection {record.spec.name}"):
            client.upsert(META, [record.to_row()])

    def forget(self, name: str) -> None:
        client = self.client()
        with self.errors(f"dropping collection {name}"):
            client.delete(META, ids=[name])

    # -- data tables -------------------------------------------------------------------------

    def create_table(self, spec: CollectionSpec, generation: int, dim: int) -> str:
        """A fresh data table of `dim` vectors for generation `generation` of `spec`."""
        client = self.client()
        table = table_name(spec.name, generation)
        datatype = _pymilvus().DataType
        with self.errors(f"creating {table}"):
            if client.has_collection(table):  # left by a crash before its record was saved
                client.drop_collection(table)
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", datatype.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("vector", datatype.FLOAT_VECTOR, dim=dim)
            schema.add_field("metadata", datatype.JSON)
            schema.add_field("source_kind", datatype.VARCHAR, max_length=16)
            schema.add_field(
                "source",
                datatype.ARRAY,
                element_type=datatype.VARCHAR,
                max_capacity=SOURCE_PIECES,
                max_length=SOURCE_PIECE,
            )
            # The write that stored the item: a re-embedding of an older write is dropped.
            schema.add_field("written", datatype.INT64)
            index = client.prepare_index_params()
            index.add_index(field_name="vector", **index_params(spec))
            client.create_collection(
                table, schema=schema, index_params=index, consistency_level="Strong"
            )
        return table

    def drop_table(self, name: str, generation: int) -> None:
        client = self.client()
        table = table_name(name, generation)
        with self.errors(f"dropping {table}"):
            if client.has_collection(table):
                client.drop_collection(table)

    def point_alias(self, name: str, generation: int) -> None:
        """The alias `lens_<name>` names generation `generation`'s table."""
        client = self.client()
        alias, table = alias_name(name), table_name(name, generation)
        with self.errors(f"pointing {alias} at {table}"):
            if alias in client.list_aliases(table).get("aliases", []):
                return
            if alias in client.list_aliases().get("aliases", []):
                client.alter_alias(table, alias)
            else:
                client.create_alias(table, alias)

    def drop_alias(self, name: str) -> None:
        client = self.client()
        with self.errors(f"dropping {alias_name(name)}"):
            if alias_name(name) in client.list_aliases().get("aliases", []):
                client.drop_alias(alias_name(name))


def _encoded(name: str) -> str:
    """A lens name (letters, digits, '.', '_', '-') as a Milvus one (letters, digits, '_')."""
    return f"n_{name}" if _PLAIN.fullmatch(name) else f"h_{name.encode().hex()}"


def alias_name(name: str) -> str:
    return f"lens_{_encoded(name)}"


def table_name(name: str, generation: int) -> str:
    return f"lens_{_encoded(name)}_g{generation}"


def index_params(spec: CollectionSpec) -> dict[str, Any]:
    """The Milvus index of a collection: FLAT for `flat`, HNSW with the spec's settings
    otherwise (Milvus builds and compacts its segments by itself)."""
    metric = METRIC_TYPES[spec.metric]
    if spec.index.type == "flat":
        return {"index_type": "FLAT", "metric_type": metric}
    params = {"M": spec.index.hnsw_m, "efConstruction": spec.index.hnsw_ef_construction}
    return {"index_type": "HNSW", "metric_type": metric, "params": params}
