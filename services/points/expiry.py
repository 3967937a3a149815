"""The expiry sweep: writes off points whose lot has passed its date, user by user.

Reads and debits already treat expired lots as gone; the sweep makes the ledger say so, and
publishes points.v1.expired. Safe on several replicas: each user's sweep locks their account.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from services.foundation.db import Database, utcnow
from services.foundation.stopping import sleep_or_stop
from services.points import ledger

log = logging.getLogger("alliance.points.expiry")


class ExpirySweeper:
    def __init__(self, db: Database, interval: float, on_commit: Callable[[], None]) -> None:
        self.db = db
        self.interval = interval
        self.on_commit = on_commit

    async def sweep_once(self) -> int:
        now = utcnow()
        users = await self.db.run(lambda s: ledger.users_with_expired_lots(s, now))
        for user_id in users:
            await self.db.run(lambda s, u=user_id: ledger.expire_user(s, u, now))
        if users:
            log.info("expired points written off", extra={"users": len(users)})
            self.on_commit()
        return len(users)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep_once()
            except Exception as error:
                log.warning("expiry sweep failed", extra={"error": repr(error)})
            await sleep_or_stop(stop, self.interval)
