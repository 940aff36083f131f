"""Compact storage of a collection's vectors (float16, int8, binary) in-process, with real
FAISS and SQLite: search quality against float32, memory, restarts and crashes, filters,
duplicates, re-indexing, and the combinations refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lens_server.collections import Collection, CollectionSpec, IndexConfig
from lens_server.collections.faiss_index import INT8_MIN_TRAIN
from lens_server.errors import InvalidInput
from tests.server.collections.test_collection import clustered, ids_of, items, wait_rebuilt
from tests.server.collections.test_reindex import (
    check_at_v2,
    drive,
    embed_all,
    names,
    source_of,
    texts,
)

DIM = 64
COMPACT = [("flat", "float16"), ("flat", "int8"), ("flat", "binary"), ("hnsw", "float16"),
           ("hnsw", "int8")]  # fmt: skip


def make(folder: Path, kind: str, storage: str, metric: str = "cosine") -> Collection:
    spec = CollectionSpec("c", DIM, metric, index=IndexConfig(type=kind, storage=storage))
    return Collection.create(folder, spec)


def recall_at_10(c: Collection, truth: Collection, queries: np.ndarray) -> float:
    got = [set(ids_of(h)) for h in c.search(queries, 10)]
    want = [set(ids_of(h)) for h in truth.search(queries, 10)]
    return float(np.mean([len(g & w) / 10 for g, w in zip(got, want, strict=True)]))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(1200, DIM, seed=3, centres=60)


@pytest.fixture(scope="module")
def truth(data: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    c = make(tmp_path_factory.mktemp("truth") / "c", "flat", "float32")
    c.upsert(items(data))
    yield c
    c.close()


@pytest.mark.parametrize(("kind", "storage"), COMPACT)
def test_finds_what_float32_finds_in_less_memory(tmp_path, data, truth, kind, storage):
    c = make(tmp_path / "c", kind, storage)
    c.upsert(items(data))
    wait_rebuilt(c)
    assert c.index.kind == kind and c.describe()["built_storage"] == storage
    queries = data[::12] + 0.05 * np.random.default_rng(1).normal(size=(100, DIM))
    assert recall_at_10(c, truth, queries.astype(np.float32)) >= 0.9
    tops = [ids_of(h)[0] for h in c.search(data[:20], 1)]
    assert tops == [f"v{i}" for i in range(20)]
    ratio = {"float16": 2, "int8": 4, "binary": 32}[storage]
    if kind == "flat":  # ids (8 bytes each) beside the vectors
        vectors = c.describe()["memory_bytes"] - 8 * len(data)
        assert vectors * ratio == truth.describe()["memory_bytes"] - 8 * len(data)
    c.close()


def test_binary_hits_carry_exact_scores(tmp_path, data):
    c = make(tmp_path / "c", "flat", "binary")
    c.upsert(items(data))
    query = data[7] / np.linalg.norm(data[7])
    hits = c.search(query[None], 5)[0]
    stored = {r.id: r.vector for r in c.get(ids_of(hits))}
    for hit in hits:
        assert hit.score == pytest.approx(float(stored[hit.id] @ query), abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    c.close()


@pytest.mark.parametrize("storage", ["float16", "int8", "binary"])
def test_recovers_from_snapshot_plus_log(tmp_path, data, storage):
    c = make(tmp_path / "c", "flat", storage)
    c.upsert(items(data[:800]))
    wait_rebuilt(c)
    c.snapshot()
    c.upsert(items(data[800:], start=800))  # only in the log
    c.delete(["v3", "v900"])
    c.store.close()  # a crash: no snapshot, no close
    again = Collection.open(tmp_path / "c")
    assert again.index.storage == storage and again.index.live == len(data) - 2
    tops = [ids_of(h)[0] for h in again.search(data[[0, 1, 850, 1100]], 1)]
    assert tops == ["v0", "v1", "v850", "v1100"]
    found = {h.id for row in again.search(data, 3) for h in row}
    assert "v3" not in found and "v900" not in found
    again.close()
    reopened = Collection.open(tmp_path / "c")  # from the snapshot `close` wrote
    assert reopened.index.storage == storage and reopened.index.live == len(data) - 2
    reopened.close()


def test_int8_is_float32_until_it_has_enough_to_train_on(tmp_path, data):
    c = make(tmp_path / "c", "flat", "int8")
    c.upsert(items(data[: INT8_MIN_TRAIN - 1]))
    assert c.describe()["built_storage"] == "float32"
    c.upsert(items(data[INT8_MIN_TRAIN - 1 : 600], start=INT8_MIN_TRAIN - 1))
    wait_rebuilt(c)
    assert c.describe()["built_storage"] == "int8" and c.index.live == 600
    c.close()


def test_binary_filters_and_duplicates(tmp_path, data):
    c = make(tmp_path / "c", "flat", "binary")
    c.upsert(items(data[:300], meta=lambda i: f'{{"odd": {str(i % 2 == 1).lower()}}}'))
    c.upsert(items(data[:1], prefix="copy"))  # a duplicate of v0
    hits = c.search(data[:10], 5, filter_={"odd": True})
    assert all(int(h.id[1:]) % 2 == 1 for row in hits for h in row)
    assert ids_of(hits[1])[0] == "v1"
    pairs = c.duplicates(0.999, 10)
    assert [(a, b) for a, b, _ in pairs] == [("v0", "copy0")]
    c.close()


@pytest.mark.parametrize("storage", ["int8", "binary"])
def test_a_reindex_keeps_the_storage(tmp_path, storage):
    spec = CollectionSpec("c", 16, "cosine", "m", 1, IndexConfig(type="flat", storage=storage))
    c = Collection.create(tmp_path / "c", spec)
    ids = names(300)
    c.upsert(texts(ids), version=1)
    wait_rebuilt(c)
    assert c.index.storage == storage
    c.begin_reindex("m", 2, 24)
    drive(c)
    wait_rebuilt(c)
    assert c.index.storage == storage and c.spec.index.storage == storage
    if storage == "binary":  # rescored: exact scores
        check_at_v2(c, {i: source_of(i) for i in ids})
    assert c.spec.version == 2 and c.index.live == len(ids)
    hits = c.search(embed_all([source_of(i) for i in ids], 2), 1)
    assert [ids_of(h)[0] for h in hits] == ids
    c.close()


@pytest.mark.parametrize(
    ("config", "dim", "words"),
    [
        ({"storage": "bfloat16"}, 64, "storage must be one of"),
        ({"storage": "binary", "type": "hnsw"}, 64, "binary storage needs a flat index"),
        ({"storage": "int8", "type": "ivf-pq"}, 64, "ivf-pq compresses"),
        ({"storage": "binary"}, 12, "divisible by 8"),
    ],
)
def test_refusals(config, dim, words):
    with pytest.raises(InvalidInput, match=words):
        CollectionSpec("c", dim, index=IndexConfig(**config))
