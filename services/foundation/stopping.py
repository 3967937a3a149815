"""Waiting that gives way to shutdown: background loops sleep through these, so SIGTERM is prompt."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def wait_or_stop(awaitable: Awaitable[object], stop: asyncio.Event) -> None:
    """Wait for `awaitable` or for `stop`, whichever comes first; a time-out counts as done."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopper):
            if not t.done():
                t.cancel()
        for t in (task, stopper):
            if t.done() and not t.cancelled():
                t.exception()  # retrieve a TimeoutError so asyncio does not report it


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    await wait_or_stop(asyncio.sleep(seconds), stop)
