"""The engine backends (Milvus, PostgreSQL with pgvector) through real processes: lens
replicas sharing one engine server (search by image, text and id; a deploy's re-index
answered throughout; a restart on an empty folder), a SIGKILL of the engine during upserts,
and each backend's bad input."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from lens.v1 import common_pb2, index_pb2

from lens_client import LensClient
from lens_server.collections import CollectionSpec, NewItem
from lens_server.collections.manager import Collections
from lens_server.collections.milvus_engine import MilvusEngine
from lens_server.collections.pgvector_engine import PgEngine
from lens_server.errors import Unavailable
from tests.conftest import LENS, ServerProcess, encode, photo
from tests.server.collections import milvus_server, pg_server
from tests.server.collections.engine_process import EngineProcess, free_port
from tests.server.test_deploy import (  # the fixtures are shared with the deploy tests
    add_version,
    repo,  # noqa: F401
    second_checkpoint,  # noqa: F401
    wait_reindexed,
)
from tests.server.test_index import PHOTOS, create, search, stub, upsert

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Engine:
    """How the tests reach one engine backend: `lens serve`'s flag for it, the session
    fixture of its server (conftest.py), lens's client of it, and a server of its own."""

    flag: str
    fixture: str
    client: Callable[..., Any]
    process: Callable[[Path], EngineProcess]
    require: Callable[[], None]


ENGINES = {
    "milvus": Engine(
        "--milvus-uri",
        "milvus",
        MilvusEngine,
        lambda folder: milvus_server.MilvusServer(folder / "data"),
        milvus_server.require,
    ),
    "pgvector": Engine("--pg-dsn", "pg", PgEngine, pg_server.PgServer, pg_server.require),
}


def lens_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LENS), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("backend", ENGINES)
def test_replicas_share_collections_search_through_a_reindex_and_restart(
    request,
    backend,
    repo,  # noqa: F811
    tmp_path,
    second_checkpoint,  # noqa: F811
):
    engine = ENGINES[backend]
    server = request.getfixturevalue(engine.fixture)
    flag = (engine.flag, server.address)
    a = ServerProcess(repo, *flag, "--poll-s", "0", collections=tmp_path / "a")
    b = ServerProcess(repo, *flag, "--poll-s", "0", collections=tmp_path / "b")
    try:
        made = lens_cli(
            "index", "create", "shared", "--backend", backend, "--model", "tiny",
            "--server", a.address,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["backend"] == backend
        images = {n: encode(photo(n), "JPEG", quality=90) for n in PHOTOS}
        with grpc.insecure_channel(a.address) as ca, grpc.insecure_channel(b.address) as cb:
            upsert(
                ca,
                "shared",
                *(
                    index_pb2.Item(
                        id=n, image=data, metadata_json=json.dumps({"gray": photo(n).ndim == 2})
                    )
                    for n, data in images.items()
                ),
            )
            upsert(cb, "shared", index_pb2.Item(id="caption", text="a rocket on its pad"))
            for channel in (ca, cb):  # both replicas see every write
                assert search(channel, "shared", image=images["rocket"])[0] == "rocket"
                assert search(channel, "shared", id="coffee")[0] == "coffee"
                assert search(channel, "shared", text="a rocket on its pad")[0] == "caption"
                gray = search(channel, "shared", k=10, filter_json='{"gray": true}', id="coins")
                assert set(gray) == {n for n in PHOTOS if photo(n).ndim == 2}
            info = stub(cb).DescribeCollection(index_pb2.CollectionRequest(name="shared"))
            assert (info.backend, info.index.backend, info.count) == (backend, backend, 7)
            assert info.built_type == f"{backend}-hnsw"

            # a deploy on one replica re-indexes the shared collection; searches on both
            # keep answering meanwhile
            version = add_version(repo, second_checkpoint)
            failures: list[str] = []
            stop = threading.Event()

            def searching(channel):
                while not stop.is_set():
                    try:
                        search(channel, "shared", id="rocket")
                    except grpc.RpcError as e:
                        failures.append(f"{e.code()}: {e.details()}")

            threads = [threading.Thread(target=searching, args=(c,)) for c in (ca, cb)]
            for t in threads:
                t.start()
            with LensClient(a.address) as client:
                client.deploy("tiny", version)
                assert wait_reindexed(client, "shared", version)["count"] == 7
            stop.set()
            for t in threads:
                t.join(30)
            assert failures == []
            with LensClient(b.address) as client:
                deadline = time.monotonic() + 10
                while client.describe_collection("shared")["version"] != version:
                    assert time.monotonic() < deadline, "replica b never saw the swap"
                    time.sleep(0.2)
    finally:
        a.stop()
        b.stop()
    # a server on an empty folder lists the collection from the engine
    c = ServerProcess(repo, *flag, collections=tmp_path / "c")
    try:
        with grpc.insecure_channel(c.address) as cc:
            listed = stub(cc).ListCollections(index_pb2.ListCollectionsRequest(), timeout=30)
            assert "shared" in [x.name for x in listed.collections]
            assert search(cc, "shared", id="chelsea")[0] == "chelsea"
            stub(cc).DropCollection(index_pb2.CollectionRequest(name="shared"))
        assert engine.client(server.address).record("shared") is None
    finally:
        c.stop()


@pytest.mark.parametrize("backend", ENGINES)
def test_sigkill_of_the_engine_during_upserts_loses_nothing_acknowledged(tmp_path, backend):
    engine = ENGINES[backend]
    engine.require()
    engine_process = engine.process(tmp_path)
    try:
        client = engine.client(engine_process.address, timeout_s=3)
        collections = Collections(tmp_path / "none", **{backend: client})
        c = collections.create(CollectionSpec("crash", 8, backend=backend))
        rng = np.random.default_rng(0)
        acknowledged: list[str] = []
        refused: list[list[NewItem]] = []
        errors: list[str] = []

        def writing():
            for r in range(10_000):
                batch = [
                    NewItem(f"r{r}-{i}", v, "{}", "vector", None)
                    for i, v in enumerate(rng.normal(size=(50, 8)).astype(np.float32))
                ]
                try:
                    c.upsert(batch)
                except Unavailable as e:
                    refused.append(batch)
                    errors.append(str(e))
                    return
                acknowledged.extend(item.id for item in batch)

        writer = threading.Thread(target=writing)
        writer.start()
        while len(acknowledged) < 1000:
            time.sleep(0.01)
        engine_process.kill()
        writer.join(60)
        assert not writer.is_alive()
        assert errors and errors[0].startswith(f"{backend} backend at {engine_process.address}")
        # down: every call says so, naming the backend
        with pytest.raises(Unavailable, match=f"{backend} backend at"):
            c.describe()
        engine_process.start()
        deadline = time.monotonic() + 30
        while True:  # the client retries the refused write until the engine is back
            try:
                c.upsert(refused[0])
                break
            except Unavailable:
                assert time.monotonic() < deadline, "the engine did not come back"
                time.sleep(0.2)
        c.upsert(refused[0])  # and again: idempotent
        ids = [*acknowledged, *(item.id for item in refused[0])]
        found = c.get(ids)
        assert len(found) == len(ids) == len(set(ids))
        assert c.describe()["count"] == len(ids)
        collections.close()
    finally:
        engine_process.remove()


def test_milvus_bad_input(tiny_repo, tmp_path):
    milvus_server.require()  # the refusal of a dead engine comes from pymilvus
    dead = f"http://127.0.0.1:{free_port()}"
    bare = ServerProcess(tiny_repo, collections=tmp_path / "bare")
    down = ServerProcess(tiny_repo, "--milvus-uri", dead, collections=tmp_path / "down")
    try:
        with grpc.insecure_channel(bare.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                create(channel, "m", dim=4, index=index_pb2.IndexSpec(backend="milvus"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "needs a server started with --milvus-uri" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                create(channel, "m", dim=4, index=index_pb2.IndexSpec(backend="qdrant"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "backend must be one of faiss, milvus, pgvector; got 'qdrant'" in (
                err.value.details()
            )
        with grpc.insecure_channel(down.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                create(channel, "m", model=common_pb2.ModelRef(name="tiny"),
                       index=index_pb2.IndexSpec(backend="milvus"))  # fmt: skip
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"milvus backend at {dead}" in err.value.details()
        answer = httpx.post(
            f"{down.http}/v1/collections", json={"name": "m", "dim": 4, "backend": "milvus"}
        )
        assert answer.status_code == 503
        assert f"milvus backend at {dead}" in answer.json()["error"]["message"]
        cli = lens_cli("index", "create", "m", "--dim", "4", "--backend", "pg",
                       "--server", down.address)  # fmt: skip
        assert cli.returncode == 2
        assert cli.stderr.strip() == "lens: --backend must be faiss, milvus or pgvector, got 'pg'"
    finally:
        bare.stop()
        down.stop()


def test_pgvector_bad_input(tiny_repo, tmp_path, pg):
    dead = f"postgresql://lens:secret@127.0.0.1:{free_port()}/postgres"
    no_db = f"postgresql://lens@127.0.0.1:{pg.port}/nosuchdb"
    bare = ServerProcess(tiny_repo, collections=tmp_path / "bare")
    # a database that is down at start: the server starts, and says so on each call
    down = ServerProcess(tiny_repo, "--pg-dsn", dead, collections=tmp_path / "down")
    wrong = ServerProcess(tiny_repo, "--pg-dsn", no_db, collections=tmp_path / "wrong")
    try:
        with grpc.insecure_channel(bare.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                create(channel, "m", dim=4, index=index_pb2.IndexSpec(backend="pgvector"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "backend pgvector needs a server started with --pg-dsn" in err.value.details()
        with grpc.insecure_channel(down.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                create(channel, "m", model=common_pb2.ModelRef(name="tiny"),
                       index=index_pb2.IndexSpec(backend="pgvector"))  # fmt: skip
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            shown = dead.replace(":secret", "")
            assert f"pgvector backend at {shown}: " in err.value.details()
            assert "secret" not in err.value.details()
        answer = httpx.post(
            f"{down.http}/v1/collections", json={"name": "m", "dim": 4, "backend": "pgvector"}
        )
        assert answer.status_code == 503
        assert f"pgvector backend at {shown}" in answer.json()["error"]["message"]
        with grpc.insecure_channel(wrong.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                create(channel, "m", dim=4, index=index_pb2.IndexSpec(backend="pgvector"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"pgvector backend at {no_db}" in err.value.details()
            assert 'database "nosuchdb" does not exist' in err.value.details()
    finally:
        bare.stop()
        down.stop()
        wrong.stop()
    # a DSN that is no PostgreSQL URL stops the server before it listens
    refused = lens_cli("serve", "--repo", str(tiny_repo), "--port", "0", "--pg-dsn", "mysql://x")
    assert refused.returncode != 0
    assert "--pg-dsn must be a postgresql:// URL, got 'mysql://x'" in refused.stderr
