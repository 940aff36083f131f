"""The collection tests that hold for every backend, run on FAISS, on Milvus (a real
milvus-lite server) and on pgvector (a real PostgreSQL server): writes, search with filters
and exact, duplicates, restart, and the re-index with another model version answered
throughout."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from lens_server.collections import Collections, CollectionSpec, IndexConfig, NewItem
from lens_server.collections.milvus_items import milvus_filter
from lens_server.collections.pgvector_items import pg_filter
from lens_server.errors import FailedPrecondition, InvalidInput

_names = itertools.count()


class Backend:
    """Makes collections of one backend and opens them again as a restarted server would."""

    def __init__(self, kind: str, root: Path, uri: str) -> None:
        """`uri`: Milvus's address, or PostgreSQL's DSN."""
        self.kind, self.root, self.uri = kind, root, uri
        self.opened: list[Collections] = []

    def collections(self) -> Collections:
        found = Collections(self.root)
        if self.kind == "milvus":
            from lens_server.collections.milvus_engine import MilvusEngine

            found = Collections(self.root, MilvusEngine(self.uri))
        elif self.kind == "pgvector":
            from lens_server.collections.pgvector_engine import PgEngine

            found = Collections(self.root, pgvector=PgEngine(self.uri))
        found.open_all()
        self.opened.append(found)
        return found

    def make(self, dim: int = 8, model: str = "", index: str = "hnsw", metric: str = "cosine"):
        name = f"c{next(_names)}"
        spec = CollectionSpec(
            name, dim, metric, model, 1 if model else 0, IndexConfig(type=index), backend=self.kind
        )
        return self.collections().create(spec)

    def reopen(self, name: str):
        """The collection as a fresh server (or another replica) sees it."""
        return self.collections().get(name)


@pytest.fixture(params=["faiss", "milvus", "pgvector"])
def backend(request, tmp_path) -> Iterator[Backend]:
    uri = ""
    if request.param == "milvus":
        uri = request.getfixturevalue("milvus").uri
    elif request.param == "pgvector":
        uri = request.getfixturevalue("pg").dsn
    made = Backend(request.param, tmp_path / "collections", uri)
    yield made
    for found in made.opened:
        if made.kind != "milvus":
            found.close()


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def texts(data: np.ndarray, meta: Callable[[int], dict] = lambda i: {}) -> list[NewItem]:
    return [
        NewItem(f"t{i}", v, json.dumps(meta(i)), "text", f"text {i}".encode())
        for i, v in enumerate(data)
    ]


def ids(hits) -> list[str]:
    return [h.id for h in hits]


def test_writes_search_get_delete_and_restart(backend):
    data = vectors(60, 8)
    c = backend.make()
    c.upsert(texts(data, lambda i: {"colour": ["red", "blue", "green"][i % 3], "n": i}))
    hits = c.search(data[:5], 3)
    assert [ids(h)[0] for h in hits] == [f"t{i}" for i in range(5)]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-4)
    assert json.loads(hits[0][0].metadata) == {"colour": "red", "n": 0}
    # k past the engine's default candidate list (pgvector's ef_search is 40), then a small k
    # and the large one again on the same pooled connection: ef follows each search's k
    for k in (60, 3, 60):
        assert [len(row) for row in c.search(data[:2], k)] == [k, k]
    # the same write again (a retried request) changes nothing
    c.upsert(texts(data, lambda i: {"colour": ["red", "blue", "green"][i % 3], "n": i}))
    assert c.describe()["count"] == 60
    assert [r.id for r in c.get(["t3", "missing", "t1"])] == ["t3", "t1"]
    np.testing.assert_allclose(
        c.vectors_of(["t2"])[0], data[2] / np.linalg.norm(data[2]), rtol=1e-5
    )
    with pytest.raises(InvalidInput, match="query id 'nope' is not in collection"):
        c.vectors_of(["nope"])
    assert c.delete(["t0", "t1", "never"]) == 2
    c.upsert([NewItem("t2", -data[2], '{"colour": "black"}', "text", b"new")])  # replaced
    again = backend.reopen(c.spec.name)
    assert again.spec == c.spec
    assert again.describe()["count"] == 58
    found = {h.id for row in again.search(data[:3], 5) for h in row}
    assert not {"t0", "t1"} & found
    assert ids(again.search(-data[2:3], 1)[0]) == ["t2"]
    assert again.store.sources(["t2"]) == {"t2": ("text", b"new")}


def test_metadata_filters_and_exact_search(backend):
    data = vectors(90, 8, seed=1)
    c = backend.make()
    colours = ["red", "blue", "green"]
    c.upsert(texts(data, lambda i: {"colour": colours[i % 3], "odd": bool(i % 2), "n": i}))
    for exact in (False, True):
        hits = c.search(data[:6], 10, {"colour": "red"}, exact=exact)
        assert all(json.loads(h.metadata)["colour"] == "red" for row in hits for h in row)
        assert ids(hits[0])[0] == "t0" and ids(hits[3])[0] == "t3"
        hits = c.search(data[:1], 90, {"colour": {"in": ["red", "blue"]}, "odd": True}, exact)
        want = {f"t{i}" for i in range(90) if i % 3 != 2 and i % 2}
        assert set(ids(hits[0])) == want
        assert c.search(data[:1], 5, {"n": 7}, exact=exact)[0][0].id == "t7"
        assert c.search(data[:2], 5, {"colour": "purple"}, exact=exact) == [[], []]
    exact, approximate = c.search(data[:4], 5, exact=True), c.search(data[:4], 5)
    assert [ids(row) for row in exact] == [ids(row) for row in approximate]
    with pytest.raises(InvalidInput, match="values must be scalars"):
        c.search(data[:1], 5, {"colour": {"in": [["red"]]}})


def test_duplicates(backend):
    data = vectors(40, 8, seed=2)
    c = backend.make()
    items = texts(data)
    near = data[5] + 1e-3
    items.append(NewItem("copy-of-t5", near, "{}", "text", b"copy"))
    c.upsert(items)
    pairs = c.duplicates(0.999, 100)
    assert [(set(p[:2]), round(p[2], 2)) for p in pairs] == [({"t5", "copy-of-t5"}, 1.0)]


def test_reindex_answers_throughout_follows_writes_and_survives_a_restart(backend):
    old, new = vectors(30, 8, seed=3), vectors(40, 12, seed=4)
    c = backend.make(dim=8, model="m")
    c.upsert(texts(old[:30]))
    c.begin_reindex("m", 2, 12)
    assert c.reindex_target is not None and c.reindex_target.dim == 12
    pending = c.pending_sources(10)
    sources = [source for _, _, source in pending]
    assert len(set(sources)) == 10 and set(sources) <= {f"text {i}".encode() for i in range(30)}
    rows = np.array([row for row, _, _ in pending])
    assert rows.tolist() == sorted(rows.tolist())
    which = [int(source.decode().split()[1]) for source in sources]
    assert c.put_reindexed(rows, new[which]) == 10
    # searches keep answering from the old vectors meanwhile
    assert ids(c.search(old[:1], 1, version=1)[0]) == ["t0"]
    # a write during the re-index with the target's vectors too follows it (a dual write)
    c.upsert(
        [NewItem("t30", old[0] * -1, "{}", "text", b"text 30")],
        next_vectors=(2, new[30:31]),
        version=1,
    )
    with pytest.raises(FailedPrecondition, match="raw vectors cannot follow it"):
        c.upsert([NewItem("raw", old[0], "{}", "vector", None)], version=1)
    assert c.finish_reindex() is False  # rows are still pending
    # a restart (or another replica) resumes the re-index where it was
    c = backend.reopen(c.spec.name)
    assert c.reindex_target is not None and c.reindex_target.version == 2
    while batch := c.pending_sources(8):
        rows = np.array([row for row, _, _ in batch])
        which = [int(source.decode().split()[1]) for _, _, source in batch]
        assert c.put_reindexed(rows, new[which]) == len(batch)
    state = c.describe()["reindex"]
    assert (state.done, state.total) == (31, 31)
    assert c.finish_reindex() is True
    assert (c.spec.version, c.spec.dim, c.reindex_target) == (2, 12, None)
    assert ids(c.search(new[:3], 1, version=2)[2]) == ["t2"]
    assert ids(c.search(new[30:31], 1)[0]) == ["t30"]
    again = backend.reopen(c.spec.name)
    assert (again.spec.version, again.spec.dim, again.describe()["count"]) == (2, 12, 31)


def test_reindex_refusals_and_cancel(backend):
    raw = backend.make(dim=8, model="m")
    raw.upsert([NewItem("r", vectors(1, 8)[0], "{}", "vector", None)])
    with pytest.raises(FailedPrecondition, match="1 items given as raw vectors"):
        raw.begin_reindex("m", 2, 8)
    only = backend.make(dim=8)
    with pytest.raises(InvalidInput, match="holds vectors only"):
        only.begin_reindex("m", 2, 8)
    c = backend.make(dim=8, model="m")
    c.upsert(texts(vectors(5, 8)))
    with pytest.raises(FailedPrecondition, match="is at m version 1"):
        c.begin_reindex("m", 1, 8)
    c.begin_reindex("m", 2, 4)
    c.cancel_reindex()
    assert c.reindex_target is None and c.describe()["reindex"] is None
    assert backend.reopen(c.spec.name).reindex_target is None


def test_the_filter_as_a_milvus_expression():
    assert milvus_filter({"a": "x", "b": {"in": [1, True, None]}}) == (
        '(metadata["a"] == "x") and (metadata["b"] == 1 or metadata["b"] == true or '
        'metadata["b"] is null)'
    )
    assert milvus_filter({'q"uote': 'say "hi"'}) == '(metadata["q\\"uote"] == "say \\"hi\\"")'
    with pytest.raises(InvalidInput, match=re.escape('use a value or {"in": [values]}')):
        milvus_filter({"a": {"in": []}})


def test_the_filter_as_sql_with_parameters():
    condition, params = pg_filter({"a": "x", "b": {"in": [1, True, None]}})
    assert condition == (
        "(metadata -> %s = %s::jsonb) AND (metadata -> %s = %s::jsonb OR "
        "metadata -> %s = %s::jsonb OR metadata -> %s = %s::jsonb)"
    )
    assert params == ["a", '"x"', "b", "1", "b", "true", "b", "null"]
    quote = "x'); DROP TABLE lens_collections; --"
    assert pg_filter({quote: quote}) == ("(metadata -> %s = %s::jsonb)", [quote, f'"{quote}"'])
    with pytest.raises(InvalidInput, match=re.escape('use a value or {"in": [values]}')):
        pg_filter({"a": {"in": []}})


def test_pgvector_searches_through_its_hnsw_index_and_exact_past_it(pg, tmp_path):
    """PostgreSQL's planner prefers a scan of every row on small tables (or ones whose
    vectors are TOASTed): an approximate search must still go through the HNSW index, and
    an exact one must not. Counted by the database's own index statistics."""
    import psycopg

    backend = Backend("pgvector", tmp_path / "collections", pg.dsn)
    c = backend.make(dim=512)  # vectors past 2 kB: stored out of line (TOAST)
    data = vectors(200, 512, seed=3)
    c.upsert(texts(data))
    table = c._table

    def scans() -> int:
        c.engine.close()  # the pooled backends exit, flushing their statistics
        deadline = time.monotonic() + 3
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes "
                    "WHERE relname = %s AND indexrelname LIKE %s",
                    (table, "%vector%"),
                ).fetchone()
                if row[0] or time.monotonic() > deadline:
                    return int(row[0])
                conn.execute("SELECT pg_stat_clear_snapshot()")
                time.sleep(0.1)

    try:
        assert scans() == 0
        assert ids(c.search(data[:1], 5, exact=True)[0])[0] == "t0"
        assert scans() == 0
        hits = c.search(data[:4], 5)
        assert [ids(row)[0] for row in hits] == ["t0", "t1", "t2", "t3"]
        assert scans() == 4
    finally:
        backend.collections().close()
