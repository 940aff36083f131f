"""Results into a lens collection: `--to-collection`, and `lens index import` of a written
output (idempotent on ids); `--server` embeds through a running server instead."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lens_client import LensClient
from tests.bulk.conftest import LENS, bulk, manifest_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, bytes]) -> Path:
    root = tmp_path_factory.mktemp("coll")
    for name, data in photos.items():
        (root / f"{name}.png").write_bytes(data)
    (root / "bad.png").write_bytes(b"nope")
    return root


def test_to_collection_is_searchable_and_import_idempotent(
    images, photos, tiny_repo, server, ray_address, tmp_path
) -> None:
    out = tmp_path / "out"
    manifest = manifest_of(
        bulk(
            str(images),
            "--model",
            "tiny",
            "--repo",
            str(tiny_repo),
            "--out",
            str(out),
            "--address",
            ray_address,
            "--to-collection",
            "bulk-photos",
            "--server",
            server.address,
        )
    )
    assert manifest["collection"]["imported"] == len(photos)
    with LensClient(server.address) as client:
        info = client.describe_collection("bulk-photos")
        assert info["count"] == len(photos)
        hits = client.search("bulk-photos", image=photos["chelsea"], k=3)
        assert hits[0]["id"] == "chelsea.png" and hits[0]["score"] > 0.9999
        assert hits[0]["metadata"]["source"] == str((images / "chelsea.png").resolve())
    again = subprocess.run(
        [str(LENS), "index", "import", "bulk-photos", str(out), "--server", server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert f"imported {len(photos)}" in again.stderr
    with LensClient(server.address) as client:
        assert client.describe_collection("bulk-photos")["count"] == len(photos)


def test_through_a_server(images, photos, tiny_repo, server, ray_address, tmp_path) -> None:
    out = tmp_path / "out"
    manifest = manifest_of(
        bulk(
            str(images),
            "--model",
            "tiny",
            "--repo",
            str(tiny_repo),
            "--out",
            str(out),
            "--address",
            ray_address,
            "--server",
            server.address,
        )
    )
    assert manifest["embedded"] == len(photos) and manifest["errors"] == 1
    table = pq.read_table(out / "part-00000.parquet").to_pylist()
    got = {r["id"]: np.asarray(r["embedding"]) for r in table}
    with LensClient(server.address) as client:
        for name, data in photos.items():
            expected = client.embed_images([data], model="tiny:1")[0]
            assert float(got[f"{name}.png"] @ expected) >= 0.99999
    errors = pq.read_table(out / "errors" / "part-00000.parquet").to_pylist()
    assert [e["id"] for e in errors] == ["bad.png"] and "INVALID_ARGUMENT" in errors[0]["reason"]
