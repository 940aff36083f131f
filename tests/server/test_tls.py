"""TLS on every port of `lens serve`, against real servers with certificates made here (the
`cryptography` package): a CA, a server certificate for 127.0.0.1 and localhost, a client
certificate the CA signed and a self-signed one. One server with TLS (its metrics on a port of
their own) and one with mutual TLS serve the module; start-up refusals run `lens serve` alone."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lens.v1 import inference_pb2, inference_pb2_grpc

from lens_client.aio import AsyncLensClient
from lens_client.client import LensClient
from lens_client.codec import LensClientError
from tests.conftest import LENS, ServerProcess

pytestmark = pytest.mark.slow

TEXT = inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text="a cat")])


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # signed by `ca`
    client_key: Path
    stranger_cert: Path  # self-signed: no CA of the server's signed it
    stranger_key: Path
    other_key: Path  # the key of no certificate here


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    names: list[x509.GeneralName] | None = None,
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca_key, server_key, client_key, stranger_key = _key(), _key(), _key(), _key()
    (folder / "ca.pem").write_bytes(
        _certificate("lens test CA", ca_key, "lens test CA", ca_key, ca=True)
    )
    loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _certificate("lens server", server_key, "lens test CA", ca_key, names=loopback)
    (folder / "server.pem").write_bytes(server)
    (folder / "client.pem").write_bytes(_certificate("client", client_key, "lens test CA", ca_key))
    (folder / "stranger.pem").write_bytes(
        _certificate("stranger", stranger_key, "stranger", stranger_key)
    )
    return Certs(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=_write_key(folder / "server.key", server_key),
        client_cert=folder / "client.pem",
        client_key=_write_key(folder / "client.key", client_key),
        stranger_cert=folder / "stranger.pem",
        stranger_key=_write_key(folder / "stranger.key", stranger_key),
        other_key=_write_key(folder / "other.key", _key()),
    )


def _tls_args(certs: Certs) -> list[str]:
    return ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]


@pytest.fixture(scope="module")
def tls_server(tiny_repo: Path, certs: Certs) -> Iterator[ServerProcess]:
    server = ServerProcess(tiny_repo, *_tls_args(certs), "--metrics-port", "0")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(tiny_repo: Path, certs: Certs) -> Iterator[ServerProcess]:
    server = ServerProcess(tiny_repo, *_tls_args(certs), "--tls-client-ca", str(certs.ca))
    yield server
    server.stop()


def _context(certs: Certs, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs.ca)
    if cert and key:
        context.load_cert_chain(cert, key)
    return context


def _embed_over_grpc(server: ServerProcess, credentials: grpc.ChannelCredentials | None):
    """The Embed answer, or the status of its refusal."""
    channel = (
        grpc.secure_channel(server.address, credentials)
        if credentials
        else grpc.insecure_channel(server.address)
    )
    with channel:
        try:
            return inference_pb2_grpc.InferenceStub(channel).Embed(TEXT, timeout=30)
        except grpc.RpcError as e:
            return e.code()


def _credentials(certs: Certs, cert: Path | None = None, key: Path | None = None):
    return grpc.ssl_channel_credentials(
        certs.ca.read_bytes(),
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )


# -- TLS ---------------------------------------------------------------------------------


def test_startup_says_https(tls_server: ServerProcess, certs: Certs):
    assert tls_server.http and tls_server.http.startswith("https://")
    log = "".join(tls_server.log)
    assert f"TLS on every port (certificate {certs.server_cert})" in log
    assert re.search(r"Prometheus metrics on https://\S+/metrics", log)


def test_lens_client_embeds_over_tls(tls_server: ServerProcess, certs: Certs):
    with LensClient(tls_server.address, tls_ca=certs.ca) as lens:
        vectors = lens.embed_texts(["a cat", "a dog"])
        assert vectors.shape == (2, 32)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        assert lens.healthy()


def test_lens_client_takes_its_ca_from_the_environment(
    tls_server: ServerProcess, certs: Certs, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("LENS_TLS_CA", str(certs.ca))
    with LensClient(tls_server.address) as lens:
        assert lens.embed_texts(["a cat"]).shape == (1, 32)


def test_asyncio_client_embeds_over_tls(tls_server: ServerProcess, certs: Certs):
    async def run() -> np.ndarray:
        async with AsyncLensClient(tls_server.address, tls_ca=certs.ca) as lens:
            return await lens.embed_texts(["a cat"])

    assert asyncio.run(run()).shape == (1, 32)


def test_http_and_metrics_over_tls(tls_server: ServerProcess, certs: Certs):
    found = [re.search(r"Prometheus metrics on (\S+)", line) for line in tls_server.log]
    metrics = next(m.group(1) for m in found if m)
    with httpx.Client(verify=_context(certs), timeout=30) as http:
        answer = http.post(f"{tls_server.http}/v1/embeddings", json={"input": ["a cat"]})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["data"][0]["embedding"]) == 32
        assert http.get(metrics).status_code == 200
        assert "lens_requests_total" in http.get(metrics).text


def test_plain_text_against_tls_ports_is_refused_and_serving_goes_on(
    tls_server: ServerProcess, certs: Certs
):
    assert _embed_over_grpc(tls_server, None) == grpc.StatusCode.UNAVAILABLE
    with LensClient(tls_server.address, retries=0, timeout=30) as lens:
        with pytest.raises(LensClientError) as refused:
            lens.embed_texts(["a cat"])
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    plain = tls_server.http.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/health", timeout=30)
    # A client that does not trust the server's certificate is refused too.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server.http}/health", timeout=30)
    assert tls_server.alive()
    assert _embed_over_grpc(tls_server, _credentials(certs)).embeddings.rows == 1
    assert httpx.get(f"{tls_server.http}/health", verify=_context(certs)).status_code == 200


def test_cli_takes_tls_ca(tls_server: ServerProcess, certs: Certs):
    env = {k: v for k, v in os.environ.items() if k != "LENS_TLS_CA"}
    embed = [str(LENS), "embed", "--server", tls_server.address, "--text", "a cat"]
    by_flag = subprocess.run(
        [*embed, "--tls-ca", str(certs.ca)], capture_output=True, text=True, env=env, timeout=60
    )
    assert by_flag.returncode == 0, by_flag.stderr
    assert '"input": "a cat"' in by_flag.stdout
    by_env = {**env, "LENS_TLS_CA": str(certs.ca)}
    health = [str(LENS), "health", "--server", tls_server.address]
    assert subprocess.run(health, capture_output=True, env=by_env, timeout=60).returncode == 0
    missing = subprocess.run(
        [*embed, "--tls-ca", str(certs.ca.with_name("none.pem"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert missing.returncode == 1
    assert (
        missing.stderr
        == f"lens: TLS CA {certs.ca.with_name('none.pem')}: No such file or directory\n"
    )


def test_client_certificate_needs_its_key(certs: Certs):
    with pytest.raises(ValueError, match="client certificate needs its key"):
        LensClient("127.0.0.1:1", tls_cert=certs.client_cert)


# -- mutual TLS ----------------------------------------------------------------------------


def test_mutual_tls_with_the_client_certificate(mtls_server: ServerProcess, certs: Certs):
    assert "clients must present a certificate signed by" in "".join(mtls_server.log)
    with LensClient(
        mtls_server.address,
        tls_ca=certs.ca,
        tls_cert=certs.client_cert,
        tls_key=certs.client_key,
    ) as lens:
        assert lens.embed_texts(["a cat"]).shape == (1, 32)
    verify = _context(certs, certs.client_cert, certs.client_key)
    with httpx.Client(verify=verify, timeout=30) as http:
        answer = http.post(f"{mtls_server.http}/v1/embeddings", json={"input": ["a cat"]})
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("who", ["no certificate", "self-signed certificate"])
def test_mutual_tls_refuses_others_and_serving_goes_on(
    mtls_server: ServerProcess, certs: Certs, who: str
):
    cert, key = (
        (None, None) if who == "no certificate" else (certs.stranger_cert, certs.stranger_key)
    )
    assert _embed_over_grpc(mtls_server, _credentials(certs, cert, key)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    verify = _context(certs, cert, key)
    with httpx.Client(verify=verify, timeout=30) as http, pytest.raises(httpx.TransportError):
        http.get(f"{mtls_server.http}/health")
    assert mtls_server.alive()
    assert "Traceback" not in "".join(mtls_server.log)
    admitted = _credentials(certs, certs.client_cert, certs.client_key)
    assert _embed_over_grpc(mtls_server, admitted).embeddings.rows == 1


def test_cli_presents_a_client_certificate(mtls_server: ServerProcess, certs: Certs):
    ls = [str(LENS), "models", "--server", mtls_server.address, "--tls-ca", str(certs.ca)]
    mutual = [*ls, "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
    shown = subprocess.run(mutual, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "tiny" in shown.stdout
    refused = subprocess.run(
        [*ls, "--tls-cert", str(certs.client_cert)], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1
    assert refused.stderr == "lens: a TLS client certificate needs its key: give both, or neither\n"


# -- start-up refusals -----------------------------------------------------------------------


def _refusals(certs: Certs) -> list[tuple[list[str], str]]:
    cert, key, ca = str(certs.server_cert), str(certs.server_key), str(certs.ca)
    missing = str(certs.ca.with_name("missing.pem"))
    return [
        (["--tls-cert", missing, "--tls-key", key], f"TLS certificate {missing}: no such file"),
        (
            ["--tls-cert", cert, "--tls-key", str(certs.other_key)],
            f"TLS key {certs.other_key} does not match the certificate {cert}",
        ),
        (["--tls-cert", key, "--tls-key", key], f"TLS certificate {key}: not a PEM certificate"),
        (
            ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", key],
            f"TLS client CA {key}: not PEM CA certificates",
        ),
        (
            ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", missing],
            f"TLS client CA {missing}: no such file",
        ),
        (["--tls-cert", cert], "--tls-cert needs --tls-key (the certificate's private key)"),
        (["--tls-key", key], "--tls-key needs --tls-cert (the certificate of that key)"),
        (
            ["--tls-client-ca", ca],
            "--tls-client-ca needs --tls-cert and --tls-key (the server's own)",
        ),
    ]


def test_startup_refusals_exit_2_with_one_line(certs: Certs, tmp_path: Path):
    serve = [str(LENS), "serve", "--repo", str(tmp_path), "--port", "0", "--http-port", "0"]
    cases = _refusals(certs)
    # All at once: each is a process start, most of it imports.
    running = [
        subprocess.Popen([*serve, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args, _ in cases
    ]
    for (args, said), process in zip(cases, running, strict=True):
        stdout, stderr = process.communicate(timeout=120)
        assert (process.returncode, stderr) == (2, f"lens: {said}\n"), args
        assert stdout == ""
