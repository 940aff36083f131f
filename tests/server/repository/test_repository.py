"""The repository format: manifests, sha256 checks, atomic versions, clear lookups."""

from __future__ import annotations

import json
import shutil

import pytest

from lens_server.errors import FailedPrecondition, InvalidInput, NotFound
from lens_server.repository import ImageSpec, Manifest, Repository
from lens_server.repository.manifest import load, verify_files


def manifest(name: str = "m") -> Manifest:
    return Manifest(
        name=name,
        version=0,
        kind="simclr",
        dim=8,
        image=ImageSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
    )


def add_version(repo: Repository, name: str = "m", payload: bytes = b"onnx") -> int:
    with repo.stage(name) as staged:
        (staged / "image.onnx").write_bytes(payload)
        version, _ = repo.commit(staged, manifest(name))
    return version


def test_versions_are_numbered_and_self_describing(tmp_path):
    repo = Repository(tmp_path)
    assert [add_version(repo), add_version(repo)] == [1, 2]
    assert repo.versions("m") == [1, 2] and repo.latest("m") == 2
    loaded = repo.manifest("m", 2)
    assert (loaded.version, loaded.dim, loaded.modalities) == (2, 8, ("image",))
    assert loaded.files.keys() == {"image.onnx"} and loaded.created
    verify_files(repo.path("m", 2), loaded)
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def test_manifest_round_trips_through_json(tmp_path):
    original = manifest()
    original.save(tmp_path)
    assert load(tmp_path) == original
    assert json.loads((tmp_path / "manifest.json").read_text())["image"]["size"] == 16


def test_failed_build_leaves_nothing(tmp_path):
    repo = Repository(tmp_path)
    with pytest.raises(RuntimeError), repo.stage("m") as staged:
        (staged / "image.onnx").write_bytes(b"half")
        raise RuntimeError("export failed")
    assert repo.models() == [] and list((tmp_path / "m").iterdir()) == []


def test_changed_file_is_detected(tmp_path):
    repo = Repository(tmp_path)
    add_version(repo)
    (repo.path("m", 1) / "image.onnx").write_bytes(b"tampered")
    with pytest.raises(FailedPrecondition, match="sha256"):
        verify_files(repo.path("m", 1), repo.manifest("m", 1))


def test_lookups_name_what_exists(tmp_path):
    repo = Repository(tmp_path)
    add_version(repo, "alpha")
    with pytest.raises(NotFound, match="Available models: alpha"):
        repo.versions("beta")
    with pytest.raises(NotFound, match="Available versions: 1"):
        repo.path("alpha", 3)
    with pytest.raises(InvalidInput, match="not valid"):
        add_version(repo, "../escape")


def test_broken_manifest_is_reported(tmp_path):
    repo = Repository(tmp_path)
    add_version(repo)
    shutil.copy(repo.path("m", 1) / "manifest.json", tmp_path / "copy.json")
    (repo.path("m", 1) / "manifest.json").write_text('{"name": "m", "kind": "weird"}')
    with pytest.raises(FailedPrecondition, match="invalid manifest"):
        repo.manifest("m", 1)


def test_manifest_validation():
    with pytest.raises(ValueError, match="image tower, a text tower"):
        Manifest(name="m", version=1, kind="clip", dim=4)
    with pytest.raises(ValueError, match=r"image\.resize"):
        ImageSpec(size=4, mean=(0, 0, 0), std=(1, 1, 1), resize="stretch")
