"""What operating lens costs: metrics, API keys, limits and request logs on, against all off.

Two `lens serve` processes over the same repository and model version, in one run:
- "off": `--no-metrics`, no API keys, no limits, request logs off (`--log-level warning`);
- "on": Prometheus metrics recorded (the default), an API key file (every call carries a key
  with the `embed` scope), per-client limits on all three counts (requests/s, inputs/s and
  requests in flight, set far above what the benchmark sends, so none is refused but each is
  counted), and one JSON request log line per call (`--log-format json --log-level info`).
Measures images/s and texts/s, `--clients` requests at once of `--batch` inputs each, through
gRPC `Embed` and HTTP `POST /v1/embeddings` (base64 vectors back; images as data URIs), each
transport and modality on its own: the two servers take turns wave by wave (bench/http_grpc.py's
`throughput`), so a neighbour's load on a shared machine falls on both alike, and each ratio is
the median of the "on" waves' speed against the "off" wave beside it. Requests are built
before the clock starts; every response is decoded to a float32 matrix inside it. Prints the
ratios beside the target (≥ 97% each) and writes JSON to bench/results/ops_overhead.json,
where each model keeps its latest run (--out: a file of this run alone).

    python bench/ops_overhead.py --repo models --model clip-vit-b-32 --waves 12
    python bench/ops_overhead.py --repo models --model tiny-clip --waves 16 --repeat 4
    python bench/ops_overhead.py --tiny                 # the tiny test model, small sizes (a test)
    python bench/ops_overhead.py --tiny --profile DIR   # py-spy stacks of both servers in DIR
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from gpu import TINY, model_repository
from harness import RESULTS, Served, hot_frames, machine, paired_parser, sampled, save, serve
from http_grpc import Call, Transports, throughput
from serve import batches, jpeg_inputs, text_inputs

TARGET = 0.97
SIDES = ("off", "on")
# (modality, transport): the four throughputs compared, each "on" against "off".
PAIRS = (("images", "grpc"), ("images", "http"), ("texts", "grpc"), ("texts", "http"))


def start(repo: Path, model: str, batch: int, folder: Path) -> tuple[dict[str, Served], str]:
    """The "off" and "on" servers (same model, same batching) and the key "on" wants."""
    key = "bench-" + secrets.token_hex(16)
    keys = folder / "keys.txt"
    keys.write_text(f"{key} embed\n")
    common = ("--default-model", model, "--max-batch-size", str(batch))
    off = serve(repo, *common, "--no-metrics")
    try:
        on = serve(
            repo,
            *common,
            "--api-keys",
            str(keys),
            # Limits that count every call and never refuse one.
            "--rate-limit-rps",
            "1000000",
            "--rate-limit-inputs",
            "100000000",
            "--max-in-flight-per-client",
            "100000",
            "--log-format",
            "json",
            "--log-level",
            "info",
        )
    except BaseException:
        stop(off)
        raise
    return {"off": off, "on": on}, key


def check_sides(servers: dict[str, Served], key: str) -> None:
    """That "on" has what it is said to (a key required, metrics served) and "off" not."""
    body = {"model": "", "input": ["a"]}
    with httpx.Client(timeout=60) as http:
        keyless = http.post(f"{servers['on'].http}/v1/embeddings", json=body)
        assert keyless.status_code == 401, f"'on' answered {keyless.status_code} with no key"
        assert http.get(f"{servers['on'].http}/metrics").status_code == 200
        assert http.get(f"{servers['off'].http}/metrics").status_code == 404


def requests_counted(served: Served) -> dict[str, float]:
    """lens_requests_total by transport, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{served.http}/metrics", timeout=60).text
    counted: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "lens_requests_total":
                transport = sample.labels["transport"]
                counted[transport] = counted.get(transport, 0.0) + sample.value
    return counted


def stop(served: Served) -> None:
    served.process.terminate()
    served.process.wait(60)


def measure(clients: dict[str, Transports], args: argparse.Namespace) -> dict[str, Any]:
    """The four throughput comparisons, each side's rate and the ratios (on / off)."""
    count = args.clients * args.batch  # distinct inputs per wave
    chunks = {
        "images": batches(jpeg_inputs(count), args.batch),
        "texts": batches(text_inputs(count), args.batch),
    }
    results: dict[str, Any] = {}
    for modality, transport in PAIRS:
        work = {}
        for side in SIDES:
            lens = clients[side]
            if transport == "grpc":
                work[side] = (lens.grpc_call, [lens.grpc_request(c) for c in chunks[modality]])
            else:
                requests = [lens.http_request(c, "base64") for c in chunks[modality]]
                work[side] = (lens.http_call, requests)
        # The same vectors from both servers (and both warmed up).
        off_call, off_requests = work["off"]
        on_call, on_requests = work["on"]
        np.testing.assert_allclose(on_call(on_requests[0]), off_call(off_requests[0]), atol=1e-5)
        if args.repeat > 1:
            work = {
                side: _in_turn(call, requests, args.repeat)
                for side, (call, requests) in work.items()
            }
        results[f"{modality}_{transport}"] = throughput(
            work, args.batch * args.repeat, args.waves, args.clients
        )
    figures: dict[str, float] = {}
    for name, rates in results.items():
        figures[f"{name}_per_s_off"] = rates["per_s"]["off"]
        figures[f"{name}_per_s_on"] = rates["per_s"]["on"]
        figures[f"{name}_on_vs_off"] = rates["vs_first"]["on"]
    return {"figures": figures, **results}


def _in_turn(call: Call, requests: list[Any], repeat: int) -> tuple[Call, list[Any]]:
    """A call that sends `repeat` of the requests one after the other (a client's share of a
    longer wave), and the groups to send."""
    groups = [
        [requests[(g + i) % len(requests)] for i in range(repeat)] for g in range(len(requests))
    ]
    return (lambda group: [call(r) for r in group][-1]), groups


def main() -> None:
    parser = paired_parser(__doc__, 8, "turns of each server, per pair")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="requests each client sends one after another per wave (longer waves, fast models)",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="folder for both servers' stacks (py-spy)"
    )
    args = parser.parse_args()
    if args.tiny:
        args.repo = Path(tempfile.mkdtemp(prefix="bench-ops-"))
        args.model = "tiny-clip"
        model_repository(args.repo, str(TINY), args.model)
        args.waves, args.batch, args.clients = 2, 4, 2

    folder = Path(tempfile.mkdtemp(prefix="bench-ops-keys-"))
    servers, key = start(args.repo, args.model, args.batch, folder)
    lens = {
        "off": Transports(servers["off"], args.model, args.clients),
        "on": Transports(servers["on"], args.model, args.clients, api_key=key),
    }
    stacks = {}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        stacks = {side: args.profile / f"{side}.txt" for side in SIDES}
    try:
        with ExitStack() as profiling:
            for side, path in stacks.items():
                profiling.enter_context(sampled(servers[side].process.pid, path))
            check_sides(servers, key)
            report = measure(lens, args)
        report["on_requests_counted"] = requests_counted(servers["on"])
    finally:
        for side in SIDES:
            lens[side].close()
            stop(servers[side])

    figures = report["figures"]
    ratios = {f"{m}_{t}_on_vs_off": figures[f"{m}_{t}_on_vs_off"] for m, t in PAIRS}
    report = {
        "benchmark": "ops_overhead",
        "machine": machine(httpx=httpx.__version__, grpc=grpc.__version__),
        "model": args.model,
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("repo", "out")},
        "on": "metrics, API key (embed), limits on requests/s, inputs/s and in flight, JSON logs",
        "off": "--no-metrics, no keys, no limits, no request logs",
        "targets": {name: {"target": TARGET, "met": r >= TARGET} for name, r in ratios.items()},
        **report,
    }
    for side, path in stacks.items():
        if path.exists():
            report[f"hot_frames_{side}"] = hot_frames(path)
    _print(figures)
    if args.out or args.tiny:
        save(report, "ops_overhead", args.out)
    else:
        save_run(report, RESULTS / "ops_overhead.json")


def save_run(report: dict[str, Any], path: Path) -> None:
    """Writes `report` into `path` under its model, beside the latest run of other models
    (so one file holds the tiny model's and ViT-B-32's figures)."""
    runs = json.loads(path.read_text())["runs"] if path.exists() else {}
    runs[report["model"]] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), **report}
    save({"benchmark": "ops_overhead", "runs": runs}, "ops_overhead", path)


def _print(figures: dict[str, float]) -> None:
    print(f"{'(medians of paired waves)':26}{'off':>10}{'on':>10}{'on/off':>9}{'target':>8}")
    for modality, transport in PAIRS:
        name = f"{modality}_{transport}"
        label = f"{modality}/s, {'gRPC' if transport == 'grpc' else 'HTTP'}"
        off, on = figures[f"{name}_per_s_off"], figures[f"{name}_per_s_on"]
        ratio = figures[f"{name}_on_vs_off"]
        print(f"{label:26}{off:10.1f}{on:10.1f}{ratio:9.1%}{'≥ 97%':>8}")


if __name__ == "__main__":
    main()
