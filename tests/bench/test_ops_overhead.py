"""bench/ops_overhead.py, which measures metrics, keys, limits and logs against all off, runs
end to end on the tiny model and reports all four comparisons."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LENS, ROOT


@pytest.mark.slow
def test_ops_overhead_benchmark_runs(tmp_path: Path):
    out = tmp_path / "ops.json"
    result = subprocess.run(
        [str(LENS.with_name("python")), "ops_overhead.py", "--tiny", "--out", str(out)],
        cwd=ROOT / "bench",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = report["figures"]
    pairs = ("images_grpc", "images_http", "texts_grpc", "texts_http")
    assert set(report["targets"]) == {f"{p}_on_vs_off" for p in pairs}
    for pair in pairs:
        assert figures[f"{pair}_per_s_off"] > 0 and figures[f"{pair}_per_s_on"] > 0
        assert figures[f"{pair}_on_vs_off"] > 0
        assert len(report[pair]["wave_seconds"]["on"]) == 2  # --tiny: 2 waves a side
    # The "on" server metered the benchmark's calls on both transports.
    assert report["on_requests_counted"]["grpc"] >= 2 * 2 * 2
    assert report["on_requests_counted"]["http"] >= 2 * 2 * 2
