"""MicroBatcher on its own, with a process function the test controls.

The process function records each batch and can hold a batch "in the database" until the test
releases it, so what queues meanwhile is observable as the next batch. Waits are on asyncio events
with a deadline; nothing sleeps for a fixed time.

Ordering note: `submit` appends its item before its first await, and asyncio runs ready callbacks
in FIFO order. Tasks created before `release(i)` therefore queue their items before the held batch
resumes, without any sleep.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from services.foundation.batching import MicroBatcher

DEADLINE = 5.0


class Recorder:
    """A process function: records batches; holds batch i while i is in `held`, until released."""

    def __init__(self, *, held: tuple[int, ...] = (0,)) -> None:
        self.batches: list[list[int]] = []
        self.held = set(held)
        self._entered: dict[int, asyncio.Event] = {}
        self._gates: dict[int, asyncio.Event] = {}
        self.fail_items: set[int] = set()
        self.raise_on_batch: int | None = None  # index of the batch whose process call raises

    def _event(self, events: dict[int, asyncio.Event], index: int) -> asyncio.Event:
        return events.setdefault(index, asyncio.Event())

    async def entered(self, index: int) -> None:
        """Wait (with a deadline) until batch `index` is in the process function."""
        await asyncio.wait_for(self._event(self._entered, index).wait(), DEADLINE)

    def release(self, index: int) -> None:
        self._event(self._gates, index).set()

    async def __call__(self, items: Sequence[int]) -> Sequence[int | BaseException]:
        index = len(self.batches)
        self.batches.append(list(items))
        self._event(self._entered, index).set()
        if index in self.held:
            await self._event(self._gates, index).wait()
        if self.raise_on_batch == index:
            raise RuntimeError(f"batch {index} failed")
        return [ValueError(f"item {item} refused") if item in self.fail_items else item * 10 for item in items]


def batcher(process: Recorder, **options: int) -> MicroBatcher[int, int]:
    return MicroBatcher(process, name=f"test-{uuid.uuid4().hex[:8]}", **options)


async def hold_first_batch(batch: MicroBatcher[int, int], process: Recorder, item: int) -> asyncio.Task[int]:
    first = asyncio.create_task(batch.submit(item))
    await process.entered(0)
    return first


async def test_items_submitted_while_a_batch_is_in_flight_go_together_in_the_next_batch() -> None:
    process = Recorder()
    batch = batcher(process)
    first = await hold_first_batch(batch, process, 1)
    queued = [asyncio.create_task(batch.submit(i)) for i in (2, 3, 4, 5)]
    process.release(0)

    results = await asyncio.wait_for(asyncio.gather(first, *queued), DEADLINE)

    assert process.batches == [[1], [2, 3, 4, 5]]
    assert results == [10, 20, 30, 40, 50]


async def test_under_light_load_each_item_is_its_own_batch_and_nothing_waits() -> None:
    process = Recorder(held=())
    batch = batcher(process)
    for item in (7, 8, 9):
        assert await asyncio.wait_for(batch.submit(item), DEADLINE) == item * 10
    assert process.batches == [[7], [8], [9]]


async def test_results_map_back_to_their_own_callers_in_order() -> None:
    process = Recorder()
    batch = batcher(process)
    first = await hold_first_batch(batch, process, 100)
    items = [5, 3, 9, 1, 7, 2]
    callers = {item: asyncio.create_task(batch.submit(item)) for item in items}
    process.release(0)
    await asyncio.wait_for(asyncio.gather(first, *callers.values()), DEADLINE)

    assert process.batches[1] == items  # submission order is batch order
    assert {item: task.result() for item, task in callers.items()} == {item: item * 10 for item in items}


async def test_an_exception_for_one_item_fails_only_that_caller() -> None:
    process = Recorder()
    process.fail_items = {3}
    batch = batcher(process)
    first = await hold_first_batch(batch, process, 1)
    callers = [asyncio.create_task(batch.submit(i)) for i in (2, 3, 4)]
    process.release(0)
    outcomes = await asyncio.wait_for(asyncio.gather(first, *callers, return_exceptions=True), DEADLINE)

    assert process.batches == [[1], [2, 3, 4]]
    assert outcomes[0] == 10 and outcomes[1] == 20 and outcomes[3] == 40
    assert isinstance(outcomes[2], ValueError) and "item 3" in str(outcomes[2])


async def test_the_process_function_raising_fails_every_caller_of_that_batch_only() -> None:
    process = Recorder()
    process.raise_on_batch = 1
    batch = batcher(process)
    first = await hold_first_batch(batch, process, 1)
    failing = [asyncio.create_task(batch.submit(i)) for i in (2, 3, 4)]
    process.release(0)
    outcomes = await asyncio.wait_for(asyncio.gather(first, *failing, return_exceptions=True), DEADLINE)

    assert outcomes[0] == 10  # the batch before is untouched
    for outcome in outcomes[1:]:
        assert isinstance(outcome, RuntimeError) and str(outcome) == "batch 1 failed"
    # The batcher carries on: the next submission is processed normally.
    assert await asyncio.wait_for(batch.submit(6), DEADLINE) == 60
    assert process.batches == [[1], [2, 3, 4], [6]]


async def test_a_cancelled_caller_does_not_break_the_others() -> None:
    process = Recorder(held=(0, 1))
    batch = batcher(process)
    first = await hold_first_batch(batch, process, 1)
    in_flight = {i: asyncio.create_task(batch.submit(i)) for i in (2, 3, 4)}
    process.release(0)
    await process.entered(1)  # batch [2, 3, 4] is now in the process function, held
    queued = {i: asyncio.create_task(batch.submit(i)) for i in (5, 6)}
    assert await asyncio.wait_for(first, DEADLINE) == 10  # also lets the queued tasks submit
    # One cancellation whose item is in the held batch, one whose item is still queued.
    in_flight[3].cancel()
    queued[5].cancel()
    process.release(1)

    done = await asyncio.wait_for(
        asyncio.gather(*in_flight.values(), *queued.values(), return_exceptions=True), DEADLINE
    )
    assert process.batches == [[1], [2, 3, 4], [5, 6]]  # the work is done regardless
    assert done[0] == 20 and done[2] == 40 and done[4] == 60
    assert in_flight[3].cancelled() and queued[5].cancelled()
    # The worker is alive and well afterwards.
    assert await asyncio.wait_for(batch.submit(8), DEADLINE) == 80


async def test_max_batch_is_respected() -> None:
    process = Recorder()
    batch = batcher(process, max_batch=3)
    first = await hold_first_batch(batch, process, 0)
    items = list(range(1, 9))
    callers = [asyncio.create_task(batch.submit(i)) for i in items]
    process.release(0)
    results = await asyncio.wait_for(asyncio.gather(first, *callers), DEADLINE)

    assert process.batches == [[0], [1, 2, 3], [4, 5, 6], [7, 8]]
    assert results == [i * 10 for i in [0, *items]]


async def test_a_process_returning_too_few_results_fails_its_callers_instead_of_stranding_them() -> None:
    class TooFew(Recorder):
        async def __call__(self, items: Sequence[int]) -> Sequence[int | BaseException]:
            results = await super().__call__(items)
            return results[:-1] if len(self.batches) == 2 else results

    process = TooFew(held=(0, 1))
    batch = batcher(process)
    first = await hold_first_batch(batch, process, 1)
    callers = [asyncio.create_task(batch.submit(i)) for i in (2, 3)]
    process.release(0)
    await process.entered(1)
    behind = asyncio.create_task(batch.submit(4))  # queued while the bad batch is in flight
    assert await asyncio.wait_for(first, DEADLINE) == 10
    process.release(1)

    _, pending = await asyncio.wait([*callers, behind], timeout=2.0)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} callers were left waiting forever"
    # Which result belongs to whom is unknown once the count is wrong: the whole batch is told.
    for caller in callers:
        assert "a batch of 2 items got 1 results" in str(caller.exception())
    assert behind.result() == 40  # the batch behind is still processed
