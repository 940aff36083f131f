"""The dynamic batcher: inputs of concurrent requests run through a tower together.

One batcher per loaded tower owns a FIFO queue of single inputs. When the tower is idle, what
waits runs at once: a lone request pays no batching delay. While a batch runs, the next one
gathers until `max_batch_size` inputs wait or the oldest has waited `max_queue_delay_ms`,
whichever is first, and while every instance is busy inputs keep gathering, so batches grow
with load (the continuous batching of Text Embeddings Inference, bounded as Triton's dynamic
batcher is). Inputs whose
request was cancelled or whose deadline has passed are dropped before they reach the tower.

Every submitted input is resolved: with its output row, with the tower's error (sent to every
input of the failing batch, or to the rows a `Partial` result names), with DeadlineExceeded,
or with Unavailable when the batcher closes. A request that would overflow the queue is
refused whole with Overloaded.

Background work (a collection re-embedding its items after a deploy) waits in a queue of its
own and runs only while no request's input waits, in batches of at most a quarter of
`max_batch_size`: a request waits for at most one such small batch (on a CPU, a batch's time
grows with its size), and never shares its batch with background inputs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lens_server.config import BatchConfig
from lens_server.errors import (
    DeadlineExceeded,
    LensError,
    ModelError,
    Overloaded,
    Unavailable,
    status_of,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Partial:
    """A batch's outputs where some rows failed on their own (a corrupt image among good
    ones): those rows get their error, the others their output row."""

    out: np.ndarray  # (N, dim)
    errors: dict[int, LensError]


RunFn = Callable[[Any], np.ndarray | Partial]


@dataclass(eq=False)
class _Item:
    x: Any
    future: asyncio.Future[np.ndarray]
    deadline: float | None  # time.monotonic() seconds
    enqueued: float = field(default_factory=time.monotonic)


# Sizes of the latest batches a batcher keeps in its stats.
SIZES_KEPT = 1024


@dataclass
class BatchStats:
    """What one tower's batcher ran: batches and inputs run through the tower, inputs dropped
    before it (cancelled or past their deadline), and the sizes of the latest `SIZES_KEPT`
    batches, oldest first (which requests shared a batch shows there)."""

    batches: int = 0
    inputs: int = 0
    dropped: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=SIZES_KEPT))


class BatchObserver(Protocol):
    """Told what a batcher does, as it does it (the server's metrics); a batcher without one
    works the same. Called on the event loop."""

    def queued(self, depth: int) -> None:
        """Inputs now waiting (both queues)."""

    def waited(self, seconds: Sequence[float]) -> None:
        """How long each input of a batch about to run waited in the queue."""

    def ran(self, size: int, seconds: float) -> None:
        """A batch of `size` inputs went through the tower in `seconds`."""

    def failed(self, reason: str, count: int) -> None:
        """`count` inputs got an error: `reason` is its gRPC status name (CANCELLED for those
        whose request went away before they ran)."""


class _Unobserved:
    def queued(self, depth: int) -> None:
        pass

    def waited(self, seconds: Sequence[float]) -> None:
        pass

    def ran(self, size: int, seconds: float) -> None:
        pass

    def failed(self, reason: str, count: int) -> None:
        pass


def _reason(error: BaseException) -> str:
    return status_of(error)[0].grpc


class Batcher:
    """Batches single inputs of one tower across requests.

    `run` takes `collate(inputs)` (by default the inputs stacked: (N, ...)) and returns
    (N, dim), or a `Partial`; it runs on this batcher's own worker threads, at most
    `config.instances` batches at once.
    """

    def __init__(
        self,
        name: str,
        run: RunFn,
        config: BatchConfig,
        collate: Callable[[list[Any]], Any] = np.stack,
        observer: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.stats = BatchStats()
        self._observer: BatchObserver = observer or _Unobserved()
        self._run_fn = run
        self._collate = collate
        self._queue: deque[_Item] = deque()
        self._background: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(config.instances)
        self._executor = ThreadPoolExecutor(config.instances, thread_name_prefix=f"run-{name}")
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._background)

    async def submit(
        self, rows: list[Any], deadline: float | None = None, background: bool = False
    ) -> np.ndarray:
        """Runs `rows` (each one input) through the tower; returns (len(rows), dim) in order.

        `deadline` is a `time.monotonic()` time after which the inputs are not worth running.
        `background` inputs run only in room that requests leave in batches.
        """
        if self._closed:
            raise Unavailable(f"{self.name} is shutting down")
        queue = self._background if background else self._queue
        limit = self.config.max_queue_size
        if len(queue) + len(rows) > limit:
            self._observer.failed("RESOURCE_EXHAUSTED", len(rows))
            raise Overloaded(
                f"{self.name}: queue full ({len(queue)} of {limit} inputs waiting, "
                f"this request adds {len(rows)}); retry later"
            )
        loop = asyncio.get_running_loop()
        items = [_Item(row, loop.create_future(), deadline) for row in rows]
        queue.extend(items)
        self._observer.queued(self.queued)
        self._arrived.set()
        try:
            outputs = await asyncio.gather(*(item.future for item in items))
        finally:
            for item in items:  # a cancelled request leaves nothing behind to be run
                item.future.cancel()
        return np.stack(outputs)

    async def close(self) -> None:
        """Stops taking inputs, lets those queued run, then stops the worker threads."""
        self._closed = True
        self._arrived.set()
        await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        try:
            while True:
                if not self.queued:
                    if self._closed:
                        return
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                await self._gather_batch()
                await self._slots.acquire()
                batch = self._take()
                if not batch:
                    self._slots.release()
                    continue
                task = asyncio.get_running_loop().create_task(self._run(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        except asyncio.CancelledError:
            self._fail_all(Unavailable(f"{self.name} is shutting down"))
            raise
        except Exception as e:  # a bug here must not leave requests hanging
            log.exception("batcher %s stopped", self.name)
            self._fail_all(ModelError(f"{self.name}: batcher failed: {e}"))

    async def _gather_batch(self) -> None:
        """Waits until a full batch is queued or the oldest input has waited long enough;
        not at all while no batch runs."""
        if not self._running:
            return
        delay = self.config.max_queue_delay_ms / 1000
        while self.queued < self.config.max_batch_size and not self._closed:
            oldest = (self._queue or self._background)[0]
            remaining = oldest.enqueued + delay - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        """Pops up to `max_batch_size` live inputs of requests, or else a small batch of
        background inputs; resolves the dead ones on the way."""
        batch: list[_Item] = []
        now = time.monotonic()
        queue, size = self._queue, self.config.max_batch_size
        if not queue:
            queue, size = self._background, max(1, size // 4)
        cancelled = late = 0
        while queue and len(batch) < size:
            item = queue.popleft()
            if item.future.done():  # the request was cancelled or already failed
                cancelled += 1
            elif item.deadline is not None and item.deadline <= now:
                late += 1
                item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            else:
                batch.append(item)
        self.stats.dropped += cancelled + late
        observer = self._observer
        observer.queued(self.queued)
        observer.waited([now - item.enqueued for item in batch])
        if cancelled:
            observer.failed("CANCELLED", cancelled)
        if late:
            observer.failed("DEADLINE_EXCEEDED", late)
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        try:
            x = self._collate([item.x for item in batch])
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            result = await loop.run_in_executor(self._executor, self._run_fn, x)
            seconds = time.perf_counter() - started
            if isinstance(result, Partial):
                out, errors = result.out, result.errors
            else:
                out, errors = result, {}
            if out.shape[0] != len(batch):
                raise ModelError(f"{self.name}: {len(batch)} inputs gave {out.shape[0]} outputs")
            self.stats.batches += 1
            self.stats.inputs += len(batch)
            self.stats.sizes.append(len(batch))
            self._observer.ran(len(batch), seconds)
            for error in errors.values():
                self._observer.failed(_reason(error), 1)
            for i, (item, row) in enumerate(zip(batch, out, strict=True)):
                if item.future.done():
                    continue
                if i in errors:
                    item.future.set_exception(errors[i])
                else:
                    item.future.set_result(row)
        except Exception as e:
            if not isinstance(e, LensError):
                log.exception("%s failed on a batch of %d", self.name, len(batch))
                e = ModelError(f"{self.name} failed: {type(e).__name__}: {e}")
            failing = [item for item in batch if not item.future.done()]
            for item in failing:
                item.future.set_exception(e)
            self._observer.failed(_reason(e), len(failing))
        finally:
            self._slots.release()

    def _fail_all(self, error: LensError) -> None:
        failed = 0
        while self.queued:
            item = (self._queue or self._background).popleft()
            if not item.future.done():
                item.future.set_exception(error)
                failed += 1
        self._observer.queued(0)
        if failed:
            self._observer.failed(_reason(error), failed)
