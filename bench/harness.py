"""What the benchmarks share: a server to measure, the machine, a JSON file in bench/results/."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine(**versions: str) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        **versions,
    }


def save(report: dict[str, Any], stem: str, out: Path | None = None) -> Path:
    """Writes `report` (dated now) to `out` or bench/results/<stem>-<UTC time>.json."""
    now = datetime.now(UTC)
    report = {"date": now.isoformat(timespec="seconds"), **report}
    path = out or RESULTS / f"{stem}-{now:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def start_server(repo: Path, *options: str) -> tuple[subprocess.Popen[str], str]:
    """`lens serve` on a free port, with an empty collections folder of its own; returns the
    process and the address it listens on."""
    lens = Path(sys.executable).with_name("lens")
    collections = tempfile.mkdtemp(prefix="bench-collections-")
    process = subprocess.Popen(
        [
            str(lens),
            "serve",
            "--repo",
            str(repo),
            "--collections",
            collections,
            "--port",
            "0",
            "--log-level",
            "warning",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(r"lens serving .* on (\S+:\d+)", line):
            return process, match.group(1)
    raise RuntimeError("server did not start")
