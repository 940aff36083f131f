"""What keeps HTTP about as fast as gRPC: no response waits out a delayed ACK, and the
benchmark that compares the two runs end to end (tiny model)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import LENS, ROOT, ServerProcess


def test_small_responses_do_not_wait_for_a_delayed_ack(server: ServerProcess):
    """A response written as headers, then body, on a socket with Nagle's algorithm on waits
    for the client's delayed ACK: 40 ms at least on Linux. Well under that, every time."""
    with httpx.Client(base_url=server.http, timeout=10) as http:
        http.get("/health/live")
        times = []
        for _ in range(20):
            start = time.perf_counter()
            assert http.get("/health/live").status_code == 200
            times.append(time.perf_counter() - start)
    assert float(np.median(times)) < 0.020, f"median {np.median(times) * 1000:.1f} ms"


@pytest.mark.slow
def test_http_benchmark_runs(tmp_path: Path):
    """bench/http_grpc.py, which measures HTTP against gRPC, runs end to end (tiny model)."""
    out = tmp_path / "http.json"
    result = subprocess.run(
        [str(LENS.with_name("python")), "http_grpc.py", "--tiny", "--out", str(out)],
        cwd=ROOT / "bench",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["targets"]) <= set(report["figures"])
    rates = [v for k, v in report["figures"].items() if k.endswith("_per_s")]
    assert len(rates) == 5 and all(r > 0 for r in rates)
    assert set(report["latency_single_text"]) == {"grpc", "http_float", "http_base64"}
