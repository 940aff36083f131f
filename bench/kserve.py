"""KServe v2 against lens.v1: the same work through Triton's clients and through `Embed`, on
one server, in one run.

Measures, on one `lens serve` process, model version and set of inputs:
- images/s, `--clients` requests at once of `--batch` 640×480 JPEGs each: lens.v1 `Embed`
  against `tritonclient.grpc` `infer` (a BYTES `image` tensor, raw contents) and
  `tritonclient.http` `infer` (the binary-data extension);
- texts/s likewise (a BYTES `text` tensor);
- single-text latency, one request at a time, the ways taking turns request by request.
Requests are built before the clock starts (protobufs; InferInputs), and every answer is
decoded to a float32 matrix inside it, as a client would. The ways take turns in waves of
`--clients` concurrent requests (bench/http_grpc.py's `throughput`), so that a neighbour's
load on a shared machine falls on all of them alike. Each client thread has its own Triton
client (they are not shared between threads). Prints the figures beside the target (KServe
gRPC images/s ≥ 95% of Embed's) and writes JSON to bench/results/.

    python bench/kserve.py --repo models --model clip-vit-b-32
    python bench/kserve.py --tiny                  # the tiny test model, small sizes
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from gpu import TINY, model_repository
from harness import Served, machine, paired_parser, save, serve
from http_grpc import Call, latencies, throughput
from lens.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from serve import batches, jpeg_inputs, text_inputs

# (figure, target, higher is better)
TARGETS = (
    ("images_per_s_kserve_grpc_vs_embed", 0.95, True),
    ("texts_per_s_kserve_grpc_vs_embed", 0.90, True),
)


class Ways:
    """lens.v1 over one shared channel; Triton's clients, one per thread and transport."""

    def __init__(self, served: Served, model: str) -> None:
        self.model = model
        self.served = served
        options = [("grpc.max_receive_message_length", 256 << 20)]
        self.channel = grpc.insecure_channel(served.address, options=options)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def embed_request(self, inputs: list[bytes] | list[str]) -> inference_pb2.EmbedRequest:
        items = [
            inference_pb2.Input(image=x) if isinstance(x, bytes) else inference_pb2.Input(text=x)
            for x in inputs
        ]
        return inference_pb2.EmbedRequest(inputs=items, model=common_pb2.ModelRef(name=self.model))

    def embed_call(self, request: inference_pb2.EmbedRequest) -> np.ndarray:
        m = self.stub.Embed(request, timeout=600).embeddings
        return np.frombuffer(m.data, "<f4").reshape(m.rows, m.cols)

    def triton_inputs(self, module: Any, inputs: list[bytes] | list[str]) -> list[Any]:
        name = "image" if isinstance(inputs[0], bytes) else "text"
        tensor = module.InferInput(name, [len(inputs)], "BYTES")
        tensor.set_data_from_numpy(np.array(inputs, dtype=np.object_))
        return [tensor]

    def _client(self, kind: str) -> Any:
        client = getattr(self._local, kind, None)
        if client is None:
            if kind == "grpc":
                client = triton_grpc.InferenceServerClient(self.served.address)
            else:
                url = self.served.http.removeprefix("http://")
                client = triton_http.InferenceServerClient(url, network_timeout=600)
            setattr(self._local, kind, client)
            with self._lock:
                self._clients.append(client)
        return client

    def grpc_call(self, inputs: list[Any]) -> np.ndarray:
        result = self._client("grpc").infer(self.model, inputs, client_timeout=600)
        return result.as_numpy("embedding")

    def http_call(self, inputs: list[Any]) -> np.ndarray:
        return self._client("http").infer(self.model, inputs).as_numpy("embedding")

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.channel.close()


def measure(ways: Ways, args: argparse.Namespace) -> dict[str, Any]:
    count = args.clients * args.batch  # distinct inputs per wave
    images, texts = jpeg_inputs(count), text_inputs(count)

    def work(chunks: list[list]) -> dict[str, tuple[Call, list[Any]]]:
        return {
            "embed": (ways.embed_call, [ways.embed_request(c) for c in chunks]),
            "kserve_grpc": (ways.grpc_call, [ways.triton_inputs(triton_grpc, c) for c in chunks]),
            "kserve_http": (ways.http_call, [ways.triton_inputs(triton_http, c) for c in chunks]),
        }

    image_work = work(batches(images, args.batch))
    text_work = work(batches(texts, args.batch))
    # The same vectors whichever way (and every way warmed up).
    for each in (image_work, text_work):
        first = [call(requests[0]) for call, requests in each.values()]
        for other in first[1:]:
            np.testing.assert_allclose(other, first[0], atol=1e-5)
    image_rates = throughput(image_work, args.batch, args.waves, args.clients)
    text_rates = throughput(text_work, args.batch, args.waves, args.clients)
    single = latencies(
        {name: (call, reqs[0]) for name, (call, reqs) in work([texts[:1]]).items()},
        args.latency_requests,
    )
    images_per_s, texts_per_s = image_rates["per_s"], text_rates["per_s"]
    figures = {
        **{f"{name}_images_per_s": rate for name, rate in images_per_s.items()},
        **{f"{name}_texts_per_s": rate for name, rate in texts_per_s.items()},
        "images_per_s_kserve_grpc_vs_embed": images_per_s["kserve_grpc"] / images_per_s["embed"],
        "images_per_s_kserve_http_vs_embed": images_per_s["kserve_http"] / images_per_s["embed"],
        "texts_per_s_kserve_grpc_vs_embed": texts_per_s["kserve_grpc"] / texts_per_s["embed"],
        "texts_per_s_kserve_http_vs_embed": texts_per_s["kserve_http"] / texts_per_s["embed"],
    }
    return {
        "figures": figures,
        "latency_single_text": single,
        "images": image_rates,
        "texts": text_rates,
    }


def main() -> None:
    parser = paired_parser(__doc__, 6, "turns of each way of sending")
    parser.add_argument("--latency-requests", type=int, default=100)
    args = parser.parse_args()
    if args.tiny:
        args.repo = Path(tempfile.mkdtemp(prefix="bench-kserve-"))
        args.model = "tiny-clip"
        model_repository(args.repo, str(TINY), args.model)
        args.waves, args.latency_requests, args.batch, args.clients = 2, 5, 4, 2

    served = serve(args.repo, "--default-model", args.model, "--max-batch-size", str(args.batch))
    ways = Ways(served, args.model)
    try:
        report = measure(ways, args)
    finally:
        ways.close()
        served.process.terminate()
        served.process.wait(30)

    figures = report["figures"]
    report = {
        "benchmark": "kserve",
        "machine": machine(grpc=grpc.__version__, tritonclient=metadata.version("tritonclient")),
        "model": args.model,
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("repo", "out")},
        "targets": {
            name: {"target": t, "met": figures[name] >= t if up else figures[name] <= t}
            for name, t, up in TARGETS
        },
        **report,
    }
    _print(figures, report["latency_single_text"])
    save(report, f"kserve-{args.model}", args.out)


def _print(figures: dict[str, float], single: dict[str, dict[str, float]]) -> None:
    print(f"{'':12}{'Embed':>10}{'KServe gRPC':>13}{'ratio':>8}{'KServe HTTP':>13}{'ratio':>8}")
    for kind in ("images", "texts"):
        embed, via_grpc, via_http = (
            figures[f"{way}_{kind}_per_s"] for way in ("embed", "kserve_grpc", "kserve_http")
        )
        print(
            f"{kind + '/s':12}{embed:10.1f}{via_grpc:13.1f}{via_grpc / embed:8.1%}"
            f"{via_http:13.1f}{via_http / embed:8.1%}"
        )
    p50 = {name: v["p50_ms"] for name, v in single.items()}
    print(
        f"{'text p50 ms':12}{p50['embed']:10.2f}{p50['kserve_grpc']:13.2f}"
        f"{p50['kserve_grpc'] - p50['embed']:+8.2f}{p50['kserve_http']:13.2f}"
        f"{p50['kserve_http'] - p50['embed']:+8.2f}"
    )


if __name__ == "__main__":
    main()
