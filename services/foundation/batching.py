"""Group commit: callers submit items one by one, a worker hands them to the database in batches.

While one batch is in the database, new items queue; the next batch takes all of them (up to
`max_batch`). Under light load a batch is one item and nothing waits; under heavy load many calls
share one transaction, which is what lets a single SQLite writer keep up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from prometheus_client import Histogram

T = TypeVar("T")
R = TypeVar("R")

BATCH_SIZE = Histogram(
    "alliance_batch_size", "items per group-committed batch", ["batcher"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)

Process = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


class MicroBatcher(Generic[T, R]):
    def __init__(self, process: Process[T, R], *, name: str, max_batch: int = 128) -> None:
        self._size = BATCH_SIZE.labels(name)
        self._process = process
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._size.observe(len(batch))
            try:
                results: Sequence[R | BaseException] = await self._process([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} items got {len(results)} results")
            except Exception as error:
                # Every caller of this batch hears of it; the batches behind it go on.
                results = [error] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the caller went away (cancelled); the work is done regardless
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
