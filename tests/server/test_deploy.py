"""Deploys and rollbacks into the running server, under load: no failed request, versions that
only move forward, collections and classifiers that follow; broken versions refused."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from lens.v1 import (
    classifiers_pb2,
    classifiers_pb2_grpc,
    common_pb2,
    index_pb2,
    index_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

from lens_client import LensClient
from tests.clients.test_cli import lens
from tests.conftest import TINY_ARCH, ServerProcess, encode, photo

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")
TEXTS = [f"a photo of the number {i}" for i in range(24)]
LABELS = ["cat", "astronaut", "coffee", "rocket"]


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP with other weights (seed 1): 'the fine-tuned version'."""
    import open_clip
    import torch

    open_clip.add_model_config(str(TINY_ARCH))
    torch.manual_seed(1)
    model = open_clip.create_model(TINY_ARCH.stem)
    path = tmp_path_factory.mktemp("second") / "tiny-seed1.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture()
def repo(tiny_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the repository (tiny version 1): these tests change it."""
    return Path(shutil.copytree(tiny_repo, tmp_path / "repo"))


def add_version(repo: Path, checkpoint: Path) -> int:
    from lens_server.repository import Repository
    from lens_training.export.openclip import import_openclip

    version, _ = import_openclip(
        Repository(repo), str(TINY_ARCH), "tiny", pretrained=str(checkpoint)
    )
    return version


def copy_version(repo: Path, source: int, edit=None) -> int:
    """A new version folder copied from `source`, its manifest passed through `edit`."""
    versions = sorted(int(p.name) for p in (repo / "tiny").iterdir() if p.name.isdigit())
    target = repo / "tiny" / str(versions[-1] + 1)
    shutil.copytree(repo / "tiny" / str(source), target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = versions[-1] + 1
    if edit:
        edit(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return versions[-1] + 1


def models(channel) -> models_pb2_grpc.ModelsStub:
    return models_pb2_grpc.ModelsStub(channel)


def version_of(channel, number: int) -> models_pb2.VersionInfo:
    info = models(channel).GetModel(models_pb2.GetModelRequest(name="tiny"), timeout=30)
    (found,) = [v for v in info.versions if v.version == number]
    return found


def embed_one(channel, text: str, version: int = 0) -> np.ndarray:
    response = inference_pb2_grpc.InferenceStub(channel).Embed(
        inference_pb2.EmbedRequest(
            inputs=[inference_pb2.Input(text=text)],
            model=common_pb2.ModelRef(name="tiny", version=version),
        ),
        timeout=30,
    )
    return np.frombuffer(response.embeddings.data, "<f4")


@dataclass
class Traffic:
    """Clients calling Embed, Classify and Search in a loop, recording what served them."""

    address: str
    clients: int = 3
    served: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    calls: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        for i in range(self.clients):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, client: int) -> None:
        image = encode(photo(PHOTOS[client % len(PHOTOS)]), "JPEG", quality=85)
        with grpc.insecure_channel(self.address) as channel:
            inference = inference_pb2_grpc.InferenceStub(channel)
            index = index_pb2_grpc.IndexStub(channel)
            embed = inference_pb2.EmbedRequest(
                inputs=[inference_pb2.Input(image=image), inference_pb2.Input(text="a")]
            )
            classify = inference_pb2.ClassifyRequest(
                images=[image], labels=classifiers_pb2.Labels(labels=LABELS)
            )
            search = index_pb2.SearchRequest(
                collection="photos", query=index_pb2.Query(text="a rocket"), k=3
            )

            def embedded() -> int:
                response = inference.Embed(embed, timeout=30)
                assert (response.embeddings.rows, response.embeddings.cols) == (2, 32)
                return response.version

            def classified() -> int:
                response = inference.Classify(classify, timeout=30)
                assert len(response.results[0].labels) == len(LABELS)
                return response.version

            def searched() -> int:
                response = index.Search(search, timeout=30)
                assert len(response.hits) == 3  # a whole answer, before, during and after
                return response.model.version

            calls = {"embed": embedded, "classify": classified, "search": searched}
            while not self._stop.is_set():
                for kind, call in calls.items():
                    try:
                        self.served.setdefault((client, kind), []).append(call())
                    except grpc.RpcError as e:
                        self.errors.append(f"{kind}: {e.code().name}: {e.details()}")
                    except Exception as e:  # a broken test client must fail the test too
                        self.errors.append(f"{kind}: {e!r}")
                    self.calls += 1

    def switches(self) -> set[tuple[int, int]]:
        """Every (from, to) change of version one client saw, per kind of call."""
        seen = set()
        for versions in self.served.values():
            seen |= {(a, b) for a, b in itertools.pairwise(versions) if a != b}
        return seen


def wait_reindexed(client: LensClient, name: str, version: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.describe_collection(name)
        if info["version"] == version and info["reindex"] is None:
            return info
        time.sleep(0.1)
    raise AssertionError(f"collection {name} not re-indexed to {version}: {info}")


def wait_states(client: LensClient, model: str, states: list[str], timeout: float = 60) -> bool:
    """Whether the model's versions reach `states` (in version order) within `timeout`."""
    deadline = time.monotonic() + timeout
    while (seen := [v["state"] for v in client.get_model(model)["versions"]]) != states:
        if time.monotonic() > deadline:
            raise AssertionError(f"{model}: versions {seen}, not {states}")
        time.sleep(0.1)
    return True


@pytest.fixture()
def served(repo: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(repo, "--max-batch-size", "8", "--poll-s", "0")
    yield proc
    proc.stop()


def fill_collection(client: LensClient) -> None:
    client.create_collection("photos", model="tiny")
    client.upsert("photos", ids=list(PHOTOS), images=[encode(photo(n), "JPEG") for n in PHOTOS])
    client.upsert("photos", ids=[f"t{i}" for i in range(len(TEXTS))], texts=TEXTS)
    client.create_classifier("things", labels=LABELS, model="tiny")


def stored_text_vectors(client: LensClient) -> np.ndarray:
    stub = index_pb2_grpc.IndexStub(client._channel)
    response = stub.Get(
        index_pb2.GetRequest(
            collection="photos", ids=[f"t{i}" for i in range(3)], include_vectors=True
        ),
        timeout=30,
    )
    return np.array([item.vector.values for item in response.items], np.float32)


def test_deploy_and_rollback_under_load(served, repo, second_checkpoint):
    with LensClient(served.address) as client, grpc.insecure_channel(served.address) as channel:
        fill_collection(client)
        v1_texts = np.stack([embed_one(channel, t, 1) for t in TEXTS[:3]])
        np.testing.assert_allclose(stored_text_vectors(client), v1_texts, atol=1e-5)

        with Traffic(served.address) as traffic:
            time.sleep(1)
            # A new version written into the repository under load shows up after a reload,
            # not deployed; then it is deployed in the middle of the traffic.
            assert add_version(repo, second_checkpoint) == 2
            listed = client.reload_models()
            assert [v["state"] for v in listed[0]["versions"]] == ["serving", "available"]
            time.sleep(1)
            result = client.deploy("tiny", 2)
            assert (result["version"], result["previous_version"]) == (2, 1)
            assert result["reindexing"] == ["photos"]
            assert result["load_seconds"] > 0
            wait_reindexed(client, "photos", 2)
            time.sleep(2)
        assert traffic.errors == []
        assert traffic.switches() == {(1, 2)}  # every kind of call moved once, never back
        for (_, kind), versions in traffic.served.items():
            assert versions[0] == 1 and versions[-1] == 2, kind

        # Afterwards: v2 vectors in the collection and from Embed; v1 unloaded; classifier ready.
        v2_texts = np.stack([embed_one(channel, t) for t in TEXTS[:3]])
        assert not np.allclose(v1_texts, v2_texts, atol=1e-3)
        np.testing.assert_allclose(stored_text_vectors(client), v2_texts, atol=1e-5)
        assert client.search("photos", text=TEXTS[5], k=1)[0]["id"] == "t5"
        info = client.get_model("tiny")
        assert [(v["version"], v["state"]) for v in info["versions"]] == [
            (1, "available"),
            (2, "serving"),
        ]
        assert info["previous_version"] == 1
        saved = classifiers_pb2_grpc.ClassifiersStub(channel).GetClassifier(
            classifiers_pb2.ClassifierRequest(name="things"), timeout=30
        )
        assert list(saved.versions) == [1, 2]

        # Rollback, from the command line, under load: the same in reverse.
        with Traffic(served.address) as traffic:
            time.sleep(1.5)
            done = lens("rollback", "tiny", "--server", served.address)
            assert done.returncode == 0, done.stderr
            assert "tiny: version 1 serving (was 2" in done.stdout
            wait_reindexed(client, "photos", 1)
            time.sleep(1.5)
        assert traffic.errors == []
        assert traffic.switches() == {(2, 1)}
        np.testing.assert_allclose(stored_text_vectors(client), v1_texts, atol=1e-5)
        assert client.get_model("tiny")["previous_version"] == 0

    # The deployed version survives a restart (not simply the newest).
    served.stop()
    again = ServerProcess(repo, "--poll-s", "0", collections=served.collections)
    try:
        with LensClient(again.address) as client:
            assert client.get_model("tiny")["serving_version"] == 1
            assert client.describe_collection("photos")["version"] == 1
    finally:
        again.stop()


def test_broken_versions_are_refused_and_the_old_one_keeps_serving(served, repo):
    truncated = copy_version(repo, 1)
    image = repo / "tiny" / str(truncated) / "image.onnx"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    bad_parity = copy_version(repo, 1, lambda m: m["parity"]["image"].update(min_cosine=0.5))
    other_kind = copy_version(repo, 1, lambda m: m.update(kind="image", text=None))
    garbage = b"not an onnx graph" * 100  # its sha256 recorded: only ONNX Runtime can tell
    unloadable = copy_version(
        repo, 1, lambda m: m["files"].update({"image.onnx": hashlib.sha256(garbage).hexdigest()})
    )
    (repo / "tiny" / str(unloadable) / "image.onnx").write_bytes(garbage)
    with LensClient(served.address) as client, grpc.insecure_channel(served.address) as channel:
        client.reload_models()
        stub = models(channel)
        for version, code, words in (
            (truncated, grpc.StatusCode.FAILED_PRECONDITION, "sha256"),
            (bad_parity, grpc.StatusCode.FAILED_PRECONDITION, "failed parity"),
            (other_kind, grpc.StatusCode.FAILED_PRECONDITION, "another name"),
            (unloadable, grpc.StatusCode.FAILED_PRECONDITION, "ONNX Runtime could not load"),
            (99, grpc.StatusCode.NOT_FOUND, "Available versions: 1, 2, 3, 4, 5"),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Deploy(models_pb2.DeployRequest(name="tiny", version=version), timeout=60)
            assert refused.value.code() == code, refused.value.details()
            assert words in refused.value.details()
            assert embed_one(channel, "still here").shape == (32,)
        assert version_of(channel, truncated).state == models_pb2.VersionInfo.STATE_FAILED
        assert "sha256" in version_of(channel, truncated).reason
        assert "failed parity" in version_of(channel, bad_parity).reason
        assert client.get_model("tiny")["serving_version"] == 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.Rollback(models_pb2.RollbackRequest(name="tiny"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # A file changed under the loaded version: reported, and the loaded copy serves on.
        before = embed_one(channel, "hello")
        text = repo / "tiny" / "1" / "text.onnx"
        text.write_bytes(text.read_bytes() + b"\0")
        client.reload_models()
        assert "changed on disk" in version_of(channel, 1).reason
        np.testing.assert_allclose(embed_one(channel, "hello"), before, atol=1e-6)


def test_load_unload_and_memory_budget(repo, second_checkpoint):
    add_version(repo, second_checkpoint)
    one = sum((repo / "tiny" / "1" / f).stat().st_size for f in ("image.onnx", "text.onnx"))
    # Room for one version and a half: a deploy, which holds two at once, does not fit.
    proc = ServerProcess(repo, "--poll-s", "0", "--memory-budget", str(int(one * 1.5)))
    try:
        with LensClient(proc.address) as client, grpc.insecure_channel(proc.address) as channel:
            assert client.get_model("tiny")["serving_version"] == 2  # never deployed: newest
            held = client.get_model("tiny")
            assert held["memory_bytes"] == one and held["memory_budget_bytes"] == int(one * 1.5)
            with pytest.raises(grpc.RpcError) as refused:
                models(channel).Deploy(models_pb2.DeployRequest(name="tiny", version=1), timeout=60)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "memory budget" in refused.value.details()
            assert embed_one(channel, "fine").shape == (32,)
            with pytest.raises(grpc.RpcError) as refused:
                models(channel).UnloadModel(
                    models_pb2.ModelVersionRequest(name="tiny", version=2), timeout=30
                )
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            # Unload everything, then load version 1: it serves, and pinned requests get it.
            client.unload_model("tiny")
            assert client.get_model("tiny")["serving_version"] == 0
            client.reload_models()  # a model unloaded on request is not loaded again
            assert [v["state"] for v in client.get_model("tiny")["versions"]] == ["available"] * 2
            client.load_model("tiny:1")
            assert client.get_model("tiny")["serving_version"] == 1
            assert lens("models", "load", "tiny:2", "--server", proc.address).returncode == 1
            with pytest.raises(grpc.RpcError) as missing:
                embed_one(channel, "x", version=2)
            assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        proc.stop()


def test_two_deploys_at_once_do_not_interleave(served, repo, second_checkpoint):
    add_version(repo, second_checkpoint)
    with LensClient(served.address) as client:
        client.reload_models()
        results: list[dict] = []
        threads = [
            threading.Thread(target=lambda v=v: results.append(client.deploy("tiny", v)))
            for v in (2, 1, 2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(results) == 3
        # One after the other: in some order, each deploy started from the version the one
        # before it left serving, and the last one's version serves.
        serving = client.get_model("tiny")["serving_version"]
        assert any(
            order[0]["previous_version"] == 1
            and all(a["version"] == b["previous_version"] for a, b in itertools.pairwise(order))
            and order[-1]["version"] == serving
            for order in itertools.permutations(results)
        ), results


def test_deployed_state_and_sizes():
    from lens_client.cli_common import parse_bytes
    from lens_server.repository import Deployed

    state = Deployed().deploy(1).deploy(2).deploy(3)
    assert (state.serving, state.previous) == (3, 2)
    assert state.rollback() == Deployed(2, (1,))
    assert state.rollback().rollback().previous == 0
    assert state.deploy(3) is state
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("0") == 0
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


def test_an_unreadable_deploy_state_stops_its_model_only_until_a_deploy(repo):
    """A corrupt `deployed.json` does not stop the server: the other models serve, this one
    reports why it does not, and deploying a version writes the state again."""
    shutil.copytree(repo / "tiny", repo / "other")
    (repo / "other" / "deployed.json").write_text('{"serving": ')
    server = ServerProcess(repo, "--default-model", "tiny")
    try:
        with grpc.insecure_channel(server.address) as channel:
            assert embed_one(channel, "still serving").shape == (32,)
            info = models(channel).GetModel(models_pb2.GetModelRequest(name="other"), timeout=30)
            (version,) = info.versions
            assert version.state == models_pb2.VersionInfo.STATE_FAILED
            assert "unreadable deploy state" in version.reason and "lens deploy" in version.reason
            request = inference_pb2.EmbedRequest(
                inputs=[inference_pb2.Input(text="a cat")], model=common_pb2.ModelRef(name="other")
            )
            stub = inference_pb2_grpc.InferenceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Embed(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "unreadable deploy state" in refused.value.details()
            deployed = models(channel).Deploy(
                models_pb2.DeployRequest(name="other", version=1), timeout=60
            )
            assert deployed.version == 1
            assert stub.Embed(request, timeout=30).embeddings.rows == 1
            info = models(channel).GetModel(models_pb2.GetModelRequest(name="other"), timeout=30)
            assert info.versions[0].state == models_pb2.VersionInfo.STATE_SERVING
    finally:
        server.stop()
    assert json.loads((repo / "other" / "deployed.json").read_text())["serving"] == 1


def test_a_reindex_cut_by_a_crash_resumes_at_the_next_start(served, repo, second_checkpoint):
    texts = [f"item {i} of a larger collection" for i in range(3000)]
    with LensClient(served.address) as client, grpc.insecure_channel(served.address) as channel:
        client.create_collection("photos", model="tiny")
        client.upsert("photos", ids=[f"t{i}" for i in range(len(texts))], texts=texts)
        add_version(repo, second_checkpoint)
        client.reload_models()
        client.deploy("tiny", 2)
        progress = client.describe_collection("photos")["reindex"]
        assert progress is not None and progress["total"] == 3000
        assert progress["done"] < 3000, "re-indexed before the crash: make the collection larger"
        v2 = embed_one(channel, texts[7])
    served.kill()  # SIGKILL: no shutdown, no snapshot

    again = ServerProcess(repo, "--poll-s", "0", collections=served.collections)
    try:
        with LensClient(again.address) as client:
            assert client.get_model("tiny")["serving_version"] == 2
            info = wait_reindexed(client, "photos", 2)
            assert info["count"] == 3000
            stored = client.get("photos", ["t7"], include_vectors=True)[0]
            np.testing.assert_allclose(stored["vector"], v2, atol=1e-5)
            assert client.search("photos", text=texts[7], k=1)[0]["id"] == "t7"
            # Version 1 leaves once the re-index's last requests on it finish: soon, not at once.
            assert wait_states(client, "tiny", ["available", "serving"])
    finally:
        again.stop()


def test_the_fine_tune_workflow_from_the_command_line(served, repo, tmp_path):
    """train --init → export into the served repository → reload → deploy → rollback."""
    trained = lens(
        "train",
        "clip",
        "--init",
        "tiny",
        "--data",
        "digits",
        "--steps",
        "3",
        "--batch-size",
        "32",
        "--holdout",
        "300",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
        "--export",
        "tiny",
        "--repo",
        str(repo),
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "tiny: version 2 written" in trained.stdout
    server = ("--server", served.address)
    listed = lens("models", "reload", *server)
    assert listed.returncode == 0 and "version 2: available" in listed.stdout
    deployed = lens("deploy", "tiny", "2", *server)
    assert deployed.returncode == 0, deployed.stderr
    assert "tiny: version 2 serving (was 1" in deployed.stdout
    with grpc.insecure_channel(served.address) as channel:
        fine_tuned = embed_one(channel, "a photo of the number 3")
        np.testing.assert_allclose(fine_tuned, embed_one(channel, "a photo of the number 3", 2))
    assert "serving version 2 (rollback to 1)" in lens("models", *server).stdout
    assert lens("rollback", "tiny", *server).returncode == 0
    assert "serving version 1" in lens("models", "ls", "tiny", *server).stdout
    refused = lens("deploy", "tiny", "7", *server)
    assert refused.returncode == 1 and "has no version 7" in refused.stderr


def test_a_collection_of_raw_vectors_refuses_the_reindex_unless_kept(
    served, repo, second_checkpoint
):
    add_version(repo, second_checkpoint)
    with LensClient(served.address) as client, grpc.insecure_channel(served.address) as channel:
        client.reload_models()
        client.create_collection("mixed", model="tiny")
        client.upsert("mixed", ids=["a"], texts=["a cat"])
        client.upsert("mixed", ids=["v"], vectors=np.ones((1, 32), np.float32))
        with pytest.raises(grpc.RpcError) as refused:
            models(channel).Deploy(models_pb2.DeployRequest(name="tiny", version=2), timeout=60)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "keep-collections" in refused.value.details()
        info = client.get_model("tiny")
        assert info["serving_version"] == 1
        assert [v["state"] for v in info["versions"]] == ["serving", "available"]  # 2 left
        assert client.describe_collection("mixed")["reindex"] is None

        kept = client.deploy("tiny", 2, keep_collections=True)
        assert kept["reindexing"] == []
        states = [v["state"] for v in client.get_model("tiny")["versions"]]
        assert states == ["ready", "serving"]  # 1 stays loaded for the collection
        assert client.describe_collection("mixed")["version"] == 1
        assert client.search("mixed", text="a cat", k=1)[0]["id"] == "a"
        with pytest.raises(grpc.RpcError) as needed:
            models(channel).UnloadModel(
                models_pb2.ModelVersionRequest(name="tiny", version=1), timeout=30
            )
        assert needed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "mixed" in needed.value.details()
        client.drop_collection("mixed")  # nothing needs version 1 any more
        assert [v["state"] for v in client.get_model("tiny")["versions"]] == [
            "available",
            "serving",
        ]


def test_the_asyncio_client_deploys_and_rolls_back(served, repo, second_checkpoint):
    from lens_client import AsyncLensClient
    from lens_client.codec import LensClientError

    add_version(repo, second_checkpoint)

    def states(model: dict) -> list[str]:
        return [v["state"] for v in model["versions"]]

    async def main() -> tuple[dict, dict, int, list[list[str]]]:
        async with AsyncLensClient(served.address) as lens:
            deployed = await lens.deploy("tiny")  # the newest
            served_now = (await lens.get_model("tiny"))["serving_version"]
            back = await lens.rollback("tiny")
            with pytest.raises(LensClientError) as none_left:
                await lens.rollback("tiny")
            assert none_left.value.code == grpc.StatusCode.FAILED_PRECONDITION
            seen = [states(await lens.load_model("tiny:2"))]
            seen.append(states(await lens.unload_model("tiny:2")))
            seen.append(states((await lens.reload_models())[0]))
            with pytest.raises(LensClientError) as serving:
                await lens.unload_model("tiny:1")
            assert serving.value.code == grpc.StatusCode.FAILED_PRECONDITION
            return deployed, back, served_now, seen

    deployed, back, served_now, seen = asyncio.run(main())
    assert (deployed["version"], deployed["previous_version"], served_now) == (2, 1, 2)
    assert (back["version"], back["previous_version"]) == (1, 2)
    assert seen == [["serving", "ready"], ["serving", "available"], ["serving", "available"]]
