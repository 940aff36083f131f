"""Replicas: lens servers sharing one model repository, behind the checked-in Envoy config
(the real `envoy` binary) and behind the client's own round robin; a deploy rolled across them
under load."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from lens.v1 import inference_pb2, inference_pb2_grpc

from lens_client import LensClient
from tests.clients.test_cli import lens
from tests.conftest import ServerProcess
from tests.deploy.conftest import DEPLOY
from tests.server.test_deploy import add_version, second_checkpoint  # noqa: F401 (a fixture)

ENVOY = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))

pytestmark = pytest.mark.slow
# Each replica: small batches, and no repository polling (a deploy reads the repository itself).
SERVE = ("--max-batch-size", "8", "--poll-s", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def repo(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository for every replica (tiny version 1), as a shared filesystem holds it."""
    return Path(shutil.copytree(tiny_repo, tmp_path_factory.mktemp("shared") / "repo"))


@pytest.fixture(scope="module")
def replicas(repo: Path) -> Iterator[list[ServerProcess]]:
    with ThreadPoolExecutor(2) as pool:  # both start at once
        started = [pool.submit(ServerProcess, repo, *SERVE) for _ in range(2)]
    servers = [f.result() for f in started if f.exception() is None]
    if len(servers) < len(started):
        for server in servers:
            server.stop()
        raise next(e for f in started if (e := f.exception()) is not None)
    yield servers
    for server in servers:
        server.stop()


def envoy_config(replicas: list[ServerProcess], grpc_port: int, http_port: int) -> dict:
    """deploy/envoy/envoy.yaml with this test's ports and replicas in it."""
    config = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = free_port()
    listeners = {listener["name"]: listener for listener in config["static_resources"]["listeners"]}
    listeners["grpc"]["address"]["socket_address"].update(address="127.0.0.1", port_value=grpc_port)
    listeners["http"]["address"]["socket_address"].update(address="127.0.0.1", port_value=http_port)
    addresses = {
        "lens_grpc": [r.address for r in replicas],
        "lens_http": [r.http.removeprefix("http://") for r in replicas if r.http],
    }
    for cluster in config["static_resources"]["clusters"]:
        endpoints = []
        for address in addresses[cluster["name"]]:
            host, port = address.rsplit(":", 1)
            socket_address = {"address": host, "port_value": int(port)}
            endpoints.append({"endpoint": {"address": {"socket_address": socket_address}}})
        cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": endpoints}]
        cluster["health_checks"][0]["interval"] = "0.5s"
    return config


@pytest.fixture(scope="module")
def envoy(replicas: list[ServerProcess], tmp_path_factory: pytest.TempPathFactory):
    """The real Envoy in front of both replicas: (gRPC address, HTTP base URL)."""
    grpc_port, http_port = free_port(), free_port()
    path = tmp_path_factory.mktemp("envoy") / "envoy.yaml"
    path.write_text(yaml.safe_dump(envoy_config(replicas, grpc_port, http_port)))
    process = subprocess.Popen(
        [ENVOY, "-c", str(path), "--log-level", "warn", "--base-id", str(grpc_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    address, url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 30
    while True:  # both replicas healthy in Envoy's eyes: both answer through it
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                with LensClient(address, retries=0, timeout=5) as client:
                    if client.healthy():
                        break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"envoy did not start: {process.communicate()[1]}")
        time.sleep(0.2)
    yield address, url
    process.terminate()
    process.wait(20)


def requests_served(replica: ServerProcess) -> float:
    """The requests a replica has answered, from its own /metrics."""
    text = httpx.get(f"{replica.http}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lens_requests_total{") and "Embed" in line
    )


def serving_version(replica: ServerProcess) -> int:
    with LensClient(replica.address) as client:
        return client.get_model("tiny")["serving_version"]


@dataclass
class Load:
    """gRPC and HTTP clients embedding through Envoy in a loop, recording every failure."""

    grpc_address: str
    http_url: str
    versions: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for target in (self._grpc, self._grpc, self._http):
            self._threads.append(threading.Thread(target=target, daemon=True))
            self._threads[-1].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _grpc(self) -> None:
        request = inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text="a photo")])
        with grpc.insecure_channel(self.grpc_address) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            while not self._stop.is_set():
                try:
                    self.versions.append(stub.Embed(request, timeout=30).version)
                except grpc.RpcError as e:
                    self.errors.append(f"gRPC {e.code().name}: {e.details()}")

    def _http(self) -> None:
        with httpx.Client(base_url=self.http_url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/v1/embeddings", json={"input": ["a photo"]})
                    if response.status_code != 200:
                        self.errors.append(f"HTTP {response.status_code}: {response.text}")
                except httpx.HTTPError as e:
                    self.errors.append(f"HTTP {e!r}")


def test_a_deploy_rolls_across_replicas_behind_envoy_with_no_failed_request(
    replicas,
    envoy,
    repo,
    second_checkpoint,  # noqa: F811
):
    grpc_address, http_url = envoy
    version = add_version(repo, second_checkpoint)  # written once, into the shared repository
    servers = ",".join(r.address for r in replicas)
    with Load(grpc_address, http_url) as load:
        time.sleep(1)
        rolled = lens("deploy", "tiny", str(version), "--servers", servers)
        time.sleep(1)
    assert rolled.returncode == 0, rolled.stderr
    for replica in replicas:  # one line per replica, in turn
        assert f"{replica.address}: tiny: version {version} serving (was 1" in rolled.stdout
    assert [serving_version(r) for r in replicas] == [version, version]
    assert load.errors == []
    assert len(load.versions) > 20 and set(load.versions) == {1, version}
    assert load.versions[-1] == version

    # Rolled back the same way: the version the first replica goes back to, on each.
    back = lens("rollback", "tiny", "--servers", servers)
    assert back.returncode == 0, back.stderr
    assert [serving_version(r) for r in replicas] == [1, 1]


def test_envoy_spreads_calls_over_both_replicas(replicas, envoy):
    before = [requests_served(r) for r in replicas]
    with grpc.insecure_channel(envoy[0]) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text="a")])
        for _ in range(20):
            stub.Embed(request, timeout=30)
    after = [requests_served(r) for r in replicas]
    assert all(a - b >= 5 for a, b in zip(after, before, strict=True)), (before, after)


def test_the_client_round_robins_over_several_addresses(replicas):
    before = [requests_served(r) for r in replicas]
    with LensClient(",".join(r.address for r in replicas)) as client:
        for _ in range(20):
            client.embed_texts(["a"])
    after = [requests_served(r) for r in replicas]
    assert all(a - b >= 5 for a, b in zip(after, before, strict=True)), (before, after)
    # The command line takes the same list.
    listed = lens("models", "--server", ",".join(r.address for r in replicas))
    assert listed.returncode == 0 and "tiny" in listed.stdout


def test_bad_replica_lists_are_refused_naming_the_address(replicas):
    for servers, expected in [
        ("127.0.0.1:1,nonsense", "'nonsense' is not HOST:PORT"),
        (f"{replicas[0].address},no-such-host.invalid:5", "no-such-host.invalid:5"),
    ]:
        refused = lens("deploy", "tiny", "1", "--servers", servers)
        assert refused.returncode != 0 and expected in refused.stderr, refused.stderr
    # A replica that fails stops the roll, naming it and what it did not ask.
    down = f"127.0.0.1:{free_port()}"
    stopped = lens("deploy", "tiny", "1", "--servers", f"{down},{replicas[0].address}")
    assert stopped.returncode == 1
    assert stopped.stderr.startswith(f"lens: {down}: ") and "not asked" in stopped.stderr
