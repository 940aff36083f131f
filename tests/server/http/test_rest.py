"""lens's own REST routes (`/v1/classify`, `/v1/classifiers`, `/v1/collections`) over a real
server through httpx, against what gRPC answers for the same requests."""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from lens.v1 import classifiers_pb2, index_pb2, index_pb2_grpc, inference_pb2

from tests.conftest import ServerProcess, encode, photo
from tests.server.test_classify import classify as grpc_classify

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")
LABELS = ["cat", "astronaut", "cup of coffee", "rocket", "coins"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ok(response: httpx.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def error(response: httpx.Response, status: int) -> str:
    """The message of an error answer, after checking its status and its body's shape."""
    assert response.status_code == status, response.text
    detail = response.json()["error"]
    assert detail["code"] == status and detail["type"]
    return detail["message"]


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    assert server.http, "the server printed no HTTP address"
    with httpx.Client(base_url=server.http, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {n: encode(photo(n), "JPEG", quality=90) for n in PHOTOS}


def photos_collection(api: httpx.Client, name: str, images: dict[str, bytes]) -> dict:
    info = ok(api.post("/v1/collections", json={"name": name, "model": "tiny"}), 201)
    items = [
        {"id": n, "image": b64(data), "metadata": {"gray": photo(n).ndim == 2, "n": i}}
        for i, (n, data) in enumerate(images.items())
    ]
    items.append({"id": "caption", "text": "a cat on a sofa"})
    written = ok(api.post(f"/v1/collections/{name}/items", json={"items": items}))
    assert written["upserted"] == len(items) and written["seq"] >= 1
    return info


def search(api: httpx.Client, name: str, query: dict, **options) -> list[str]:
    found = ok(api.post(f"/v1/collections/{name}/search", json={"query": query, **options}))
    assert (found["model"], found["version"]) == ("tiny", 1)
    return [h["id"] for h in found["hits"]]


def grpc_search(channel: grpc.Channel, name: str, k: int, filter_json: str, **query):
    return (
        index_pb2_grpc.IndexStub(channel)
        .Search(
            index_pb2.SearchRequest(
                collection=name, query=index_pb2.Query(**query), k=k, filter_json=filter_json
            ),
            timeout=30,
        )
        .hits
    )


def test_collection_round_trip_by_text_image_vector_and_id(api, channel, images):
    info = photos_collection(api, "rest-photos", images)
    assert (info["name"], info["model"], info["version"], info["dim"]) == (
        "rest-photos",
        "tiny",
        1,
        32,
    )
    assert info["metric"] == "cosine" and info["index"]["type"] == "auto"
    assert info["reindex"] is None
    described = ok(api.get("/v1/collections/rest-photos"))
    assert (described["count"], described["built_type"]) == (len(PHOTOS) + 1, "flat")
    listed = ok(api.get("/v1/collections"))["collections"]
    assert "rest-photos" in [c["name"] for c in listed]

    uri = "data:image/jpeg;base64,"
    for n, data in images.items():
        assert search(api, "rest-photos", {"image": b64(data)}, k=1) == [n]
        assert search(api, "rest-photos", {"image": uri + b64(data)}, k=1) == [n]
        assert search(api, "rest-photos", {"id": n}, k=1) == [n]
    assert search(api, "rest-photos", {"text": "a cat on a sofa"})[0] == "caption"

    # the same hits and scores as gRPC's, the metadata an object again
    found = ok(
        api.post(
            "/v1/collections/rest-photos/search",
            json={"query": {"text": "a coin"}, "k": 10, "filter": {"gray": True}},
        )
    )
    want = grpc_search(channel, "rest-photos", 10, '{"gray": true}', text="a coin")
    assert [h["id"] for h in found["hits"]] == [h.id for h in want]
    assert {h["id"] for h in found["hits"]} == {"camera", "coins"}
    np.testing.assert_allclose([h["score"] for h in found["hits"]], [h.score for h in want])
    assert [h["metadata"] for h in found["hits"]] == [json.loads(h.metadata_json) for h in want]
    in_list = {"query": {"text": "x"}, "k": 10, "filter": {"n": {"in": [0, 2]}}}
    hits = ok(api.post("/v1/collections/rest-photos/search", json=in_list))["hits"]
    assert {h["id"] for h in hits} == {"astronaut", "coffee"}

    got = ok(
        api.post(
            "/v1/collections/rest-photos/get",
            json={"ids": ["chelsea", "nope", "caption"], "include_vectors": True},
        )
    )["items"]
    assert [(i["id"], i["source"]) for i in got] == [("chelsea", "image"), ("caption", "text")]
    assert got[0]["metadata"] == {"gray": False, "n": 1} and got[1]["metadata"] == {}
    vector = got[0]["vector"]
    assert len(vector) == 32
    assert search(api, "rest-photos", {"vector": vector}, k=1) == ["chelsea"]
    packed = ok(
        api.post(
            "/v1/collections/rest-photos/get",
            json={"ids": ["chelsea"], "include_vectors": True, "encoding_format": "base64"},
        )
    )["items"][0]["vector"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(packed), "<f4"), vector)
    bare = ok(api.post("/v1/collections/rest-photos/get", json={"ids": ["chelsea"]}))
    assert bare["items"][0]["vector"] is None

    batch = ok(
        api.post(
            "/v1/collections/rest-photos/search/batch",
            json={"queries": [{"image": b64(images["rocket"])}, {"id": "camera"}], "k": 1},
        )
    )
    assert [r["hits"][0]["id"] for r in batch["results"]] == ["rocket", "camera"]
    assert (batch["model"], batch["version"]) == ("tiny", 1)

    deleted = api.post("/v1/collections/rest-photos/delete", json={"ids": ["chelsea", "absent"]})
    assert ok(deleted) == {"deleted": 1}
    assert "chelsea" not in search(api, "rest-photos", {"image": b64(images["chelsea"])}, k=10)

    assert ok(api.delete("/v1/collections/rest-photos")) == {"name": "rest-photos", "dropped": True}
    message = error(api.get("/v1/collections/rest-photos"), 404)
    assert "rest-photos" in message and "not found" in message


def test_multipart_search_with_an_uploaded_image(api, images):
    photos_collection(api, "rest-upload", images)
    form = {"k": "3", "filter": '{"gray": false}', "exact": "true"}
    found = ok(
        api.post(
            "/v1/collections/rest-upload/search",
            files={"image": ("coffee.jpg", images["coffee"], "image/jpeg")},
            data=form,
        )
    )
    assert found["hits"][0]["id"] == "coffee" and len(found["hits"]) == 3
    assert not any(h["metadata"].get("gray") for h in found["hits"])
    as_json = ok(
        api.post(
            "/v1/collections/rest-upload/search",
            json={"query": {"image": b64(images["coffee"])}, "k": 3, "filter": {"gray": False}},
        )
    )
    assert [h["id"] for h in found["hits"]] == [h["id"] for h in as_json["hits"]]
    two = api.post(
        "/v1/collections/rest-upload/search",
        files=[("image", ("a.jpg", images["coffee"])), ("image", ("b.jpg", images["rocket"]))],
    )
    assert "one query" in error(two, 400)


def test_vector_collection_with_an_index_spec(api, channel):
    spec = {"type": "hnsw", "hnsw_m": 8, "hnsw_ef_search": 32}
    created = api.post(
        "/v1/collections", json={"name": "rest-vectors", "dim": 4, "metric": "l2", "index": spec}
    )
    info = ok(created, 201)
    assert (info["model"], info["version"], info["metric"], info["built_type"]) == (
        "",
        0,
        "l2",
        "hnsw",
    )
    assert (info["index"]["hnsw_m"], info["index"]["hnsw_ef_search"]) == (8, 32)
    assert info["index"]["hnsw_ef_construction"] == 40  # the default, filled in
    described = index_pb2_grpc.IndexStub(channel).DescribeCollection(
        index_pb2.CollectionRequest(name="rest-vectors"), timeout=10
    )
    assert described.index.hnsw_m == 8 and described.metric == index_pb2.METRIC_L2
    again = api.post("/v1/collections", json={"name": "rest-vectors", "dim": 4})
    assert "already exists" in error(again, 409)

    items = [{"id": str(i), "vector": v} for i, v in enumerate(np.eye(4).tolist())]
    ok(api.post("/v1/collections/rest-vectors/items", json={"items": items}))
    assert search_ids(api, "rest-vectors", {"vector": [0, 0.9, 0.1, 0]}) == ["1", "2"]
    both = [items[0], {"id": "x", "text": "t", "vector": [1, 0, 0, 0]}]
    message = error(api.post("/v1/collections/rest-vectors/items", json={"items": both}), 400)
    assert message.startswith("items[1]: give exactly one of") and "text and vector" in message
    short = [{"id": "x", "vector": [1, 0]}]
    message = error(api.post("/v1/collections/rest-vectors/items", json={"items": short}), 400)
    assert "item 0: vector has 2 values" in message
    text = [{"id": "x", "text": "no model here"}]
    message = error(api.post("/v1/collections/rest-vectors/items", json={"items": text}), 400)
    assert "vectors only" in message
    search_at = "/v1/collections/rest-vectors/search"
    assert "query is missing" in error(api.post(search_at, json={"k": 1}), 400)
    two = {"query": {"id": "1", "vector": [1, 0, 0, 0]}}
    assert error(api.post(search_at, json=two), 400).startswith("query: give exactly one of")
    batch = {"queries": [{"id": "1"}, {}]}
    message = error(api.post(search_at + "/batch", json=batch), 400)
    assert message.startswith("queries[1]: give exactly one of") and "(has none)" in message
    zero = {"query": {"id": "1"}, "k": 0}
    assert "k must be in" in error(api.post(search_at, json=zero), 400)
    reindexed = api.post("/v1/collections/rest-vectors/reindex", json={})
    assert "vectors only" in error(reindexed, 409)
    assert ok(api.get("/v1/collections/rest-vectors"))["count"] == 4
    ok(api.delete("/v1/collections/rest-vectors"))


def search_ids(api: httpx.Client, name: str, query: dict, k: int = 2) -> list[str]:
    found = ok(api.post(f"/v1/collections/{name}/search", json={"query": query, "k": k}))
    return [h["id"] for h in found["hits"]]


def test_duplicates(api):
    image = photo("astronaut")
    ok(api.post("/v1/collections", json={"name": "rest-dups", "model": "tiny"}), 201)
    items = [
        {"id": "a", "image": b64(encode(image, "PNG"))},
        {"id": "a-copy", "image": b64(encode(image, "PNG"))},
        {"id": "a-jpeg", "image": b64(encode(image, "JPEG", quality=95))},
        {"id": "other", "image": b64(encode(photo("coins"), "PNG"))},
    ]
    ok(api.post("/v1/collections/rest-dups/items", json={"items": items}))
    found = ok(api.post("/v1/collections/rest-dups/duplicates", json={"threshold": 0.995}))
    pairs = {frozenset((p["a"], p["b"])) for p in found["pairs"]}
    assert frozenset(("a", "a-copy")) in pairs and not any("other" in p for p in pairs)
    assert all(p["score"] >= 0.995 for p in found["pairs"])
    assert found["groups"][0][:2] == ["a", "a-copy"]
    capped = api.post(
        "/v1/collections/rest-dups/duplicates", json={"threshold": 0.9, "max_pairs": 1}
    )
    assert len(ok(capped)["pairs"]) == 1


def test_zero_shot_inline_as_json_and_multipart_equals_grpc(api, channel, images):
    names = ["chelsea", "rocket"]
    got = ok(
        api.post(
            "/v1/classify",
            json={
                "images": [b64(images[n]) for n in names],
                "labels": LABELS,
                "templates": ["a photo of a {}."],
                "top_k": 3,
            },
        )
    )
    want = grpc_classify(
        channel,
        [images[n] for n in names],
        top_k=3,
        labels=classifiers_pb2.Labels(labels=LABELS, templates=["a photo of a {}."]),
    )
    assert (got["model"], got["version"], got["classifier"]) == ("tiny", 1, "")
    assert_same_classification(got, want)

    # repeated fields, as curl -F labels=cat -F labels=dog sends them
    form = {"labels": LABELS, "templates": ["a photo of a {}."], "top_k": "3", "model": "tiny:1"}
    uploaded = ok(
        api.post(
            "/v1/classify",
            files=[("image", (f"{n}.jpg", images[n], "image/jpeg")) for n in names],
            data=form,
        )
    )
    assert_same_classification(uploaded, want)

    multi = {"images": [b64(images["chelsea"])], "labels": LABELS, "multi_label": True}
    probabilities = [
        s["probability"] for s in ok(api.post("/v1/classify", json=multi))["results"][0]["labels"]
    ]
    assert len(probabilities) == 5 and abs(sum(probabilities) - 1) > 1e-3
    none = ok(api.post("/v1/classify", json={**multi, "threshold": 1.0}))
    assert none["results"][0]["labels"] == []


def assert_same_classification(got: dict, want: inference_pb2.ClassifyResponse) -> None:
    assert len(got["results"]) == len(want.results)
    for mine, theirs in zip(got["results"], want.results, strict=True):
        assert [s["label"] for s in mine["labels"]] == [s.label for s in theirs.labels]
        np.testing.assert_allclose(
            [(s["probability"], s["similarity"]) for s in mine["labels"]],
            [(s.probability, s.similarity) for s in theirs.labels],
            atol=1e-6,
        )


def test_saved_classifiers_create_get_list_classify_delete(api, channel, images):
    labels = {"labels": LABELS, "template_set": "openai-imagenet"}
    body = {"name": "rest-things", "model": "tiny", "zero_shot": labels}
    info = ok(api.post("/v1/classifiers", json=body), 201)
    assert (info["name"], info["model"], info["kind"], info["labels"]) == (
        "rest-things",
        "tiny",
        "zero-shot",
        LABELS,
    )
    assert (info["versions"], info["templates"], info["shots"]) == ([1], 80, 0)
    assert ok(api.get("/v1/classifiers/rest-things")) == info
    listed = ok(api.get("/v1/classifiers"))["classifiers"]
    assert info in listed
    assert "already exists" in error(api.post("/v1/classifiers", json=body), 409)

    query = [images["coffee"], images["coins"]]
    saved = ok(
        api.post(
            "/v1/classify", json={"images": [b64(i) for i in query], "classifier": "rest-things"}
        )
    )
    assert saved["classifier"] == "rest-things"
    assert_same_classification(saved, grpc_classify(channel, query, saved="rest-things"))
    upload = ok(
        api.post(
            "/v1/classify",
            files={"image": ("coffee.jpg", query[0])},
            data={"classifier": "rest-things"},
        )
    )
    # alone in its batch, so equal to the float noise of another batch size
    mine, theirs = upload["results"][0]["labels"], saved["results"][0]["labels"]
    assert [s["label"] for s in mine] == [s["label"] for s in theirs]
    np.testing.assert_allclose(
        [s["probability"] for s in mine], [s["probability"] for s in theirs], atol=1e-6
    )
    both = {"images": [b64(query[0])], "classifier": "rest-things", "labels": ["a"]}
    assert "not both" in error(api.post("/v1/classify", json=both), 400)

    assert ok(api.delete("/v1/classifiers/rest-things")) == {"name": "rest-things", "deleted": True}
    message = error(api.get("/v1/classifiers/rest-things"), 404)
    assert "classifier 'rest-things' not found" in message
    assert error(api.delete("/v1/classifiers/rest-things"), 404)


def test_few_shot_classifier(api, images):
    shots = {n: [images[n], encode(photo(n), "PNG")] for n in PHOTOS[:4]}
    classes = [{"label": n, "images": [b64(i) for i in imgs]} for n, imgs in shots.items()]
    body = {"name": "rest-few", "few_shot": {"classes": classes}}
    info = ok(api.post("/v1/classifiers", json=body), 201)
    assert (info["kind"], info["shots"], info["labels"]) == ("few-shot", 2, list(shots))
    queries = [b64(encode(photo(n), "JPEG", quality=95)) for n in shots]
    result = ok(
        api.post("/v1/classify", json={"images": queries, "classifier": "rest-few", "top_k": 1})
    )
    assert [r["labels"][0]["label"] for r in result["results"]] == list(shots)
    mixed = {
        "name": "rest-few-mixed",
        "few_shot": {"classes": classes, "text_weight": 0.5, "template_set": "simple"},
    }
    assert ok(api.post("/v1/classifiers", json=mixed), 201)["templates"] == 1
    bad = {"name": "rest-few-bad", "few_shot": {"classes": [{"label": "a", "images": ["%%"]}]}}
    assert "few_shot.classes[0].images[0]: not valid base64" in error(
        api.post("/v1/classifiers", json=bad), 400
    )
    for name in ("rest-few", "rest-few-mixed"):
        ok(api.delete(f"/v1/classifiers/{name}"))


def add_version(repo: Path) -> int:
    """Version 2 of `tiny`: version 1's files under the next number."""
    shutil.copytree(repo / "tiny" / "1", repo / "tiny" / "2")
    manifest = json.loads((repo / "tiny" / "2" / "manifest.json").read_text())
    (repo / "tiny" / "2" / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    return 2


def test_reindex_to_another_version(tiny_repo, tmp_path, images):
    repo = Path(shutil.copytree(tiny_repo, tmp_path / "repo"))
    proc = ServerProcess(repo, collections=tmp_path / "collections")
    try:
        assert proc.http
        with httpx.Client(base_url=proc.http, timeout=60) as api:
            photos_collection(api, "moving", images)
            same = ok(api.post("/v1/collections/moving/reindex"))  # already on the serving one
            assert (same["version"], same["reindex"]) == (1, None)
            assert "version 7" in error(
                api.post("/v1/collections/moving/reindex", json={"version": 7}), 404
            )
            add_version(repo)
            ok(api.post("/v1/repository/reload"))
            ok(api.post("/v1/models/tiny/load", json={"version": 2}))
            started = ok(api.post("/v1/collections/moving/reindex", json={"version": 2}))
            assert started["reindex"] is None or started["reindex"]["version"] == 2
            deadline = time.monotonic() + 60
            while (info := ok(api.get("/v1/collections/moving")))["version"] != 2:
                assert time.monotonic() < deadline, info
                time.sleep(0.1)
            assert info["reindex"] is None and info["count"] == len(PHOTOS) + 1
            found = ok(
                api.post(
                    "/v1/collections/moving/search",
                    json={"query": {"image": b64(images["rocket"])}, "k": 1},
                )
            )
            assert (found["hits"][0]["id"], found["model"], found["version"]) == (
                "rocket",
                "tiny",
                2,
            )
    finally:
        proc.stop()


def test_grpc_sees_what_http_wrote(api, channel, images):
    ok(api.post("/v1/collections", json={"name": "rest-shared", "model": "tiny:1"}), 201)
    items = [{"id": "r", "image": b64(images["rocket"]), "metadata": {"tag": "space"}}]
    ok(api.post("/v1/collections/rest-shared/items", json={"items": items}))
    got = index_pb2_grpc.IndexStub(channel).Get(
        index_pb2.GetRequest(collection="rest-shared", ids=["r"]), timeout=10
    )
    assert json.loads(got.items[0].metadata_json) == {"tag": "space"}
    hits = grpc_search(channel, "rest-shared", 1, "", image=images["rocket"])
    assert hits[0].id == "r"
    index_pb2_grpc.IndexStub(channel).DropCollection(
        index_pb2.CollectionRequest(name="rest-shared"), timeout=10
    )
    assert "not found" in error(api.get("/v1/collections/rest-shared"), 404)


def test_openapi_documents_the_routes_and_their_uploads(api):
    schema = ok(api.get("/openapi.json"))
    paths = schema["paths"]
    for path in (
        "/v1/classify",
        "/v1/classifiers/{name}",
        "/v1/collections/{collection}/items",
        "/v1/collections/{collection}/search/batch",
        "/v1/collections/{collection}/duplicates",
    ):
        assert path in paths, path
    for path in ("/v1/classify", "/v1/collections/{collection}/search"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
