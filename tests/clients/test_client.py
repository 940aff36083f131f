"""The Python clients (sync and asyncio) against the real server."""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc
import numpy as np
import pytest
from lens.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from PIL import Image

from lens_client import AsyncLensClient, LensClient, LensClientError, codec, parse_model
from tests.conftest import photo


@pytest.fixture()
def files(tmp_path):
    paths = []
    for name in ("astronaut", "chelsea", "coffee", "camera", "logo"):
        path = tmp_path / f"{name}.jpg" if name != "logo" else tmp_path / f"{name}.png"
        Image.fromarray(photo(name)).save(path)
        paths.append(path)
    return paths


def test_images_as_paths_bytes_and_pil_give_the_same_vectors(server, files):
    with LensClient(server.address) as lens:
        from_paths = lens.embed_images(files)
        from_bytes = lens.embed_images([p.read_bytes() for p in files])
        from_strings = lens.embed_images([str(p) for p in files])
        png = lens.embed_images([Image.open(files[-1])])
    assert from_paths.shape == (5, 32) and from_paths.dtype == np.float32
    np.testing.assert_array_equal(from_paths, from_bytes)
    np.testing.assert_array_equal(from_paths, from_strings)
    np.testing.assert_allclose(png[0], from_paths[-1], atol=1e-6)  # PNG stays lossless


def test_big_jobs_are_split_and_streamed_in_order(server):
    texts = [f"caption {i}" for i in range(23)]
    with LensClient(server.address) as lens:
        one_call = lens.embed_texts(texts, batch_size=64)
        streamed = lens.embed_texts(texts, batch_size=4, progress=True)
        result = lens.embed([inference_pb2.Input(text=t) for t in texts[:3]], model="tiny:1")
    np.testing.assert_allclose(streamed, one_call, atol=1e-6)
    assert (result.model, result.version) == ("tiny", 1)


def test_errors_carry_the_status(server):
    with LensClient(server.address) as lens:
        with pytest.raises(LensClientError) as info:
            lens.embed_texts(["x"], model="absent")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(LensClientError) as info:
            lens.embed_images([b"junk"])
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 0" in info.value.message
        assert lens.models()[0]["name"] == "tiny"
        assert lens.get_model("tiny")["versions"][0]["state"] == "serving"
        assert lens.healthy()


def test_asyncio_client(server, files):
    async def main():
        async with AsyncLensClient(server.address) as lens:
            images = await lens.embed_images(files[:2])
            texts = await lens.embed_texts([f"t{i}" for i in range(9)], batch_size=2)
            models = await lens.models()
            healthy = await lens.healthy()
            with pytest.raises(LensClientError):
                await lens.get_model("absent")
        return images, texts, models, healthy

    images, texts, models, healthy = asyncio.run(main())
    with LensClient(server.address) as lens:
        np.testing.assert_allclose(images, lens.embed_images(files[:2]), atol=1e-6)
        np.testing.assert_allclose(texts, lens.embed_texts([f"t{i}" for i in range(9)]), atol=1e-6)
    assert models[0]["dim"] == 32 and healthy


class Flaky(inference_pb2_grpc.InferenceServicer):
    """Answers UNAVAILABLE `failures` times, then a 1×2 embedding."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def Embed(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        vector = np.array([[0.6, 0.8]], "<f4")
        return inference_pb2.EmbedResponse(
            model="flaky",
            version=3,
            embeddings=common_pb2.Matrix(rows=1, cols=2, data=vector.tobytes()),
        )


@pytest.mark.parametrize(("failures", "retries", "succeeds"), [(2, 4, True), (3, 0, False)])
def test_unavailable_is_retried_with_backoff(failures, retries, succeeds):
    servicer = Flaky(failures)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with LensClient(f"127.0.0.1:{port}", retries=retries) as lens:
            if succeeds:
                np.testing.assert_allclose(lens.embed_texts(["x"]), [[0.6, 0.8]])
                assert servicer.calls == failures + 1
            else:
                with pytest.raises(LensClientError) as info:
                    lens.embed_texts(["x"])
                assert info.value.code == grpc.StatusCode.UNAVAILABLE
                assert servicer.calls == 1
    finally:
        server.stop(None)


def test_parse_model():
    assert parse_model("clip:3") == common_pb2.ModelRef(name="clip", version=3)
    assert parse_model("clip") == common_pb2.ModelRef(name="clip")
    assert parse_model(None) == common_pb2.ModelRef()
    with pytest.raises(ValueError, match="must be a number"):
        parse_model("clip:latest")


def test_images_of_unknown_types_are_refused():
    with pytest.raises(TypeError, match="not an image"):
        list(codec.image_inputs([42]))  # type: ignore[list-item]


def test_collections_from_python(server, files):
    with LensClient(server.address) as lens:
        info = lens.create_collection("py", model="tiny")
        assert info["dim"] == 32 and info["metric"] == "cosine"
        ids = [p.stem for p in files]
        written = lens.upsert(
            "py",
            ids,
            images=files,
            batch_size=2,
            progress=True,
            metadata=[{"i": i} for i in range(len(ids))],
        )
        assert written == len(ids)
        assert lens.search("py", image=files[1], k=1)[0]["id"] == ids[1]
        assert lens.search("py", id=ids[2], k=1, filter={"i": 2})[0]["metadata"] == {"i": 2}
        got = lens.get("py", [ids[0]], include_vectors=True)
        assert got[0]["vector"].shape == (32,)
        batch = lens.search_batch("py", np.stack([g["vector"] for g in got]), k=1)
        assert batch[0][0]["id"] == ids[0]
        assert lens.delete("py", [ids[0]]) == 1
        assert lens.describe_collection("py")["count"] == len(ids) - 1
        assert "py" in [c["name"] for c in lens.collections()]
        vectors = lens.create_collection("vec", dim=3, metric="l2", index="hnsw", hnsw_m=8)
        assert vectors["model"] == "" and vectors["built"] == "hnsw"
        lens.upsert("vec", ["a", "b"], vectors=np.eye(3)[:2])
        assert [h["id"] for h in lens.search("vec", vector=[1, 0, 0], k=2)] == ["a", "b"]
        with pytest.raises(LensClientError) as info:
            lens.upsert("vec", ["c"], vectors=np.ones((1, 4)))
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        lens.drop_collection("vec")
        with pytest.raises(ValueError, match="exactly one"):
            lens.search("py", k=1)


def test_classification_from_python(server, files):
    with LensClient(server.address) as lens:
        results = lens.classify(
            files[:2],
            labels=["cat", "astronaut", "coffee"],
            top_k=3,
            templates=["a photo of a {}.", "a {label}"],
        )
        assert len(results) == 2 and len(results[0]) == 3
        assert abs(sum(r["probability"] for r in results[0]) - 1) < 1e-4
        info = lens.create_classifier("py-zero", labels=["cat", "dog"], templates="simple")
        assert info["kind"] == "zero-shot" and info["versions"] == [1]
        few = lens.create_classifier(
            "py-few", examples={"a": files[:1], "b": files[1:2]}, text_weight=0.2
        )
        assert few["shots"] == 1
        assert lens.classify([files[1]], classifier="py-few", top_k=1)[0][0]["label"] == "b"
        assert {"py-zero", "py-few"} <= {c["name"] for c in lens.classifiers()}
        assert lens.get_classifier("py-zero")["labels"] == ["cat", "dog"]
        lens.delete_classifier("py-zero")
        with pytest.raises(LensClientError) as info_:
            lens.get_classifier("py-zero")
        assert info_.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ValueError, match="labels or a classifier"):
            lens.classify(files[:1])
