"""What every benchmark writes: the machine it ran on and a JSON file in bench/results/."""

from __future__ import annotations

import json
import os
import platform
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
