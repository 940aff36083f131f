"""The dynamic batcher with a deterministic fake tower: ordering, batching, failures.

Driven by events, not by sleeping: the fake tower reports each batch it starts and holds it
until the test opens its gate, so a loaded machine changes how long a test takes, not what
it sees. `await asyncio.sleep(0)` only lets the tasks already scheduled (submits) run.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np
import pytest

from lens_server.batching import SIZES_KEPT, Batcher, Partial
from lens_server.config import BatchConfig
from lens_server.errors import DeadlineExceeded, InvalidInput, ModelError, Overloaded, Unavailable

# Longest a test waits for an event before failing (never reached when things work).
PATIENCE = 30.0


class FakeTower:
    """Returns each row's first value, doubled; records batches; can be told to fail.

    Each batch is reported on `started` (its first values) as it enters the tower, and then
    waits for `gate` to be open (it is open unless a test closes it). Build it inside the
    event loop the batcher runs on.
    """

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.seen: list[list[float]] = []
        self.fail_on: float | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.started: asyncio.Queue[list[float]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        values = x[:, 0].tolist()
        self._loop.call_soon_threadsafe(self.started.put_nowait, values)
        if not self.gate.wait(PATIENCE):
            raise RuntimeError("the test never opened the gate")
        self.batches.append(len(x))
        self.seen.append(values)
        if self.fail_on is not None and self.fail_on in values:
            raise RuntimeError("boom")
        return np.stack([x[:, 0] * 2, x[:, 0]], axis=1)

    async def next_batch(self) -> list[float]:
        """The first values of the next batch to enter the tower, once it has."""
        return await asyncio.wait_for(self.started.get(), PATIENCE)


def rows(*values: float) -> list[np.ndarray]:
    return [np.array([v], dtype=np.float32) for v in values]


def run(coro):
    return asyncio.run(coro)


def test_results_come_back_in_order_for_each_concurrent_request():
    async def main():
        tower = FakeTower()
        batcher = Batcher("fake", tower, BatchConfig(max_batch_size=8, max_queue_delay_ms=2))
        requests = [list(range(i * 10, i * 10 + 1 + i % 5)) for i in range(40)]
        # All 40 are queued before the batcher's loop runs again: they share batches.
        outputs = await asyncio.gather(*(batcher.submit(rows(*r)) for r in requests))
        for request, out in zip(requests, outputs, strict=True):
            np.testing.assert_array_equal(out[:, 0], np.array(request) * 2)
        await batcher.close()
        return tower, batcher.stats

    tower, stats = run(main())
    assert max(tower.batches) > 1, "concurrent inputs were never batched together"
    assert max(tower.batches) <= 8
    assert list(stats.sizes) == tower.batches and stats.inputs == sum(tower.batches)
    assert stats.batches == len(tower.batches)


def test_an_idle_tower_runs_a_lone_input_at_once():
    """No batching delay when nothing else runs: the single-request latency path (a delay
    of a minute would time the request out here)."""

    async def main():
        config = BatchConfig(max_batch_size=64, max_queue_delay_ms=60_000)
        batcher = Batcher("fake", FakeTower(), config)
        out = await asyncio.wait_for(batcher.submit(rows(1.0)), PATIENCE)
        await batcher.close()
        return out

    np.testing.assert_array_equal(run(main())[:, 0], [2])


def test_a_free_instance_waits_for_a_batch_while_another_runs():
    """Two instances, one busy: the next batch gathers (here until it is full, the delay
    being a minute) instead of running a lone input on the free instance."""

    async def main():
        tower = FakeTower()
        config = BatchConfig(max_batch_size=10, max_queue_delay_ms=60_000, instances=2)
        batcher = Batcher("fake", tower, config)
        tower.gate.clear()
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        assert await tower.next_batch() == [0]  # stuck in the tower: one instance free
        later = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(1, 6)]
        for _ in range(4):  # more arrive one by one while the batch gathers
            for _ in range(3):
                await asyncio.sleep(0)
            assert tower.started.empty(), "a partial batch ran on the free instance"
            later.append(asyncio.ensure_future(batcher.submit(rows(10))))
        assert tower.started.empty()
        later.append(asyncio.ensure_future(batcher.submit(rows(10))))  # the tenth: full
        assert len(await tower.next_batch()) == 10  # on the free instance, the first still busy
        tower.gate.set()
        await asyncio.gather(first, *later)
        await batcher.close()
        return tower.batches, batcher.stats

    batches, stats = run(main())
    assert sorted(batches) == [1, 10] and sorted(stats.sizes) == [1, 10]


def test_a_gathering_batch_runs_once_its_oldest_input_has_waited_the_delay():
    async def main():
        tower = FakeTower()
        config = BatchConfig(max_batch_size=32, max_queue_delay_ms=20, instances=2)
        batcher = Batcher("fake", tower, config)
        tower.gate.clear()
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        assert await tower.next_batch() == [0]
        later = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(1, 4)]
        # Far from full, and the first batch still in the tower: the delay lets it go.
        assert await tower.next_batch() == [1, 2, 3]
        tower.gate.set()
        await asyncio.gather(first, *later)
        await batcher.close()

    run(main())


def test_inputs_wait_while_the_instance_is_busy_and_then_run_together():
    async def main():
        tower = FakeTower()
        batcher = Batcher("fake", tower, BatchConfig(max_batch_size=32, max_queue_delay_ms=0))
        tower.gate.clear()
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        assert await tower.next_batch() == [0]  # the first batch is now stuck in the tower
        later = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(1, 11)]
        await asyncio.sleep(0)
        assert batcher.queued == 10
        tower.gate.set()
        await asyncio.gather(first, *later)
        await batcher.close()
        return tower.batches, batcher.stats

    batches, stats = run(main())
    assert batches == [1, 10] and list(stats.sizes) == [1, 10]


def test_full_queue_refuses_the_whole_request():
    async def main():
        tower = FakeTower()
        batcher = Batcher(
            "fake", tower, BatchConfig(max_batch_size=2, max_queue_size=4, max_queue_delay_ms=0)
        )
        tower.gate.clear()
        stuck = asyncio.ensure_future(batcher.submit(rows(0, 1)))
        assert await tower.next_batch() == [0, 1]
        waiting = asyncio.ensure_future(batcher.submit(rows(2, 3, 4)))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue full"):
            await batcher.submit(rows(5, 6))
        assert batcher.queued == 3  # nothing of the refused request was queued
        tower.gate.set()
        await asyncio.gather(stuck, waiting)
        await batcher.close()

    run(main())


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    async def main():
        tower = FakeTower()
        tower.fail_on = 13.0
        batcher = Batcher("fake", tower, BatchConfig(max_batch_size=4, max_queue_delay_ms=1))
        with pytest.raises(ModelError, match="boom"):
            await batcher.submit(rows(12, 13))
        out = await batcher.submit(rows(7))
        await batcher.close()
        return out

    np.testing.assert_array_equal(run(main())[:, 0], [14])


def test_rows_a_partial_result_names_fail_alone():
    """A corrupt input among good ones: only its request fails, with its own error."""

    def tower(items: list[float]) -> Partial:
        out = np.array([[v * 2] for v in items], dtype=np.float32)
        bad = {i: InvalidInput(f"row {v} is corrupt") for i, v in enumerate(items) if v < 0}
        return Partial(out, bad)

    async def main():
        config = BatchConfig(max_batch_size=8, max_queue_delay_ms=20)
        batcher = Batcher("partial", tower, config, collate=list)
        # Queued together before the batcher's loop runs: an idle tower takes them all.
        good, bad, other = await asyncio.gather(
            batcher.submit([1.0, 2.0]),
            batcher.submit([3.0, -1.0]),
            batcher.submit([4.0]),
            return_exceptions=True,
        )
        await batcher.close()
        assert batcher.stats.batches == 1  # all three requests shared one batch
        assert list(batcher.stats.sizes) == [5]
        return good, bad, other

    good, bad, other = run(main())
    np.testing.assert_array_equal(good[:, 0], [2, 4])
    assert isinstance(bad, InvalidInput) and "row -1.0 is corrupt" in str(bad)
    np.testing.assert_array_equal(other[:, 0], [8])


def test_cancelled_requests_are_dropped_before_the_tower():
    async def main():
        tower = FakeTower()
        batcher = Batcher("fake", tower, BatchConfig(max_batch_size=16, max_queue_delay_ms=0))
        tower.gate.clear()
        busy = asyncio.ensure_future(batcher.submit(rows(0)))
        assert await tower.next_batch() == [0]
        gone = asyncio.ensure_future(batcher.submit(rows(1, 2, 3)))
        kept = asyncio.ensure_future(batcher.submit(rows(4)))
        await asyncio.sleep(0)
        assert batcher.queued == 4
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        tower.gate.set()
        await asyncio.gather(busy, kept)
        await batcher.close()
        return tower.seen, batcher.stats.dropped

    seen, dropped = run(main())
    assert seen == [[0], [4]] and dropped == 3


def test_expired_deadlines_are_not_run():
    async def main():
        tower = FakeTower()
        batcher = Batcher("fake", tower, BatchConfig(max_batch_size=16, max_queue_delay_ms=0))
        tower.gate.clear()
        busy = asyncio.ensure_future(batcher.submit(rows(0)))
        assert await tower.next_batch() == [0]
        # Its deadline passes while it waits behind the busy batch.
        late = asyncio.ensure_future(batcher.submit(rows(1), deadline=time.monotonic()))
        await asyncio.sleep(0)
        assert batcher.queued == 1
        tower.gate.set()
        await busy
        with pytest.raises(DeadlineExceeded):
            await late
        await batcher.close()
        return tower.batches, batcher.stats.dropped

    assert run(main()) == ([1], 1)


def test_close_runs_what_is_queued_then_refuses_new_inputs():
    async def main():
        tower = FakeTower()
        batcher = Batcher("fake", tower, BatchConfig(max_batch_size=2, max_queue_delay_ms=0))
        tower.gate.clear()
        pending = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(6)]
        assert await tower.next_batch() == [0, 1]
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        assert batcher.queued == 4  # still queued when the batcher closes
        with pytest.raises(Unavailable):
            await batcher.submit(rows(9))
        tower.gate.set()
        await closing
        results = await asyncio.gather(*pending)
        with pytest.raises(Unavailable):
            await batcher.submit(rows(9))
        return results, tower.batches

    results, batches = run(main())
    assert [float(r[0, 0]) for r in results] == [0, 2, 4, 6, 8, 10]
    assert batches == [2, 2, 2]


def test_stats_keep_the_latest_batch_sizes():
    async def main():
        tower = FakeTower()
        batcher = Batcher("fake", tower, BatchConfig(max_batch_size=4, max_queue_delay_ms=0))
        for _ in range(SIZES_KEPT + 5):
            await batcher.submit(rows(1))
        await batcher.submit(rows(1, 2, 3))
        await batcher.close()
        return batcher.stats

    stats = run(main())
    assert len(stats.sizes) == SIZES_KEPT and stats.sizes[-1] == 3 and stats.sizes[0] == 1
    assert stats.batches == SIZES_KEPT + 6 and stats.inputs == SIZES_KEPT + 8


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="max_queue_size"):
        BatchConfig(max_batch_size=8, max_queue_size=4)


def test_background_inputs_run_in_small_batches_when_no_request_waits():
    async def main():
        tower = FakeTower()
        tower.gate.clear()  # the first batch blocks in the tower while more arrive
        batcher = Batcher("fake", tower, BatchConfig(max_batch_size=8, max_queue_delay_ms=1))
        background = asyncio.create_task(batcher.submit(rows(*range(100, 120)), background=True))
        assert await tower.next_batch() == [100, 101]  # a quarter of max_batch_size
        live = asyncio.create_task(batcher.submit(rows(1, 2, 3, 4)))
        await asyncio.sleep(0)
        assert batcher.queued == 22
        tower.gate.set()
        out = await live
        np.testing.assert_array_equal(out[:, 0], [2, 4, 6, 8])
        assert len(await background) == 20
        await batcher.close()
        return tower

    tower = run(main())
    assert tower.seen[0] == [100, 101]  # a quarter of max_batch_size
    assert tower.seen[1] == [1, 2, 3, 4]  # the request goes next, alone
    assert tower.seen[2:] == [[v, v + 1] for v in range(102, 120, 2)]
