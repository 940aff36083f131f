"""Re-indexing a collection with another model version: shadow, writes meanwhile, the swap,
crashes at each step of it, refusals, HNSW and IVF-PQ.

The "models" are deterministic functions of an item's source: version 1 gives (16,) vectors,
version 2 gives (24,) ones, so every stored vector can be checked exactly.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lens_server.collections import Collection, CollectionSpec, IndexConfig, NewItem, ReindexState
from lens_server.collections.collection import SPEC, VersionChanged
from lens_server.collections.snapshots import Snapshots
from lens_server.errors import FailedPrecondition, InvalidInput

DIMS = {1: 16, 2: 24, 3: 24}


class Crash(Exception):
    """Stands for the process dying at that point."""


def embed(source: bytes, version: int) -> np.ndarray:
    """The fake model `m` at `version`: a seeded hash of the source → (dim,) float32."""
    seed = int.from_bytes(hashlib.sha256(b"%d:" % version + source).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=DIMS[version]).astype(np.float32)


def embed_all(sources: list[bytes], version: int) -> np.ndarray:
    return np.stack([embed(s, version) for s in sources])  # (n, dim)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def source_of(id_: str, tag: str = "") -> bytes:
    return f"text {id_}{tag}".encode()


def texts(ids: list[str], version: int = 1, tag: str = "") -> list[NewItem]:
    return [
        NewItem(i, embed(source_of(i, tag), version), "{}", "text", source_of(i, tag)) for i in ids
    ]


def next_of(ids: list[str], version: int = 2, tag: str = "") -> tuple[int, np.ndarray]:
    return version, embed_all([source_of(i, tag) for i in ids], version)


def names(n: int, prefix: str = "t", start: int = 0) -> list[str]:
    return [f"{prefix}{i}" for i in range(start, start + n)]


def make(tmp_path: Path, n: int, kind: str = "flat", **config) -> Collection:
    spec = CollectionSpec("c", 16, "cosine", "m", 1, IndexConfig(type=kind, **config))
    c = Collection.create(tmp_path / "c", spec)
    if n:
        c.upsert(texts(names(n)), version=1)
    return c


def put(c: Collection, batch: list[tuple[int, str, bytes | None]], version: int = 2) -> int:
    rows = np.array([row for row, _, _ in batch], np.int64)
    return c.put_reindexed(rows, embed_all([s or b"" for _, _, s in batch], version))


def drive(c: Collection, batch: int = 64) -> None:
    """The driver's loop, synchronously."""
    while True:
        pending = c.pending_sources(batch)
        if not pending:
            if c.finish_reindex():
                return
            continue
        put(c, pending)


def check_at_v2(c: Collection, sources: dict[str, bytes]) -> None:
    """Exactly the items `sources` (id → source), each with its version 2 vector."""
    assert c.spec.version == 2 and c.spec.dim == 24 and c.store.dim == 24
    assert CollectionSpec.load(c.folder) == c.spec
    assert c.reindexing is None and c.describe()["reindex"] is None
    assert c.store.count() == c.index.live == len(sources)
    found = c.get(list(sources))
    assert sorted(r.id for r in found) == sorted(sources)
    for stored in found:
        np.testing.assert_allclose(stored.vector, unit(embed(sources[stored.id], 2)), atol=1e-6)
    ids = sorted(sources)
    hits = c.search(embed_all([sources[i] for i in ids], 2), 3)
    for id_, row in zip(ids, hits, strict=True):
        assert row[0].id == id_ and row[0].score > 0.999
        assert len({h.id for h in row}) == len(row)  # nothing twice
        assert {h.id for h in row} <= set(sources)


def test_full_reindex_changes_the_dimension(tmp_path):
    c = make(tmp_path, 200)
    c.begin_reindex("m", 2, 24)
    assert c.reindexing == ReindexState("m", 2, 24, done=0, total=200)
    first = c.pending_sources(50)
    assert [r for r, _, _ in first] == sorted(r for r, _, _ in first)
    assert {kind for _, kind, _ in first} == {"text"}
    assert put(c, first) == 50
    assert c.reindexing == ReindexState("m", 2, 24, done=50, total=200)
    assert c.describe()["reindex"] == c.reindexing

    # Searches answer from the version 1 vectors until the swap.
    assert c.spec.dim == 16 and c.index.index.d == 16
    hits = c.search(embed_all([source_of("t7")], 1), 1, version=1)
    assert hits[0][0].id == "t7" and hits[0][0].score > 0.999
    assert c.pending_sources(10, after=first[-1][0]) == c.pending_sources(10)

    drive(c)
    snapshots = [p.name for p in c.folder.glob("index-*.faiss")]
    assert snapshots == [f"index-{c.store.seq():012d}.faiss"]  # a fresh one, of version 2
    sources = {i: source_of(i) for i in names(200)}
    check_at_v2(c, sources)
    with pytest.raises(VersionChanged, match="version 2"):
        c.search(embed_all([source_of("t7")], 1), 1, version=1)
    c.close()
    again = Collection.open(tmp_path / "c")
    check_at_v2(again, sources)
    again.close()


def test_writes_during_the_reindex_follow_it(tmp_path):
    c = make(tmp_path, 100)
    c.begin_reindex("m", 2, 24)
    batch = c.pending_sources(30)  # rows of t0 … t29, embedded "outside the lock" below

    c.upsert(texts(names(10, "new")), next_of(names(10, "new")), version=1)  # dual write
    c.upsert(texts(names(5, "late")), version=1)  # left pending
    c.upsert(texts(["t9"], version=1), next_of(["t9"], version=3), version=1)  # another target
    c.upsert(texts(["t3", "t50"], tag="'"), next_of(["t3", "t50"], tag="'"), version=1)
    c.upsert(texts(["t51"], tag="'"), version=1)  # replaced, its new row pending
    assert c.delete(["t5", "t60", "absent"]) == 2
    dup = texts(["twice", "twice"], tag="!")  # an id twice in one write: the last one wins
    c.upsert(dup, next_of(["twice", "twice"], tag="!"), version=1)
    assert c.reindexing == ReindexState("m", 2, 24, done=13, total=114)

    # t3 and t9 were replaced and t5 deleted since `batch` was read: their old rows stay out.
    assert put(c, batch) == 27
    assert put(c, batch) == 0  # stored already
    assert c.reindexing is not None and c.reindexing.done == 40
    pending = {r for r, _, _ in c.pending_sources(1000)}
    assert len(pending) == 114 - 40 and not pending & {r for r, _, _ in batch}

    drive(c, batch=16)
    sources = {i: source_of(i) for i in names(100) if i not in ("t5", "t60")}
    sources |= {i: source_of(i, "'") for i in ("t3", "t50", "t51")}
    sources |= {i: source_of(i) for i in names(10, "new") + names(5, "late")}
    sources["twice"] = source_of("twice", "!")
    check_at_v2(c, sources)
    found = {h.id for row in c.search(embed_all(list(sources.values()), 2), 10) for h in row}
    assert found <= set(sources)
    c.close()


def test_finish_waits_for_pending_rows_and_rebuilds(tmp_path):
    c = make(tmp_path, 40)
    assert c.finish_reindex()  # nothing to finish
    c.begin_reindex("m", 2, 24)
    put(c, c.pending_sources(39))
    assert not c.finish_reindex()
    assert c.spec.version == 1 and c.reindexing is not None
    put(c, c.pending_sources(10))
    c.upsert(texts(["more"]), version=1)
    assert not c.finish_reindex()
    put(c, c.pending_sources(10))
    c._rebuilding = threading.Thread()  # a type rebuild running
    assert not c.finish_reindex()
    c._rebuilding = None
    assert c.finish_reindex()
    check_at_v2(c, {i: source_of(i) for i in [*names(40), "more"]})
    c.close()


def test_a_crash_during_the_reindex_resumes_where_it_was(tmp_path):
    c = make(tmp_path, 200)
    c.snapshot()
    c.begin_reindex("m", 2, 24)
    for _ in range(2):
        put(c, c.pending_sources(40))
    c.delete(["t0"])  # was done
    c.upsert(texts(["t150"], tag="'"), next_of(["t150"], tag="'"), version=1)
    c.store.close()  # a crash: no snapshot, no close

    again = Collection.open(tmp_path / "c")
    assert again.reindexing == ReindexState("m", 2, 24, done=80, total=199)
    assert again.spec.version == 1 and again.index.live == 199
    shadow = again._reindexer.shadow
    assert shadow is not None and shadow.index.live == 80
    again.begin_reindex("m", 2, 24)  # the same target: resumes
    assert again.reindexing is not None and again.reindexing.done == 80
    drive(again)
    sources = {i: source_of(i) for i in names(200)[1:]} | {"t150": source_of("t150", "'")}
    check_at_v2(again, sources)
    again.close()


@pytest.mark.parametrize("where", ["before-commit", "before-spec", "before-snapshot"])
def test_a_crash_during_the_swap_leaves_one_version_or_the_other(tmp_path, monkeypatch, where):
    c = make(tmp_path, 120)
    c.snapshot()
    c.begin_reindex("m", 2, 24)
    put(c, c.pending_sources(1000))

    def crash(*_):
        raise Crash

    if where == "before-commit":  # the snapshots are gone, the database is not committed
        drop = Snapshots.drop
        monkeypatch.setattr(Snapshots, "drop", lambda self: (drop(self), crash()))
    elif where == "before-spec":  # committed; collection.json still says version 1
        monkeypatch.setattr(CollectionSpec, "save", crash)
    else:  # swapped and saved; no fresh snapshot yet
        monkeypatch.setattr(Collection, "_snapshot", crash)
    with pytest.raises(Crash):
        c.finish_reindex()
    monkeypatch.undo()
    assert not list(c.folder.glob("index-*.faiss"))
    c.store.close()

    again = Collection.open(tmp_path / "c")
    sources = {i: source_of(i) for i in names(120)}
    if where == "before-commit":
        assert again.spec.version == 1 and again.spec.dim == 16
        assert again.reindexing == ReindexState("m", 2, 24, done=120, total=120)
        hits = again.search(embed_all([source_of("t4")], 1), 1)
        assert hits[0][0].id == "t4" and hits[0][0].score > 0.999
        assert again.finish_reindex()
    else:
        assert '"version": 2' in (again.folder / SPEC).read_text()
    check_at_v2(again, sources)
    again.close()


def test_refusals_and_cancel(tmp_path):
    c = make(tmp_path, 50)
    c.upsert([NewItem(f"raw{i}", np.ones(16, np.float32), "{}", "vector", None) for i in (1, 2)])
    with pytest.raises(FailedPrecondition, match="collection c holds 2 items given as raw"):
        c.begin_reindex("m", 2, 24)
    assert c.reindexing is None
    c.delete(["raw1", "raw2"])
    with pytest.raises(FailedPrecondition, match="is at m version 1"):
        c.begin_reindex("m", 1, 16)
    with pytest.raises(InvalidInput, match="dim"):
        c.begin_reindex("m", 2, 0)

    before = {r.id: r.vector for r in c.get(names(50))}
    files = sorted(p.name for p in c.folder.iterdir())
    c.begin_reindex("m", 3, 24)
    put(c, c.pending_sources(20), version=3)
    c.begin_reindex("m", 2, 24)  # another target: starts over
    assert c.reindexing == ReindexState("m", 2, 24, done=0, total=50)
    put(c, c.pending_sources(20))
    assert c.put_reindexed(np.array([c.pending_sources(1)[0][0]]), np.ones((1, 24)), 3) == 0
    with pytest.raises(InvalidInput, match="dim 16"):
        c.put_reindexed(np.array([c.pending_sources(1)[0][0]]), np.ones((1, 16)))
    raw = [NewItem("raw3", np.ones(16, np.float32), "{}", "vector", None)]
    with pytest.raises(FailedPrecondition, match="raw vectors cannot follow"):
        c.upsert(raw)
    assert c.store.count() == 50

    c.cancel_reindex()
    c.cancel_reindex()  # none: nothing to do
    assert c.reindexing is None and c.describe()["reindex"] is None
    assert c.pending_sources(10) == [] and put(c, [(1, "text", b"x")]) == 0
    table = c._reindexer.table
    assert table.progress() == (0, 50) and table.target() is None
    assert c.spec == CollectionSpec.load(c.folder) and c.spec.version == 1
    assert {r.id: r.vector for r in c.get(names(50))}.keys() == before.keys()
    for row in c.get(names(50)):
        np.testing.assert_array_equal(row.vector, before[row.id])
    assert sorted(p.name for p in c.folder.iterdir()) == files
    c.upsert(raw)  # raw vectors are fine again
    c.close()
    again = Collection.open(tmp_path / "c")
    assert again.reindexing is None and again.spec.version == 1 and again.store.count() == 51
    again.close()

    vectors_only = Collection.create(tmp_path / "v", CollectionSpec("v", 16))
    with pytest.raises(InvalidInput, match="vectors only"):
        vectors_only.begin_reindex("m", 2, 24)
    vectors_only.close()


def test_writes_that_race_the_swap(tmp_path):
    c = make(tmp_path, 30)
    c.begin_reindex("m", 2, 24)
    drive(c)
    # Embedded with version 1 (and 2, while it was the target) before the swap, written after.
    c.upsert(texts(["late"]), next_of(["late"]), version=1)
    with pytest.raises(VersionChanged, match="not 1"):
        c.upsert(texts(["later"]), version=1)
    with pytest.raises(InvalidInput, match="dim 16"):
        c.upsert(texts(["later"]))
    check_at_v2(c, {i: source_of(i) for i in [*names(30), "late"]})
    c.close()


def test_hnsw_swaps_without_the_old_tombstones(tmp_path):
    c = make(tmp_path, 300, "hnsw")
    c.delete(names(30))  # 10%: tombstones in the old index, under the rebuild threshold
    old_dead = set(c.index.tombstones)
    assert len(old_dead) == 30 and not c.describe()["rebuilding"]
    c.begin_reindex("m", 2, 24)
    put(c, c.pending_sources(100))
    shadow_dead = {r.row for r in c.get(names(10, start=30))}
    c.delete(names(10, start=30))  # done already: tombstones in the shadow
    c.upsert(texts(["t299"], tag="'"), version=1)  # not done: no tombstone
    c.upsert(texts(["t200"], tag="'"), next_of(["t200"], tag="'"), version=1)
    drive(c)
    assert c.index.kind == "hnsw"
    assert not old_dead & set(c.index.rows().tolist())
    assert c.index.tombstones == shadow_dead and not c.describe()["rebuilding"]
    sources = {i: source_of(i) for i in names(260, start=40)}
    sources |= {i: source_of(i, "'") for i in ("t200", "t299")}
    check_at_v2(c, sources)
    found = {h.id for row in c.search(embed_all(list(sources.values()), 2), 20) for h in row}
    assert found <= set(sources)
    c.close()
    again = Collection.open(tmp_path / "c")
    check_at_v2(again, sources)
    again.close()


def test_an_ivf_pq_target_is_trained_after_the_swap(tmp_path):
    config = {"ivf_nlist": 8, "ivf_nprobe": 8, "pq_nbits": 4, "pq_m": 8}
    c = make(tmp_path, 0, "ivf-pq", **config)
    for start in range(0, 900, 300):
        c.upsert(texts(names(300, start=start)), version=1)
    wait_rebuilt(c)
    assert c.index.kind == "ivf-pq"
    c.begin_reindex("m", 2, 24)
    shadow = c._reindexer.shadow
    assert shadow is not None and shadow.index.kind == "flat"
    drive(c, batch=256)
    assert c.spec.dim == 24 and c.store.count() == 900
    wait_rebuilt(c)
    assert c.index.kind == "ivf-pq" and c.index.live == 900 and c.index.index.d == 24
    hits = c.search(embed_all([source_of("t5")], 2), 10)
    assert "t5" in {h.id for h in hits[0]}
    c.close()


def wait_rebuilt(c: Collection, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while c.describe()["rebuilding"] and time.monotonic() < deadline:
        time.sleep(0.05)


def test_concurrent_writes_searches_and_driver(tmp_path):
    """The server's pattern in threads: writers dual-write while a re-index is in progress and
    retry on VersionChanged, searchers pass the version they embedded with."""
    c = make(tmp_path, 400, "hnsw")
    sources = {i: source_of(i) for i in names(400)}
    stable = names(50)  # never written again: searches must keep finding them
    done, errors = threading.Event(), []

    def write() -> None:
        for j in range(120):
            ids = [f"w{j}-{k}" for k in range(4)] + [f"t{50 + (j * 7) % 350}"]
            tag = f"@{j}"
            while True:
                version, target = c.spec.version, c.reindexing
                following = next_of(ids, target.version, tag) if target else None
                try:
                    c.upsert(texts(ids, version, tag), following, version)
                    break
                except VersionChanged:
                    continue
            sources.update({i: source_of(i, tag) for i in ids})
            if j % 3 == 0:
                gone = f"w{j - 3}-0" if j >= 3 else "t399"
                c.delete([gone])
                sources.pop(gone)

    def search() -> None:
        rng = np.random.default_rng(0)
        while not done.is_set():
            id_ = stable[rng.integers(len(stable))]
            version = c.spec.version
            try:
                hits = c.search(embed_all([source_of(id_)], version), 1, version=version)
            except VersionChanged:
                continue
            if hits[0][0].id != id_:
                errors.append((id_, version, hits[0][0].id))

    def reindex() -> None:
        c.begin_reindex("m", 2, 24)
        drive(c, batch=32)

    threads = [threading.Thread(target=f) for f in (write, search, search, reindex)]
    for t in threads:
        t.start()
    threads[0].join()
    threads[3].join()
    done.set()
    for t in threads[1:3]:
        t.join()
    assert not errors
    check_at_v2(c, sources)
    c.close()
