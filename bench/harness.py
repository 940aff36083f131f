"""What the benchmarks share: a server to measure, the machine, a JSON file in bench/results/."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Served:
    """A `lens serve` process and where it listens: gRPC `address` (HOST:PORT) and the HTTP
    base URL (`http://HOST:PORT`; "" when started with --no-http)."""

    process: subprocess.Popen[str]
    address: str
    http: str


def start_server(repo: Path, *options: str) -> tuple[subprocess.Popen[str], str]:
    """`lens serve` on a free port, with an empty collections folder of its own; returns the
    process and the address it listens on."""
    served = serve(repo, *options)
    return served.process, served.address


def serve(repo: Path, *options: str) -> Served:
    """`lens serve` on free gRPC and HTTP ports (`options` may set others), with an empty
    collections folder of its own."""
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
            "--http-port",
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
    said: deque[str] = deque(maxlen=200)
    http = ""
    for line in process.stdout:
        said.append(line)
        if match := re.search(r"HTTP/JSON API on (http://\S+)", line):
            http = match.group(1)  # said before the gRPC line
        if match := re.search(r"lens serving .* on (\S+:\d+)", line):
            # Keep reading what it says, so that a full pipe never stalls it.
            threading.Thread(target=deque, args=(process.stdout, 0), daemon=True).start()
            return Served(process, match.group(1), http)
    raise RuntimeError(f"server did not start (exit {process.wait()}):\n{''.join(said)}")


@contextmanager
def sampled(pid: int, out: Path | None) -> Iterator[None]:
    """Samples the Python stacks of process `pid` with py-spy, where it is installed, while the
    block runs; writes them to `out` as collapsed stacks (`frame;frame;... count` a line)."""
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if out is None or spy is None:
        yield
        return
    command = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
    sampler = subprocess.Popen(
        [*command, "--nonblocking", "--threads", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
        _, error = sampler.communicate(timeout=60)
        if not out.exists():
            print(f"py-spy wrote no profile: {error.strip()[-500:]}")


def hot_frames(stacks: Path, top: int = 15) -> list[tuple[str, float]]:
    """The frames most often on top of the sampled stacks (idle threads left out), with the
    share of busy samples each one holds."""
    counts: Counter[str] = Counter()
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frame = stack.rsplit(";", 1)[-1]
        if not _idle(frame):
            counts[frame] += int(count)
    busy = sum(counts.values()) or 1
    return [(frame, n / busy) for frame, n in counts.most_common(top)]


def _idle(frame: str) -> bool:
    """Threads parked in a wait (thread pools, the gRPC poller, queues) rather than working."""
    return any(word in frame for word in ("wait (threading", "_worker (concurrent", "select ("))


def paired_parser(doc: str | None, waves: int, waves_help: str) -> argparse.ArgumentParser:
    """The options every paired-wave benchmark takes (bench/http_grpc.py, kserve.py,
    ops_overhead.py): the model, request size, concurrency and the number of waves."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("models"))
    parser.add_argument("--model", default="clip-vit-b-32")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model, small sizes")
    parser.add_argument("--batch", type=int, default=16, help="inputs per request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent requests")
    parser.add_argument("--waves", type=int, default=waves, help=waves_help)
    parser.add_argument("--out", type=Path, default=None)
    return parser
