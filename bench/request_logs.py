"""What request logs cost, against what a call on the tiny model costs.

1. In process: microseconds per request line (`lens_server.logs.request`, the function both
   front doors call once per request), text and JSON, written through the server's own log
   set-up to a pipe another thread drains, as a server's stderr is read by whatever runs it.
2. End to end: Embed calls of one text on the tiny model, one request at a time, through
   gRPC and through HTTP `POST /v1/embeddings`, to a server writing a JSON line per request
   (`--log-format json --log-level info`) and to the same server writing none
   (`--log-level warning`). Both answer with the request id; only the lines differ. The two
   servers take turns wave by wave, so a neighbour's load on a shared machine falls on both
   alike. Per call: the server process's CPU time (all its threads, read through
   clock_getcpuclockid), which a loaded machine moves far less than the wall clock, and
   calls/s; each ratio is the median of paired waves.
Prints each line's cost as a share of a call (target: under 2%), the extra server CPU per
call that logging takes, and the calls/s ratio, and writes JSON to bench/results/. On a
shared, loaded machine the end-to-end ratios move by more than a line costs (two servers of
the same code have differed by a quarter in server CPU a call on the shared 2-core machine),
so there the in-process cost against the call's server CPU is the figure to read.

    python bench/request_logs.py
    python bench/request_logs.py --waves 4 --calls 50     # shorter
"""

from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from gpu import TINY, model_repository
from harness import Served, machine, save, serve
from lens.v1 import inference_pb2, inference_pb2_grpc

from lens_server import logs
from lens_server.metrics import Call

TARGET = 0.02  # a request line costs under 2% of a tiny-model Embed call
SIDES = ("quiet", "logged")


def line_cost(format: str, lines: int) -> float:
    """Microseconds per request line in `format`, written to a drained pipe."""
    read, write = os.pipe()
    drain = threading.Thread(target=_drain, args=(read,), daemon=True)
    drain.start()
    stream = os.fdopen(write, "w", buffering=1)
    logs.setup("info", format, stream)
    call = Call(request_id=logs.request_id(None), model="tiny", version=1, inputs=1)
    best = float("inf")
    for _ in range(5):  # the fastest of five rounds: the cost, without a neighbour's bursts
        started = time.perf_counter()
        for _ in range(lines):
            logs.request(call, "grpc", "/lens.v1.Inference/Embed", "OK", 0.0012, "127.0.0.1")
        best = min(best, (time.perf_counter() - started) / lines)
    logs.setup("warning", "text")  # the pipe is closed next: nothing more is written to it
    stream.close()
    drain.join(10)
    return best * 1e6


def _drain(fd: int) -> None:
    with os.fdopen(fd, "rb") as pipe:
        while pipe.read(1 << 16):
            pass


class Client:
    """One text embedded per call, through each transport of one server."""

    def __init__(self, served: Served, model: str) -> None:
        self.channel = grpc.insecure_channel(served.address)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.http = httpx.Client(base_url=served.http, timeout=60)
        self.grpc_request = inference_pb2.EmbedRequest(inputs=[inference_pb2.Input(text="a cat")])
        self.http_body = {"model": model, "input": "a cat", "encoding_format": "base64"}

    def grpc_call(self) -> None:
        self.stub.Embed(self.grpc_request, timeout=60)

    def http_call(self) -> None:
        response = self.http.post("/v1/embeddings", json=self.http_body)
        response.raise_for_status()

    def close(self) -> None:
        self.channel.close()
        self.http.close()


def cpu_clock(pid: int) -> int:
    """The clock of process `pid`'s CPU time, all threads (`time.clock_gettime` reads it)."""
    clock = ctypes.c_int()
    if ctypes.CDLL(None, use_errno=True).clock_getcpuclockid(pid, ctypes.byref(clock)):
        raise OSError(ctypes.get_errno(), f"no CPU clock for process {pid}")
    return clock.value


def calls_per_s(
    clients: dict[str, Client], clocks: dict[str, int], transport: str, waves: int, calls: int
) -> dict:
    """Per side: calls/s (its median wave) and server CPU microseconds per call (its median
    wave); the median ratios logged/quiet of paired waves. The sides take turns, the first
    of each pair alternating."""
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}
    for w in range(waves):
        for side in SIDES[w % 2 :] + SIDES[: w % 2]:
            call = getattr(clients[side], f"{transport}_call")
            started, used = time.perf_counter(), time.clock_gettime(clocks[side])
            for _ in range(calls):
                call()
            seconds[side].append(time.perf_counter() - started)
            cpu[side].append((time.clock_gettime(clocks[side]) - used) / calls * 1e6)

    def paired(values: dict[str, list[float]]) -> float:
        pairs = zip(values["logged"], values["quiet"], strict=True)
        return float(np.median([logged / quiet for logged, quiet in pairs]))

    return {
        "per_s": {side: calls / float(np.median(t)) for side, t in seconds.items()},
        "logged_vs_quiet": 1 / paired(seconds),
        "server_cpu_us_per_call": {side: float(np.median(c)) for side, c in cpu.items()},
        "server_cpu_logged_vs_quiet": paired(cpu),
        "wave_seconds": seconds,
        "wave_cpu_us_per_call": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--waves", type=int, default=10, help="turns of each server")
    parser.add_argument("--calls", type=int, default=200, help="calls per wave")
    parser.add_argument("--lines", type=int, default=20_000, help="lines per in-process round")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    per_line = {format: line_cost(format, args.lines) for format in ("text", "json")}
    repo = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    model = "tiny-clip"
    model_repository(repo, str(TINY), model)
    # One ONNX Runtime thread: the threads of its pool spin while they wait for work, which
    # would blur the servers' CPU clocks.
    servers = {
        "quiet": serve(repo, "--threads", "1", "--log-level", "warning"),
        "logged": serve(repo, "--threads", "1", "--log-format", "json", "--log-level", "info"),
    }
    clients = {side: Client(served, model) for side, served in servers.items()}
    try:
        for client in clients.values():  # warm: first calls pay for lazy set-up
            for _ in range(20):
                client.grpc_call()
                client.http_call()
        clocks = {side: cpu_clock(served.process.pid) for side, served in servers.items()}
        results = {
            t: calls_per_s(clients, clocks, t, args.waves, args.calls) for t in ("grpc", "http")
        }
    finally:
        for side in SIDES:
            clients[side].close()
            servers[side].process.terminate()
            servers[side].process.wait(60)

    figures: dict[str, Any] = {f"{f}_line_us": round(us, 2) for f, us in per_line.items()}
    for transport, result in results.items():
        cpu_us = result["server_cpu_us_per_call"]["quiet"]
        figures[f"{transport}_call_us"] = round(1e6 / result["per_s"]["quiet"], 1)
        figures[f"{transport}_server_cpu_us"] = round(cpu_us, 1)
        figures[f"{transport}_json_line_share"] = per_line["json"] / cpu_us
        figures[f"{transport}_server_cpu_logged_vs_quiet"] = result["server_cpu_logged_vs_quiet"]
        figures[f"{transport}_logged_vs_quiet"] = result["logged_vs_quiet"]
    report = {
        "benchmark": "request_logs",
        "machine": machine(grpc=grpc.__version__, httpx=httpx.__version__),
        "model": model,
        "settings": {k: str(v) for k, v in vars(args).items() if k != "out"},
        "target": {"line_share_below": TARGET},
        "figures": figures,
        **results,
    }
    _print(figures)
    save(report, "request_logs", args.out)


def _print(figures: dict[str, Any]) -> None:
    print(f"request line: text {figures['text_line_us']} us, json {figures['json_line_us']} us")
    for t in ("grpc", "http"):
        share = figures[f"{t}_json_line_share"]
        cpu = figures[f"{t}_server_cpu_logged_vs_quiet"] - 1
        print(
            f"{t:5} Embed (1 text, tiny model): {figures[f'{t}_server_cpu_us']} us of server "
            f"CPU a call ({figures[f'{t}_call_us']} us wall); a JSON line is {share:.2%} of it "
            f"(target < {TARGET:.0%}); logging took {cpu:+.2%} server CPU a call, calls/s "
            f"{figures[f'{t}_logged_vs_quiet']:.1%} of quiet (medians of paired waves)"
        )


if __name__ == "__main__":
    main()
