"""Bad input to `lens bulk embed` and `lens index import`: one line on stderr, exit 2, before
any Ray work starts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.bulk.conftest import LENS, bulk, free_port, photo_png

pytestmark = pytest.mark.slow


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lens: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def embed(tiny_repo: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bulk(*args, "--repo", str(tiny_repo), "--out", str(out))


@pytest.fixture()
def one_image(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(photo_png("camera"))
    return folder


def test_model_missing_from_repository(tiny_repo, one_image, tmp_path) -> None:
    refused(embed(tiny_repo, tmp_path / "o", str(one_image), "--model", "huge"), "huge", "tiny")
    refused(embed(tiny_repo, tmp_path / "o", str(one_image), "--model", "tiny:7"), "version 7")


def test_shard_not_a_tar_or_truncated(tiny_repo, tmp_path) -> None:
    import io
    import tarfile

    (tmp_path / "text-0.tar").write_text("plain text, no tar here")
    refused(
        embed(tiny_repo, tmp_path / "o", str(tmp_path / "text-0.tar"), "--model", "tiny"),
        "text-0.tar",
        "not a tar",
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = photo_png("coins")
        info = tarfile.TarInfo("000.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "cut-0.tar").write_bytes(buffer.getvalue()[: 512 + len(data) // 2])
    refused(
        embed(tiny_repo, tmp_path / "o", str(tmp_path / "cut-{0..0}.tar"), "--model", "tiny"),
        "cut-0.tar",
        "truncated",
    )


def test_list_without_the_named_column(tiny_repo, one_image, tmp_path) -> None:
    listing = tmp_path / "list.parquet"
    pq.write_table(pa.table({"file": [str(one_image / "a.png")]}), listing)
    refused(
        embed(tiny_repo, tmp_path / "o", str(listing), "--model", "tiny", "--url-col", "path"),
        "list.parquet",
        "'path'",
        "file",
    )


def test_input_that_does_not_exist(tiny_repo, tmp_path) -> None:
    refused(
        embed(tiny_repo, tmp_path / "o", str(tmp_path / "nowhere"), "--model", "tiny"), "nowhere"
    )


def test_ray_address_that_does_not_answer(tiny_repo, one_image, tmp_path) -> None:
    port = free_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        result = embed(
            tiny_repo, tmp_path / "o", str(one_image), "--model", "tiny", "--address", address
        )
        refused(result, address, "does not answer")


def test_import_of_a_folder_that_is_no_output(tmp_path) -> None:
    result = subprocess.run(
        [str(LENS), "index", "import", "c", str(tmp_path), "--server", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    refused(result, "manifest.json")
