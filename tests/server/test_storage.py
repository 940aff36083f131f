"""Compact collections through the real server: `lens index create --storage`, photos added
and found over HTTP, a SIGKILL and a restart, and the refusals with their status."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.clients.test_cli import lens
from tests.conftest import ServerProcess, encode, photo

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["float16", "binary"])
def test_created_searched_killed_and_restarted(tiny_repo: Path, tmp_path: Path, storage: str):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        Image.fromarray(photo(name)).save(folder / f"{name}.jpg")
    collections = tmp_path / "collections"
    proc = ServerProcess(tiny_repo, collections=collections)
    env = {"LENS_SERVER": proc.address}
    created = lens("index", "create", "album", "--type", "flat", "--storage", storage, env=env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["storage"] == storage
    assert lens("index", "add", "album", str(folder), env=env).returncode == 0

    def top(http: str, name: str) -> str:
        image = base64.b64encode(encode(photo(name), "JPEG", quality=90)).decode()
        response = httpx.post(
            f"{http}/v1/collections/album/search",
            json={"query": {"image": image}, "k": 1},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return Path(response.json()["hits"][0]["id"]).stem

    assert proc.http
    assert [top(proc.http, n) for n in PHOTOS] == list(PHOTOS)
    proc.kill()  # no snapshot: the restart replays the log

    again = ServerProcess(tiny_repo, collections=collections)
    try:
        assert again.http
        described = httpx.get(f"{again.http}/v1/collections/album", timeout=30).json()
        assert described["count"] == len(PHOTOS)
        assert described["index"]["storage"] == described["built_storage"] == storage
        assert [top(again.http, n) for n in PHOTOS] == list(PHOTOS)
    finally:
        again.stop()


def test_refusals_name_the_storage(server: ServerProcess):
    assert server.http
    bad = [
        ({"name": "s1", "index": {"storage": "bfloat16"}}, "storage"),
        ({"name": "s2", "index": {"type": "hnsw", "storage": "binary"}}, "flat index"),
        ({"name": "s3", "dim": 12, "index": {"storage": "binary"}}, "divisible by 8"),
        ({"name": "s4", "index": {"type": "ivf-pq", "storage": "int8"}}, "ivf-pq"),
    ]
    for body, words in bad:
        response = httpx.post(f"{server.http}/v1/collections", json=body, timeout=30)
        assert response.status_code in (400, 422), response.text
        assert words in response.text
    created = lens(
        "index", "create", "s5", "--storage", "binary", "--type", "hnsw",
        env={"LENS_SERVER": server.address},
    )  # fmt: skip
    assert created.returncode == 1 and "INVALID_ARGUMENT" in created.stderr
    assert "binary storage needs a flat index" in created.stderr
