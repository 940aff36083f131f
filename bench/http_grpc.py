"""HTTP/JSON against gRPC: the same work through both front doors of one server, in one run.

Measures, on one `lens serve` process, model version and set of inputs:
- images/s, `--clients` requests at once of `--batch` 640×480 JPEGs each: gRPC `Embed` (the
  bytes) against HTTP `POST /v1/embeddings` (base64 data URIs, `modality: image`; float
  vectors back, OpenAI's default);
- texts/s likewise: gRPC against `/v1/embeddings` with `encoding_format` float and base64;
- single-text latency, one request at a time, the transports taking turns request by request.
Requests are built before the clock starts (protobufs; JSON bytes), and every response is
decoded to a float32 matrix inside it (JSON floats, base64 or the protobuf's bytes), as a
client would. The ways of sending take turns in waves of `--clients` concurrent requests, so
that a neighbour's load on a shared machine falls on all of them alike.
Prints the figures beside the targets (HTTP images/s ≥ 95% of gRPC's, texts/s with base64
≥ 90%, single-text p50 within 2 ms) and writes JSON to bench/results/. (Not `http.py`: run as
a script, that name would stand in for the standard library's `http` package.)

    python bench/http_grpc.py --repo models --model clip-vit-b-32
    python bench/http_grpc.py --tiny                  # the tiny test model, small sizes (a test)
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from gpu import TINY, model_repository
from harness import Served, hot_frames, machine, paired_parser, sampled, save, serve
from lens.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from serve import batches, jpeg_inputs, text_inputs

# (figure, target, higher is better)
TARGETS = (
    ("images_per_s_http_vs_grpc", 0.95, True),
    ("texts_per_s_http_base64_vs_grpc", 0.90, True),
    ("single_text_p50_ms_http_minus_grpc", 2.0, False),
)

Call = Callable[[Any], np.ndarray]


class Transports:
    """One gRPC channel and one HTTP connection pool, shared by the client threads; each
    `*_call` sends one prepared request and returns its vectors (n, dim). With `api_key`,
    every call carries it (`authorization: Bearer KEY`), as lens's clients send it."""

    def __init__(self, served: Served, model: str, clients: int, api_key: str = "") -> None:
        self.model = model
        self.channel = grpc.insecure_channel(
            served.address, options=[("grpc.max_receive_message_length", 256 << 20)]
        )
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=served.http, timeout=600, limits=limits, headers=headers)

    def grpc_request(self, inputs: list[bytes] | list[str]) -> inference_pb2.EmbedRequest:
        items = [
            inference_pb2.Input(image=x) if isinstance(x, bytes) else inference_pb2.Input(text=x)
            for x in inputs
        ]
        return inference_pb2.EmbedRequest(inputs=items, model=common_pb2.ModelRef(name=self.model))

    def grpc_call(self, request: inference_pb2.EmbedRequest) -> np.ndarray:
        m = self.stub.Embed(request, timeout=600, metadata=self.metadata).embeddings
        return np.frombuffer(m.data, "<f4").reshape(m.rows, m.cols)

    def http_request(self, inputs: list[bytes] | list[str], encoding: str) -> bytes:
        body: dict[str, Any] = {"model": self.model, "encoding_format": encoding}
        if inputs and isinstance(inputs[0], bytes):
            uri = "data:image/jpeg;base64,"
            body |= {"input": [uri + base64.b64encode(x).decode() for x in inputs]}
            body["modality"] = "image"
        else:
            body["input"] = inputs
        return json.dumps(body).encode()

    def http_call(self, body: bytes) -> np.ndarray:
        response = self.http.post(
            "/v1/embeddings", content=body, headers={"content-type": "application/json"}
        )
        response.raise_for_status()
        data = response.json()["data"]
        if data and isinstance(data[0]["embedding"], str):
            raw = b"".join(base64.b64decode(d["embedding"]) for d in data)
            return np.frombuffer(raw, "<f4").reshape(len(data), -1)
        return np.array([d["embedding"] for d in data], np.float32)

    def close(self) -> None:
        self.http.close()
        self.channel.close()


def wave(call: Call, requests: list[Any], pool: ThreadPoolExecutor) -> float:
    """Seconds for `requests`, sent at once from the pool's threads (one each)."""
    start = time.perf_counter()
    for _ in pool.map(call, requests):
        pass
    return time.perf_counter() - start


def throughput(
    work: dict[str, tuple[Call, list[Any]]], batch: int, waves: int, clients: int
) -> dict[str, Any]:
    """Items/s of each way of sending the same requests, measured in waves of `clients`
    concurrent requests that take turns (the first of each wave rotating), so that a busy
    neighbour on the machine slows all of them alike. Per way: the items of a wave over its
    median wave's time, and the median of its waves' speed against the first way's wave
    beside it (a wave that a neighbour's burst slowed moves neither much)."""
    seconds: dict[str, list[float]] = {name: [] for name in work}
    names = list(work)
    with ThreadPoolExecutor(clients) as pool:
        for w in range(waves):
            for name in names[w % len(names) :] + names[: w % len(names)]:
                call, requests = work[name]
                chosen = [requests[(w * clients + i) % len(requests)] for i in range(clients)]
                seconds[name].append(wave(call, chosen, pool))
    first = seconds[names[0]]
    return {
        "per_s": {name: clients * batch / float(np.median(t)) for name, t in seconds.items()},
        "vs_first": {
            name: float(np.median([a / b for a, b in zip(first, t, strict=True)]))
            for name, t in seconds.items()
        },
        "wave_seconds": seconds,
    }


def latencies(calls: dict[str, tuple[Call, Any]], requests: int) -> dict[str, dict[str, float]]:
    """One request at a time, the transports taking turns, so that they share the noise."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(requests):
        for name, (call, request) in calls.items():
            start = time.perf_counter()
            call(request)
            times[name].append((time.perf_counter() - start) * 1000)
    return {
        name: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))}
        for name, t in times.items()
    }


def measure(lens: Transports, args: argparse.Namespace) -> dict[str, Any]:
    count = args.clients * args.batch  # distinct inputs per wave
    images, texts = jpeg_inputs(count), text_inputs(count)
    image_chunks, text_chunks = batches(images, args.batch), batches(texts, args.batch)
    image_work = {
        "grpc": (lens.grpc_call, [lens.grpc_request(c) for c in image_chunks]),
        "http_float": (lens.http_call, [lens.http_request(c, "float") for c in image_chunks]),
    }
    text_work = {
        "grpc": (lens.grpc_call, [lens.grpc_request(c) for c in text_chunks]),
        "http_float": (lens.http_call, [lens.http_request(c, "float") for c in text_chunks]),
        "http_base64": (lens.http_call, [lens.http_request(c, "base64") for c in text_chunks]),
    }
    # The same vectors whichever way (and every way warmed up).
    for work in (image_work, text_work):
        first = [call(requests[0]) for call, requests in work.values()]
        for other in first[1:]:
            np.testing.assert_allclose(other, first[0], atol=1e-5)
    image_rates = throughput(image_work, args.batch, args.waves, args.clients)
    text_rates = throughput(text_work, args.batch, args.waves, args.clients)
    text = texts[0]
    single = latencies(
        {
            "grpc": (lens.grpc_call, lens.grpc_request([text])),
            "http_float": (lens.http_call, lens.http_request([text], "float")),
            "http_base64": (lens.http_call, lens.http_request([text], "base64")),
        },
        args.latency_requests,
    )
    images_per_s, texts_per_s = image_rates["per_s"], text_rates["per_s"]
    figures = {
        "grpc_images_per_s": images_per_s["grpc"],
        "http_images_per_s": images_per_s["http_float"],
        "grpc_texts_per_s": texts_per_s["grpc"],
        "http_float_texts_per_s": texts_per_s["http_float"],
        "http_base64_texts_per_s": texts_per_s["http_base64"],
        "images_per_s_http_vs_grpc": image_rates["vs_first"]["http_float"],
        "texts_per_s_http_base64_vs_grpc": text_rates["vs_first"]["http_base64"],
        "texts_per_s_http_float_vs_grpc": text_rates["vs_first"]["http_float"],
        "single_text_p50_ms_http_minus_grpc": single["http_float"]["p50_ms"]
        - single["grpc"]["p50_ms"],
        "single_text_p50_ms_http_base64_minus_grpc": single["http_base64"]["p50_ms"]
        - single["grpc"]["p50_ms"],
    }
    return {
        "figures": figures,
        "latency_single_text": single,
        "images": image_rates,
        "texts": text_rates,
    }


def main() -> None:
    parser = paired_parser(__doc__, 8, "turns of each way of sending")
    parser.add_argument("--latency-requests", type=int, default=100)
    parser.add_argument(
        "--profile", type=Path, default=None, help="the server's sampled stacks (py-spy)"
    )
    args = parser.parse_args()
    if args.tiny:
        args.repo = Path(tempfile.mkdtemp(prefix="bench-http-"))
        args.model = "tiny-clip"
        model_repository(args.repo, str(TINY), args.model)
        args.waves, args.latency_requests, args.batch, args.clients = 2, 5, 4, 2

    served = serve(args.repo, "--default-model", args.model, "--max-batch-size", str(args.batch))
    lens = Transports(served, args.model, args.clients)
    try:
        with sampled(served.process.pid, args.profile):
            report = measure(lens, args)
    finally:
        lens.close()
        served.process.terminate()
        served.process.wait(30)

    figures = report["figures"]
    report = {
        "benchmark": "http",
        "machine": machine(httpx=httpx.__version__, grpc=grpc.__version__),
        "model": args.model,
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("repo", "out")},
        "targets": {
            name: {"target": t, "met": _met(figures[name], t, up)} for name, t, up in TARGETS
        },
        **report,
    }
    if args.profile and args.profile.exists():
        report["hot_frames"] = hot_frames(args.profile)
    _print(figures, report["latency_single_text"])
    save(report, f"http-{args.model}", args.out)


def _met(value: float, target: float, higher: bool) -> bool:
    return value >= target if higher else value <= target


def _print(figures: dict[str, float], single: dict[str, dict[str, float]]) -> None:
    print(f"{'(medians of paired waves)':34}{'gRPC':>10}{'HTTP':>10}{'ratio':>8}{'target':>8}")
    rows = (
        ("images/s (HTTP: data URIs, float)", "images", "http_images_per_s", "95%"),
        ("texts/s, HTTP base64", "texts", "http_base64_texts_per_s", "90%"),
        ("texts/s, HTTP float", "texts", "http_float_texts_per_s", ""),
    )
    for label, kind, http_key, want in rows:
        way = http_key.removesuffix(f"_{kind}_per_s")  # http, http_base64, http_float
        ratio, grpc_rate = figures[f"{kind}_per_s_{way}_vs_grpc"], figures[f"grpc_{kind}_per_s"]
        print(f"{label:34}{grpc_rate:10.1f}{figures[http_key]:10.1f}{ratio:8.1%}{want:>8}")
    for name in ("http_float", "http_base64"):
        grpc_ms, http_ms = single["grpc"]["p50_ms"], single[name]["p50_ms"]
        label = "single text p50 ms, " + name.replace("_", " ")
        want = " ≤ +2 ms" if name == "http_float" else ""
        print(f"{label:34}{grpc_ms:10.2f}{http_ms:10.2f}{http_ms - grpc_ms:+7.2f} ms{want}")


if __name__ == "__main__":
    main()
