"""A collection in-process: recovery from snapshot + log, rebuilds, tombstones, filters."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lens_server.collections import Collection, CollectionSpec, IndexConfig, NewItem
from lens_server.errors import InvalidInput


def clustered(n: int, dim: int, seed: int = 0, centres: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim))
    return (means[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def items(vectors: np.ndarray, prefix: str = "v", start: int = 0, meta=None) -> list[NewItem]:
    return [
        NewItem(f"{prefix}{start + i}", v, meta(start + i) if meta else "{}", "vector", None)
        for i, v in enumerate(vectors)
    ]


def spec(kind: str = "flat", dim: int = 16, **config) -> CollectionSpec:
    return CollectionSpec("c", dim, "cosine", index=IndexConfig(type=kind, **config))


def wait_rebuilt(collection: Collection, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while collection.describe()["rebuilding"] and time.monotonic() < deadline:
        time.sleep(0.05)


def ids_of(hits) -> list[str]:
    return [h.id for h in hits]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_recovers_from_snapshot_plus_log_without_duplicates(tmp_path, kind):
    data = clustered(300, 16)
    c = Collection.create(tmp_path / "c", spec(kind))
    c.upsert(items(data[:200]))
    c.snapshot()
    c.upsert(items(data[200:], start=200))  # after the snapshot: only in the log
    c.delete(["v5", "v250"])
    c.upsert(items(data[:1] * -1, start=7))  # replaces v7 with another vector
    c.store.close()  # a crash: no snapshot, no close

    again = Collection.open(tmp_path / "c")
    assert again.store.count() == 298
    assert again.index.live == 298
    hits = again.search(data[:10], 5)
    assert all(len(set(ids_of(h))) == len(h) for h in hits)  # nothing twice
    for i in (0, 1, 2, 3):
        assert ids_of(hits[i])[0] == f"v{i}"
    found = {h.id for row in again.search(data, 3) for h in row}
    assert "v5" not in found and "v250" not in found
    assert ids_of(again.search(-data[:1], 1)[0]) == ["v7"]
    again.close()


def test_hnsw_removed_items_are_never_returned_and_too_many_trigger_a_rebuild(tmp_path):
    data = clustered(400, 16)
    c = Collection.create(tmp_path / "c", spec("hnsw"))
    c.upsert(items(data))
    c.delete([f"v{i}" for i in range(0, 120)])
    wait_rebuilt(c)
    assert c.index.kind == "hnsw" and not c.index.tombstones  # rebuilt, compacted
    found = {h.id for row in c.search(data[:120], 10) for h in row}
    assert not found & {f"v{i}" for i in range(120)}
    c.close()


def test_ivf_pq_is_trained_once_there_are_enough_vectors(tmp_path):
    config = {"ivf_nlist": 8, "ivf_nprobe": 8, "pq_nbits": 4, "pq_m": 16}
    c = Collection.create(tmp_path / "c", spec("ivf-pq", **config))
    data = clustered(1200, 16)
    c.upsert(items(data[:100]))
    assert c.index.kind == "flat"  # too few to train: exact meanwhile
    c.upsert(items(data[100:], start=100))
    wait_rebuilt(c)
    assert c.describe()["built_type"] == "ivf-pq"
    assert c.store.count() == c.index.live == 1200
    exact = c.search(data[:50], 10, exact=True)
    approx = c.search(data[:50], 10)
    recall = np.mean(
        [len(set(ids_of(a)) & set(ids_of(e))) / 10 for a, e in zip(approx, exact, strict=True)]
    )
    assert recall > 0.5
    c.close()
    reopened = Collection.open(tmp_path / "c")
    assert reopened.index.kind == "ivf-pq" and reopened.index.live == 1200
    reopened.close()


def test_auto_grows_from_flat_to_hnsw(tmp_path):
    c = Collection.create(tmp_path / "c", spec("auto", auto_hnsw_from=500))
    data = clustered(700, 16)
    c.upsert(items(data[:400]))
    assert c.index.kind == "flat"
    c.upsert(items(data[400:], start=400))
    wait_rebuilt(c)
    assert c.index.kind == "hnsw" and c.index.live == 700
    c.close()


def test_metadata_filters(tmp_path):
    data = clustered(60, 16)
    c = Collection.create(tmp_path / "c", spec())
    colours = ["red", "green", "blue"]
    c.upsert(
        items(
            data,
            meta=lambda i: (
                f'{{"colour": "{colours[i % 3]}", "n": {i}, "odd": {str(i % 2 == 1).lower()}}}'
            ),
        )
    )
    for row in c.search(data[:5], 10, {"colour": "red"}):
        assert row and all(int(h.id[1:]) % 3 == 0 for h in row)
    hits = c.search(data[:1], 60, {"colour": {"in": ["green", "blue"]}, "odd": True})
    assert hits[0] and all(int(h.id[1:]) % 3 and int(h.id[1:]) % 2 for h in hits[0])
    assert c.search(data[:1], 5, {"n": 7})[0][0].id == "v7"
    assert c.search(data[:1], 5, {"colour": "purple"}) == [[]]
    with pytest.raises(InvalidInput, match="in"):
        c.search(data[:1], 5, {"colour": {"eq": "red"}})
    c.close()


def test_duplicates(tmp_path):
    data = clustered(50, 16, centres=50)
    c = Collection.create(tmp_path / "c", spec())
    c.upsert(items(data))
    c.upsert(
        [
            NewItem("copy-of-v3", data[3] * 1.0001, "{}", "vector", None),
            NewItem("copy-of-v9", data[9], "{}", "vector", None),
        ]
    )
    pairs = c.duplicates(0.9999, 100)
    assert {frozenset(p[:2]) for p in pairs} == {
        frozenset({"v3", "copy-of-v3"}),
        frozenset({"v9", "copy-of-v9"}),
    }
    c.close()
