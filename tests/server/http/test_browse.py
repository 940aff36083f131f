"""The routes the web page looks through: an item's thumbnail from its stored source (resized,
with an ETag and 304s) and a collection's 2-D map, over a real server through httpx; and the
page's own files at `/` and `/web/`."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image

from lens_server.core.browse import projections
from tests.conftest import ServerProcess, encode, photo
from tests.server.http.test_rest import error, ok

PHOTOS = ("astronaut", "chelsea", "coffee", "camera")
NAME = "browsed"
# Ids as files are named: with slashes, and with what a URL must escape.
PATHS = {"holiday/2024/cat.jpg": "chelsea", "odd #1?%&+ name.png": "coffee"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    assert server.http, "the server printed no HTTP address"
    with httpx.Client(base_url=server.http, timeout=60) as client:
        ok(client.post("/v1/collections", json={"name": NAME, "model": "tiny"}), 201)
        transparent = Image.new("RGBA", (300, 200), (255, 0, 0, 128))
        items = [
            {"id": n, "image": b64(encode(photo(n), "JPEG")), "metadata": {"kind": "photo"}}
            for n in PHOTOS
        ]
        items += [
            {"id": "glass", "image": b64(encode(transparent)), "metadata": {"kind": "png"}},
            {"id": "words", "text": "a photo of a cat on a mat", "metadata": {"kind": "text"}},
            {"id": "bare", "vector": [1.0] + [0.0] * 31},
        ]
        items += [{"id": i, "image": b64(encode(photo(n), "JPEG"))} for i, n in PATHS.items()]
        ok(client.post(f"/v1/collections/{NAME}/items", json={"items": items}))
        yield client
        client.delete(f"/v1/collections/{NAME}")


def thumbnail_url(item: str, size: int | str = 256, collection: str = NAME) -> str:
    return f"/v1/collections/{collection}/items/{quote(item, safe='')}/thumbnail?size={size}"


def test_a_photo_thumbnail_is_a_resized_jpeg_with_an_etag(api: httpx.Client):
    answer = api.get(thumbnail_url("astronaut", 64))  # astronaut is 512 x 512
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/jpeg"
    assert answer.headers["cache-control"] == "private, no-cache"
    image = Image.open(io.BytesIO(answer.content))
    assert (image.format, image.size) == ("JPEG", (64, 64))
    coffee = Image.open(io.BytesIO(api.get(thumbnail_url("coffee", 100)).content))
    assert coffee.size == (100, 67)  # 600 x 400: the longer side fits, the ratio kept
    assert np.asarray(image).std() > 10  # the photo, not a blank


def test_a_current_etag_is_answered_304_and_another_size_is_another_tag(api: httpx.Client):
    first = api.get(thumbnail_url("chelsea", 128))
    tag = first.headers["etag"]
    again = api.get(thumbnail_url("chelsea", 128), headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == tag
    listed = api.get(thumbnail_url("chelsea", 128), headers={"If-None-Match": f'"x", W/{tag}'})
    assert listed.status_code == 304
    other = api.get(thumbnail_url("chelsea", 64), headers={"If-None-Match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag


def test_a_thumbnail_changes_when_the_item_is_written_again(api: httpx.Client):
    before = api.get(thumbnail_url("camera", 32)).headers["etag"]
    item = {"id": "camera", "image": b64(encode(photo("moon"), "PNG"))}
    ok(api.post(f"/v1/collections/{NAME}/items", json={"items": [item]}))
    after = api.get(thumbnail_url("camera", 32), headers={"If-None-Match": before})
    assert after.status_code == 200 and after.headers["etag"] != before


def test_transparency_and_texts_are_png(api: httpx.Client):
    glass = api.get(thumbnail_url("glass", 150))
    assert glass.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(glass.content)).size == (150, 100)
    words = api.get(thumbnail_url("words", 200))
    assert words.headers["content-type"] == "image/png"
    card = np.asarray(Image.open(io.BytesIO(words.content)).convert("L"))
    assert card.shape == (200, 200) and card.min() < 100  # the text is drawn on it


def test_ids_with_slashes_and_escaped_characters_have_thumbnails(api: httpx.Client):
    """An id is one path segment escaped (as the page sends it, `%2F` for `/`), or its
    slashes as they are: the route takes the rest of the path up to `/thumbnail`."""
    sizes = {"chelsea": (100, 67), "coffee": (100, 67)}  # both 3:2
    for item, name in PATHS.items():
        answer = api.get(thumbnail_url(item, 100))
        assert answer.status_code == 200, (item, answer.text)
        assert Image.open(io.BytesIO(answer.content)).size == sizes[name]
        again = api.get(thumbnail_url(item, 100), headers={"If-None-Match": answer.headers["etag"]})
        assert again.status_code == 304
    chelsea = api.get(thumbnail_url("chelsea", 100)).content
    by_segment = api.get(thumbnail_url("holiday/2024/cat.jpg", 100)).content
    as_path = api.get(f"/v1/collections/{NAME}/items/holiday/2024/cat.jpg/thumbnail?size=100")
    assert as_path.status_code == 200 and as_path.content == by_segment == chelsea
    missing = api.get(thumbnail_url("holiday/2024/dog.jpg"))
    assert "item 'holiday/2024/dog.jpg' is not in collection" in error(missing, 404)


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        (thumbnail_url("astronaut", 0), 400, "size must be in 16..1024 pixels, got 0"),
        (thumbnail_url("astronaut", 5000), 400, "size must be in 16..1024 pixels, got 5000"),
        (thumbnail_url("astronaut", "big"), 400, "size"),
        (thumbnail_url("nobody"), 404, f"item 'nobody' is not in collection {NAME}"),
        (thumbnail_url("astronaut", collection="nope"), 404, "collection 'nope' not found"),
        (thumbnail_url("bare"), 409, "was written as a vector"),
        ("/v1/collections/nope/map", 404, "collection 'nope' not found"),
        (f"/v1/collections/{NAME}/map?method=tsne", 400, "method must be one of pca, umap"),
        ("/web/nothing.js", 404, "the page has no file 'nothing.js'"),
        ("/web/..%2Fapp.py", 404, "Not Found"),
    ],
)
def test_refusals(api: httpx.Client, url: str, status: int, message: str):
    assert message in error(api.get(url), status)


def test_the_map_projects_every_item_and_is_cached_until_a_write(api: httpx.Client):
    made = ok(api.get(f"/v1/collections/{NAME}/map"))
    assert made["total"] == len(PHOTOS) + 3 + len(PATHS) and not made["sampled"]
    assert made["method"] == "pca" and made["methods"] == list(projections())
    ids = {p["id"] for p in made["points"]}
    assert ids == {*PHOTOS, "glass", "words", "bare", *PATHS}
    xy = np.array([[p["x"], p["y"]] for p in made["points"]])
    assert np.abs(xy).max() == pytest.approx(1.0, abs=1e-6) and xy.std(axis=0).min() > 0
    assert 0 < made["explained"][1] <= made["explained"][0] <= 1
    kinds = {p["metadata"].get("kind") for p in made["points"]}
    assert kinds == {"photo", "png", "text", None}
    assert ok(api.get(f"/v1/collections/{NAME}/map")) == made  # same seq: the cached map
    ok(api.post(f"/v1/collections/{NAME}/items", json={"items": [{"id": "more", "text": "a dog"}]}))
    again = ok(api.get(f"/v1/collections/{NAME}/map"))
    assert again["seq"] > made["seq"] and again["total"] == made["total"] + 1
    ok(api.post(f"/v1/collections/{NAME}/delete", json={"ids": ["more"]}))


def test_the_page_and_its_files(api: httpx.Client):
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/web/app.js">' in page.text
    script = api.get("/web/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["cache-control"] == "no-cache"
    for name in ("search", "classify", "models", "duplicates", "map", "status"):
        assert api.get(f"/web/{name}.js").status_code == 200, name


def test_a_collection_made_again_under_its_name_gets_its_own_map(api: httpx.Client):
    """Same name, same model version, same write count: the same seq, yet another map."""
    for ids in (["a", "b"], ["c", "d"]):
        api.delete("/v1/collections/remade")
        ok(api.post("/v1/collections", json={"name": "remade", "model": "tiny"}), 201)
        items = [{"id": i, "text": f"the letter {i}"} for i in ids]
        ok(api.post("/v1/collections/remade/items", json={"items": items}))
        made = ok(api.get("/v1/collections/remade/map"))
        assert sorted(p["id"] for p in made["points"]) == ids
    api.delete("/v1/collections/remade")


def clusters(api: httpx.Client, name: str, per: int = 30) -> np.ndarray:
    """Collection `name` of bare 32-d vectors in two tight clusters around orthogonal
    directions, ids a0.. and b0..; returns the vectors (2 * per, 32)."""
    rng = np.random.default_rng(7)
    centres = np.eye(32)[[0, 1]] * 4
    vectors = np.concatenate([c + rng.normal(size=(per, 32)) * 0.3 for c in centres])
    api.delete(f"/v1/collections/{name}")
    ok(api.post("/v1/collections", json={"name": name, "dim": 32}), 201)
    ids = [f"{'ab'[i // per]}{i % per}" for i in range(2 * per)]
    items = [{"id": i, "vector": v.tolist()} for i, v in zip(ids, vectors, strict=True)]
    ok(api.post(f"/v1/collections/{name}/items", json={"items": items}))
    return vectors


@pytest.mark.skipif("umap" in projections(), reason="umap-learn is installed here")
def test_a_umap_map_without_umap_learn_says_what_to_install(api: httpx.Client):
    message = error(api.get(f"/v1/collections/{NAME}/map?method=umap"), 409)
    assert "needs umap-learn" in message and "pip install 'lens[umap]'" in message


@pytest.mark.slow
@pytest.mark.skipif(
    "umap" not in projections(), reason="umap-learn is not installed: pip install -e '.[umap]'"
)
def test_a_umap_map_keeps_clusters_apart_and_is_cached(api: httpx.Client):
    """Two clusters of vectors are two groups of points on the UMAP map: each point's
    nearest point on the map is of its own cluster, and the groups are far apart for their
    size. The same collection state gives the cached map; a write makes a new one."""
    clusters(api, "clustered")
    try:
        made = ok(api.get("/v1/collections/clustered/map?method=umap", timeout=300))
        assert made["method"] == "umap" and made["explained"] == []
        assert "umap" in made["methods"] and made["total"] == 60
        xy = np.array([[p["x"], p["y"]] for p in made["points"]])  # (60, 2)
        assert np.abs(xy).max() == pytest.approx(1.0, abs=1e-6)
        group = np.array([p["id"][0] == "a" for p in made["points"]])
        distances = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 9
        assert (group[distances.argmin(axis=1)] == group).all()
        a, b = xy[group], xy[~group]
        spread = max(a.std(axis=0).max(), b.std(axis=0).max())
        assert np.linalg.norm(a.mean(axis=0) - b.mean(axis=0)) > 4 * spread
        assert ok(api.get("/v1/collections/clustered/map?method=umap")) == made
        pca = ok(api.get("/v1/collections/clustered/map"))  # cached apart from UMAP's
        assert pca["method"] == "pca" and len(pca["explained"]) == 2
        more = {"id": "a-more", "vector": [4.0] + [0.0] * 31}
        ok(api.post("/v1/collections/clustered/items", json={"items": [more]}))
        again = ok(api.get("/v1/collections/clustered/map?method=umap", timeout=300))
        assert again["seq"] > made["seq"] and again["total"] == 61
    finally:
        api.delete("/v1/collections/clustered")


@pytest.mark.skipif("umap" not in projections(), reason="umap-learn is not installed")
def test_a_umap_map_of_too_few_items_is_refused(api: httpx.Client):
    api.delete("/v1/collections/pair")
    ok(api.post("/v1/collections", json={"name": "pair", "dim": 2}), 201)
    items = [{"id": "x", "vector": [1.0, 0.0]}, {"id": "y", "vector": [0.0, 1.0]}]
    ok(api.post("/v1/collections/pair/items", json={"items": items}))
    try:
        message = error(api.get("/v1/collections/pair/map?method=umap"), 409)
        assert message == "a UMAP map needs at least 3 items, the collection has 2"
    finally:
        api.delete("/v1/collections/pair")
