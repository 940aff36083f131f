"""The asyncio client's collection and classification calls against the real server (one
server for the session, shared with test_client.py; names here start with "aio")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from lens_client import AsyncLensClient, LensClient, LensClientError
from tests.conftest import encode, photo

PHOTOS = ("astronaut", "chelsea", "coffee", "camera")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        (folder / f"{name}.png").write_bytes(encode(photo(name)))
    return [folder / f"{name}.png" for name in PHOTOS]


def test_the_asyncio_client_has_every_call_of_the_sync_one():
    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}

    assert public(AsyncLensClient) == public(LensClient)
    assert {"upsert", "search_batch", "find_duplicates", "classify"} <= public(AsyncLensClient)


def test_asyncio_collections(server, photos):
    ids = [p.stem for p in photos]

    async def main() -> dict:
        seen: dict = {}
        async with AsyncLensClient(server.address) as lens:
            seen["created"] = await lens.create_collection("aio", model="tiny")
            seen["written"] = await lens.upsert(
                "aio", ids, images=photos, batch_size=3, progress=True,
                metadata=[{"i": i} for i in range(len(ids))],
            )  # fmt: skip
            seen["twin"] = await lens.upsert("aio", ["twin"], images=[photos[1].read_bytes()])
            seen["by_image"] = await lens.search("aio", image=photos[2], k=1)
            seen["by_id"] = await lens.search("aio", id=ids[3], k=1, filter={"i": 3})
            seen["by_text"] = await asyncio.gather(
                *(lens.search("aio", text=t, k=2) for t in ("a cat", "a cup", "a man"))
            )
            seen["got"] = await lens.get("aio", [ids[0], "absent"], include_vectors=True)
            seen["batch"] = await lens.search_batch(
                "aio", np.stack([seen["got"][0]["vector"]]), k=1, exact=True
            )
            seen["duplicates"] = await lens.find_duplicates("aio", threshold=0.999)
            seen["reindex"] = await lens.reindex_collection("aio")  # the version it has: no-op
            seen["deleted"] = await lens.delete("aio", ["twin", "absent"])
            seen["described"] = await lens.describe_collection("aio")
            seen["listed"] = [c["name"] for c in await lens.collections()]
            await lens.create_collection("aio-vec", dim=3, metric="l2", index="hnsw", hnsw_m=8)
            await lens.upsert("aio-vec", ["a", "b"], vectors=np.eye(3)[:2])
            seen["vector_hits"] = await lens.search("aio-vec", vector=np.array([1, 0, 0]), k=2)
            with pytest.raises(LensClientError) as wrong_dim:
                await lens.upsert("aio-vec", ["c"], vectors=np.ones((1, 4)))
            assert wrong_dim.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(LensClientError) as no_model:
                await lens.reindex_collection("aio-vec")
            assert no_model.value.code == grpc.StatusCode.FAILED_PRECONDITION
            await lens.drop_collection("aio-vec")
            with pytest.raises(LensClientError) as dropped:
                await lens.describe_collection("aio-vec")
            assert dropped.value.code == grpc.StatusCode.NOT_FOUND
            unawaited = lens.search("aio", k=1)  # argument errors come when awaited
            with pytest.raises(ValueError, match="exactly one"):
                await unawaited
        return seen

    seen = asyncio.run(main())
    assert (seen["created"]["dim"], seen["created"]["metric"]) == (32, "cosine")
    assert (seen["written"], seen["twin"]) == (len(ids), 1)
    assert seen["by_image"][0]["id"] == ids[2]
    assert [(h["id"], h["metadata"]) for h in seen["by_id"]] == [(ids[3], {"i": 3})]
    assert [len(hits) for hits in seen["by_text"]] == [2, 2, 2]
    assert [g["id"] for g in seen["got"]] == [ids[0]] and seen["got"][0]["vector"].shape == (32,)
    assert seen["batch"][0][0]["id"] == ids[0]
    assert sorted(seen["duplicates"]["groups"][0]) == sorted([ids[1], "twin"])
    assert seen["reindex"]["reindex"] is None and seen["deleted"] == 1
    assert seen["described"]["count"] == len(ids) and "aio" in seen["listed"]
    assert [h["id"] for h in seen["vector_hits"]] == ["a", "b"]
    with LensClient(server.address) as lens:  # the same answers as the sync client's
        assert lens.search("aio", image=photos[2], k=1) == seen["by_image"]
        assert lens.describe_collection("aio") == seen["described"]
        lens.drop_collection("aio")


def test_asyncio_classification(server, photos):
    labels = ["cat", "astronaut", "coffee"]
    templates = ["a photo of a {}.", "a {label}"]

    async def main() -> dict:
        seen: dict = {}
        async with AsyncLensClient(server.address) as lens:
            seen["zero_shot"] = await lens.classify(
                photos[:2], labels=labels, top_k=3, templates=templates
            )
            seen["zero"] = await lens.create_classifier(
                "aio-zero", labels=["cat", "dog"], templates="simple"
            )
            seen["few"] = await lens.create_classifier(
                "aio-few", examples={"a": photos[:1], "b": photos[1:2]}, text_weight=0.2
            )
            seen["saved"] = await lens.classify([photos[1]], classifier="aio-few", top_k=1)
            seen["listed"] = {c["name"] for c in await lens.classifiers()}
            seen["got"] = await lens.get_classifier("aio-zero")
            await lens.delete_classifier("aio-zero")
            with pytest.raises(LensClientError) as deleted:
                await lens.get_classifier("aio-zero")
            assert deleted.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(ValueError, match="labels or a classifier"):
                await lens.classify(photos[:1])
        return seen

    seen = asyncio.run(main())
    assert [len(r) for r in seen["zero_shot"]] == [3, 3]
    assert abs(sum(s["probability"] for s in seen["zero_shot"][0]) - 1) < 1e-4
    assert seen["zero"]["kind"] == "zero-shot" and seen["zero"]["versions"] == [1]
    assert seen["few"]["shots"] == 1 and seen["saved"][0][0]["label"] == "b"
    assert {"aio-zero", "aio-few"} <= seen["listed"]
    assert seen["got"]["labels"] == ["cat", "dog"]
    with LensClient(server.address) as lens:  # the same answers as the sync client's
        again = lens.classify(photos[:2], labels=labels, top_k=3, templates=templates)
        for mine, theirs in zip(seen["zero_shot"], again, strict=True):
            assert [s["label"] for s in mine] == [s["label"] for s in theirs]
            assert [s["probability"] for s in mine] == pytest.approx(
                [s["probability"] for s in theirs], abs=1e-5
            )
        lens.delete_classifier("aio-few")
