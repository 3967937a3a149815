"""A closed-loop load generator: N concurrent callers for a fixed time, latency per call."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadResult:
    calls: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @classmethod
    def combine(cls, parts: list[LoadResult]) -> LoadResult:
        """Several measured windows as one."""
        return cls(
            sum(p.calls for p in parts),
            sum(p.errors for p in parts),
            sum(p.seconds for p in parts),
            [latency for p in parts for latency in p.latencies_ms],
        )

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


async def run_load(
    call: Callable[[int], Awaitable[object]], *, concurrency: int, seconds: float, warmup: float = 1.0
) -> LoadResult:
    """Each of `concurrency` workers calls `call(i)` back to back; calls in the warm-up don't count."""
    counter = iter(range(10**12))
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def worker() -> None:
        nonlocal errors
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            try:
                await call(next(counter))
            except Exception:
                errors += 1
                continue
            ended = time.perf_counter()
            if began >= measure_from:
                latencies.append((ended - began) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(len(latencies), errors, seconds, latencies)
