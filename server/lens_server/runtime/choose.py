"""Which runtime runs a tower, chosen per version by a warm-up measurement.

The candidates, where the machine has them:
- `onnx`: the ONNX graph in ONNX Runtime on the best execution providers present. Always a
  candidate, and the fp32 reference the others are checked against.
- `program`: the version's fp16 `torch.export` program on a CUDA GPU, through CUDA graphs
  (`server.runtime.program`), when the version has one and torch sees a GPU.

With one candidate (a machine without a GPU) nothing is measured and ONNX Runtime serves, as
it always has. With several, each runs the same probe batch of `max_batch_size` rows a few
times; a candidate whose outputs fall below `PROGRAM_PARITY` cosine similarity to the ONNX
graph's is dropped, and the fastest of the rest serves. `RuntimeConfig.engine` forces one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lens_server.config import RuntimeConfig
from lens_server.errors import FailedPrecondition
from lens_server.gpu import cuda_available, torch_installed
from lens_server.runtime.base import DeviceTower, Tower
from lens_server.runtime.onnx import OnnxTower
from lens_server.vectors import cosine_rows

log = logging.getLogger(__name__)

# Lowest cosine similarity to the fp32 ONNX graph a reduced-precision runtime must keep.
PROGRAM_PARITY = 0.999
# Timed runs of the probe batch per candidate: at least MIN_RUNS, and up to MIN_SECONDS.
MIN_RUNS, MIN_SECONDS = 3, 0.5


@dataclass(frozen=True)
class Trial:
    """What a candidate runtime did on the probe batch."""

    runtime: str  # "onnx" or "program"
    providers: tuple[str, ...] = ()
    # Rows per second on the probe batch; 0 when it was not measured.
    items_per_second: float = 0.0
    # Lowest cosine similarity of its rows to the ONNX graph's; 1 for the graph itself.
    min_cosine: float = 1.0
    # Why it could not serve; "" when it could.
    error: str = ""

    def describe(self) -> str:
        if self.error:
            return f"{self.runtime}: {self.error}"
        return f"{self.runtime} {self.items_per_second:.0f}/s, cosine {self.min_cosine:.6f}"


@dataclass(frozen=True)
class Choice:
    # Every runtime chosen from also runs on device inputs (device preprocessing).
    tower: DeviceTower
    runtime: str
    trials: tuple[Trial, ...] = field(default=())


def open_tower(
    onnx_file: Path,
    program_file: Path | None,
    dim: int,
    config: RuntimeConfig,
    max_batch: int,
    probe: Callable[[int], np.ndarray],
) -> Choice:
    """Opens the tower on the runtime `config.engine` asks for (`auto`: the fastest that keeps
    parity). `probe(n)` makes a batch of n valid inputs for the tower.

    Blocking (loads weights, may run the model for seconds): call it off the event loop.
    """
    onnx = OnnxTower(onnx_file, config, dim)
    reference = Trial("onnx", tuple(onnx.providers))
    if config.engine == "onnx":
        return Choice(onnx, "onnx", (reference,))
    device = _program_device(config.engine)
    if program_file is None:
        if config.engine == "program":
            raise FailedPrecondition(
                f"{onnx_file.parent}: the version has no fp16 program for this tower "
                "(export it again with lens, or serve it with --runtime onnx)"
            )
        return Choice(onnx, "onnx", (reference,))
    if device is None:  # auto without a GPU: the CPU path, unmeasured
        return Choice(onnx, "onnx", (reference,))
    return _measure(onnx, program_file, dim, device, config.engine, max_batch, probe)


def _program_device(engine: str) -> str | None:
    """The device a program would run on: a CUDA GPU, or the CPU when `engine` forces it."""
    if cuda_available():
        return "cuda"
    if engine != "program":
        return None
    if not torch_installed():
        raise FailedPrecondition("--runtime program needs torch installed")
    return "cpu"


def _measure(
    onnx: OnnxTower,
    program_file: Path,
    dim: int,
    device: str,
    engine: str,
    max_batch: int,
    probe: Callable[[int], np.ndarray],
) -> Choice:
    from lens_server.runtime.program import ProgramTower

    x = probe(max_batch)
    timed = engine == "auto"  # a forced program is only checked for parity
    # ONNX Runtime without a GPU provider (the CPU build beside a GPU) is not timed against a
    # program on the GPU: it only gives the parity reference, once.
    expected, onnx_speed = _run(onnx, x, timed and onnx.device == device)
    trials = [Trial("onnx", tuple(onnx.providers), onnx_speed)]
    program: ProgramTower | None = None
    try:
        program = ProgramTower(program_file, dim, device, max_batch)
        out, speed = _run(program, x, timed)
        cosine = float(cosine_rows(expected, out).min())
        error = "" if cosine >= PROGRAM_PARITY else f"cosine {cosine:.6f} < {PROGRAM_PARITY}"
        trials.append(Trial("program", tuple(program.providers), speed, cosine, error))
    except Exception as e:  # whatever stops the candidate, ONNX Runtime still serves
        log.exception("%s: the fp16 program failed", program_file)
        trials.append(Trial("program", error=f"{type(e).__name__}: {e}"))
    log.info("%s: %s", program_file.parent, "; ".join(t.describe() for t in trials))
    if trials[1].error:
        if engine == "program":
            raise FailedPrecondition(
                f"{program_file}: the fp16 program cannot serve: {trials[1].error}"
            )
        return Choice(onnx, "onnx", tuple(trials))
    if program is not None and (engine == "program" or trials[1].items_per_second > onnx_speed):
        return Choice(program, "program", tuple(trials))
    return Choice(onnx, "onnx", tuple(trials))


def _run(tower: Tower, x: np.ndarray, timed: bool) -> tuple[np.ndarray, float]:
    """The tower's output on `x` and, when `timed`, its rows per second (after warm-up)."""
    out = tower(x)
    if not timed:
        return out, 0.0
    tower(x)  # the first run of a shape pays for set-up (allocators, CUDA graph capture)
    runs, start = 0, time.perf_counter()
    while runs < MIN_RUNS or time.perf_counter() - start < MIN_SECONDS:
        tower(x)
        runs += 1
    return out, runs * len(x) / (time.perf_counter() - start)
