"""The PostgreSQL + pgvector database that holds collections with `backend="pgvector"` (see
docs/backends.md).

Everything that makes such a collection lives in the database, so that every lens replica
pointed at it sees the same collections: the `lens_collections` table holds each one's record
(its spec, the generation count of its swaps and the target of a re-index in progress, as
`milvus_engine.Record`), `lens_<name>` its items (id, vector, metadata as JSONB, source,
HNSW index) and `lens_<name>_next` the shadow of a re-index. PostgreSQL's DDL is
transactional, so a swap renames the shadow over the serving table and records the new
generation in one commit. psycopg and pgvector are an optional extra
(`pip install 'lens[pgvector]'`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lens_server.collections.milvus_engine import Record
from lens_server.collections.spec import CollectionSpec
from lens_server.errors import InvalidInput, LensError, Unavailable

log = logging.getLogger(__name__)

META = "lens_collections"
# pgvector's operator classes and distance operators by lens metric; `<#>` is the negative
# inner product and `<->` the Euclidean distance.
OPCLASSES = {"cosine": "vector_cosine_ops", "inner_product": "vector_ip_ops", "l2": "vector_l2_ops"}
OPERATORS = {"cosine": "<=>", "inner_product": "<#>", "l2": "<->"}
# pgvector's HNSW keeps at most this many candidates (`hnsw.ef_search`).
MAX_EF_SEARCH = 1000
# PostgreSQL truncates identifiers to 63 bytes; longer names are shortened with a hash.
_MAX_IDENTIFIER = 63


def _psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        from pgvector.psycopg import register_vector
    except ImportError:
        raise Unavailable(
            "the pgvector backend needs psycopg and pgvector, which this server does not "
            "have: pip install 'lens[pgvector]'"
        ) from None
    return psycopg, register_vector


def shown(dsn: str) -> str:
    """The DSN without its password, as errors and logs name the database."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PgEngine:
    """One PostgreSQL database at `dsn` (`postgresql://user@host:port/db`), connected on
    first use.

    Thread-safe: each call takes a connection of its own from a small pool (a psycopg
    connection runs one statement at a time). Errors from the database become `Unavailable`
    naming it; a connection that failed is closed rather than reused.
    """

    def __init__(self, dsn: str, timeout_s: float = 10.0) -> None:
        if not dsn:
            raise InvalidInput(
                "the pgvector backend needs a database: --pg-dsn postgresql://user@host:port/db"
            )
        if urlsplit(dsn).scheme not in ("postgresql", "postgres"):
            raise InvalidInput(f"--pg-dsn must be a postgresql:// URL, got {shown(dsn)!r}")
        self.dsn = dsn
        self.where = shown(dsn)
        self.timeout_s = timeout_s
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._ready = False

    # -- connections and errors --------------------------------------------------------------

    @contextmanager
    def connection(self, doing: str) -> Iterator[Any]:
        """A connection (autocommit: open `transaction()` on it for more than one statement);
        failures while it is held as `Unavailable` naming the backend and `doing`."""
        psycopg, register_vector = _psycopg()
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        reusable = False
        try:
            with self.errors(doing):
                if conn is None:
                    conn = psycopg.connect(
                        self.dsn, autocommit=True, connect_timeout=max(1, int(self.timeout_s))
                    )
                    self._ensure_meta(conn)
                    register_vector(conn)
                try:
                    yield conn
                except LensError:  # lens's own refusal: the connection is sound
                    reusable = True
                    raise
            reusable = True
        finally:
            if conn is not None:
                idle = psycopg.pq.TransactionStatus.IDLE
                if reusable and not conn.closed and conn.info.transaction_status == idle:
                    with self._lock:
                        self._idle.append(conn)
                else:
                    conn.close()  # its state is unknown: a later call connects afresh

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Database failures (down, refused, timed out, a wrong DSN) as `Unavailable` naming
        the backend."""
        psycopg, _ = _psycopg()
        try:
            yield
        except LensError:
            raise
        except psycopg.Error as e:
            message = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise Unavailable(f"pgvector backend at {self.where}: {doing} failed: {message}") from e

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- the meta table ----------------------------------------------------------------------

    def _ensure_meta(self, conn: Any) -> None:
        """The extension and the meta table, made if missing (once per engine)."""
        if self._ready:
            return
        with conn.transaction():
            # Two servers starting at once would race to create them: one at a time.
            conn.execute("SELECT pg_advisory_xact_lock(7_365_636)")
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {META} (name text PRIMARY KEY, record text)")
        self._ready = True

    def records(self) -> dict[str, Record]:
        with self.connection("listing collections") as conn:
            rows = conn.execute(f"SELECT name, record FROM {META}").fetchall()
        return {name: Record.from_row({"record": raw}) for name, raw in rows}

    def record(self, name: str) -> Record | None:
        with self.connection(f"reading collection {name}") as conn:
            row = conn.execute(f"SELECT record FROM {META} WHERE name = %s", (name,)).fetchone()
        return Record.from_row({"record": row[0]}) if row else None

    def save(self, record: Record, conn: Any = None) -> None:
        """Writes `record`, on `conn` (inside the caller's transaction) if given."""
        sql = (
            f"INSERT INTO {META} (name, record) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record"
        )
        values = (record.spec.name, record.to_row()["record"])
        if conn is not None:
            conn.execute(sql, values)
            return
        with self.connection(f"saving collection {record.spec.name}") as own:
            own.execute(sql, values)

    # -- data tables -------------------------------------------------------------------------

    def count(self, table: str, doing: str) -> int | None:
        """Rows in `table`; None when it does not exist (a shadow that a swap or a cancel on
        another replica, or this server's driver, removed after the caller read the record)."""
        psycopg, _ = _psycopg()
        with self.connection(doing) as conn:
            try:
                return int(conn.execute(f"SELECT count(*) FROM {quoted(table)}").fetchone()[0])
            except psycopg.errors.UndefinedTable:
                return None

    def create_table(self, conn: Any, spec: CollectionSpec, table: str, dim: int) -> None:
        """A fresh data table `table` of `dim` vectors for `spec`, on `conn` (in the caller's
        transaction).

        `row` numbers each write of an item (an upsert takes a new one): a re-embedding handed
        out for one row is dropped when the item was written again meanwhile. `written` is the
        lens sequence number of that write.
        """
        name = quoted(table)
        conn.execute(f"DROP TABLE IF EXISTS {name}")  # left by a crash before its record
        conn.execute(
            f"CREATE TABLE {name} (id text PRIMARY KEY, row bigserial UNIQUE, "
            f"vector vector({dim}) NOT NULL, metadata jsonb NOT NULL, source_kind text NOT NULL, "
            "source bytea, written bigint NOT NULL)"
        )
        if spec.index.type != "flat":  # named by PostgreSQL: a rename keeps it unique
            # pgvector takes 2 <= m <= 100 and ef_construction >= 2 m.
            m = min(max(int(spec.index.hnsw_m), 2), 100)
            ef_construction = max(int(spec.index.hnsw_ef_construction), 2 * m)
            conn.execute(
                f"CREATE INDEX ON {name} USING hnsw (vector {OPCLASSES[spec.metric]}) "
                f"WITH (m = {m}, ef_construction = {ef_construction})"
            )


def table_names(name: str) -> tuple[str, str]:
    """(serving, shadow) tables of collection `name`, within PostgreSQL's identifier limit."""
    base = f"lens_{name}"
    if len(base) + len("_next") > _MAX_IDENTIFIER:
        base = f"lens_{name[:40]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return base, f"{base}_next"


def quoted(identifier: str) -> str:
    """`identifier` as a quoted SQL identifier (lens names hold letters, digits, '.', '_' and
    '-', checked at creation; a quote is doubled all the same)."""
    return '"' + identifier.replace('"', '""') + '"'
