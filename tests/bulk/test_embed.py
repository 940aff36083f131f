"""`lens bulk embed` on a local Ray with 2 CPUs: every vector is the server's `Embed` vector
for the same bytes, ids and metadata are kept, failed inputs are listed, a killed run resumes
with each input exactly once."""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lens_client import LensClient
from tests.bulk.conftest import LENS, PHOTOS, RAY_ENV, bulk, manifest_of

pytestmark = pytest.mark.slow


def read_output(out: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """{id: row} over the shards, and {id: reason} over the errors; asserts ids are unique."""
    rows: dict[str, dict] = {}
    for part in sorted(out.glob("part-*.parquet")):
        table = pq.read_table(part)
        assert table.schema.metadata[b"lens.model"] == b"tiny"
        assert table.schema.metadata[b"lens.version"] == b"1"
        for row in table.to_pylist():
            assert row["id"] not in rows, f"{row['id']} written twice"
            rows[row["id"]] = row
    errors = {}
    for part in sorted((out / "errors").glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            assert row["id"] not in errors and row["id"] not in rows
            errors[row["id"]] = row["reason"]
    return rows, errors


def assert_server_vectors(server, rows: dict[str, dict], images: dict[str, bytes]) -> None:
    ids = sorted(images)
    with LensClient(server.address) as client:
        expected = client.embed_images([images[i] for i in ids], model="tiny:1")
    got = np.stack([np.asarray(rows[i]["embedding"], np.float32) for i in ids])
    cosine = (
        (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.99999, dict(zip(ids, cosine, strict=True))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, bytes]) -> Path:
    root = tmp_path_factory.mktemp("photos")
    (root / "nested" / "deeper").mkdir(parents=True)
    for i, (name, data) in enumerate(photos.items()):
        where = root if i % 2 else root / "nested" / ("deeper" if i % 3 else "")
        (where / f"{name}.png").write_bytes(data)
    (root / "nested" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an input: no image suffix")
    return root


def test_folder_matches_server(folder, tiny_repo, server, ray_address, tmp_path) -> None:
    out = tmp_path / "out"
    manifest = manifest_of(
        bulk(
            str(folder),
            "--model",
            "tiny",
            "--repo",
            str(tiny_repo),
            "--out",
            str(out),
            "--address",
            ray_address,
            "--shard-size",
            "3",
            "--batch-size",
            "4",
        )
    )
    rows, errors = read_output(out)
    images = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.png")}
    assert set(rows) == set(images) and len(images) == len(PHOTOS)
    assert_server_vectors(server, rows, images)
    assert set(errors) == {"nested/broken.jpg"}
    assert "decoded" in errors["nested/broken.jpg"] or "JPEG" in errors["nested/broken.jpg"]
    assert manifest["embedded"] == len(PHOTOS) and manifest["errors"] == 1
    assert manifest["model"] == "tiny" and manifest["version"] == 1 and manifest["dim"] == 32
    assert len(manifest["shards"]) == 3  # 9 inputs in shards of 3


def test_csv_keeps_metadata_and_lists_errors(folder, tiny_repo, server, ray_address, tmp_path):
    listing = tmp_path / "list.csv"
    paths = sorted(folder.rglob("*.png"))
    with open(listing, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption", "album", "stars"])
        for i, p in enumerate(paths):
            writer.writerow(
                [
                    str(p),
                    f"photo {p.stem}",
                    f"album-{i % 2}",
                    i,
                ]
            )
        writer.writerow([str(folder / "missing.png"), "gone", "album-0", 99])
        writer.writerow([str(folder / "notes.txt"), "text file", "album-1", 98])
    out = tmp_path / "out"
    manifest = manifest_of(
        bulk(
            str(listing),
            "--url-col",
            "path",
            "--caption-col",
            "caption",
            "--model",
            "tiny:1",
            "--repo",
            str(tiny_repo),
            "--out",
            str(out),
            "--address",
            ray_address,
        )
    )
    rows, errors = read_output(out)
    assert set(rows) == {str(p) for p in paths}
    for i, p in enumerate(paths):
        row = rows[str(p)]
        assert (row["caption"], row["album"], row["stars"]) == (
            f"photo {p.stem}",
            f"album-{i % 2}",
            i,
        )
    assert_server_vectors(server, rows, {str(p): p.read_bytes() for p in paths})
    assert set(errors) == {str(folder / "missing.png"), str(folder / "notes.txt")}
    assert "No such file" in errors[str(folder / "missing.png")]
    assert "decoded" in errors[str(folder / "notes.txt")]
    assert manifest["errors"] == 2


def make_shard(path: Path, samples: dict[str, tuple[bytes, str]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, (image, caption) in samples.items():
            for name, data in ((f"{key}.png", image), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(photos, tiny_repo, server, ray_address, tmp_path) -> None:
    names = list(photos)
    shards = {0: names[:4], 1: names[4:]}
    for n, part in shards.items():
        make_shard(
            tmp_path / f"shard-{n:04d}.tar",
            {
                f"{n:04d}{i:04d}": (photos[name], f"a photo of {name}")
                for i, name in enumerate(part)
            },
        )
    out = tmp_path / "out"
    manifest_of(
        bulk(
            str(tmp_path / "shard-{0000..0001}.tar"),
            "--model",
            "tiny",
            "--repo",
            str(tiny_repo),
            "--out",
            str(out),
            "--address",
            ray_address,
        )
    )
    rows, errors = read_output(out)
    keys = {f"{n:04d}{i:04d}": name for n, part in shards.items() for i, name in enumerate(part)}
    assert set(rows) == set(keys) and not errors
    assert all(rows[k]["caption"] == f"a photo of {name}" for k, name in keys.items())
    assert_server_vectors(server, rows, {k: photos[name] for k, name in keys.items()})


def test_killed_run_resumes_each_input_once(photos, tiny_repo, ray_address, tmp_path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(48):
        name = PHOTOS[i % len(PHOTOS)]
        (root / f"{i:03d}-{name}.png").write_bytes(photos[name])
    out = tmp_path / "out"
    args = [
        str(root),
        "--model",
        "tiny",
        "--repo",
        str(tiny_repo),
        "--out",
        str(out),
        "--address",
        ray_address,
        "--shard-size",
        "4",
        "--batch-size",
        "2",
        "--quiet",
    ]
    first = subprocess.Popen(
        [str(LENS), "bulk", "embed", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=RAY_ENV,
    )
    deadline = time.monotonic() + 240
    while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
        assert first.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert kept and len(kept) < 12 and not (out / "manifest.json").exists()

    refused = bulk(*args)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    manifest = manifest_of(bulk(*args, "--resume"))
    rows, errors = read_output(out)
    assert sorted(rows) == sorted(p.name for p in root.iterdir()) and not errors
    assert manifest["embedded"] == 48 and len(manifest["shards"]) == 12
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # complete shards skipped
    assert not list(out.glob(".*.tmp"))
