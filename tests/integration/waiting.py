"""Polling with a deadline, for effects that happen in the background (relay, consumers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], *, timeout: float = 15.0, every: float = 0.1) -> T:
    """Return the first truthy result of `probe`; fail with the last result after `timeout`."""
    deadline = time.monotonic() + timeout
    result = await probe()
    while not result:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(every)
        result = await probe()
    return result
