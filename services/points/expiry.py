"""The expiry sweep: writes off points whose lot has passed its date, user by user.

Reads and debits already treat expired lots as gone; the sweep makes the ledger say so, and
publishes points.v1.expired. Safe on several replicas at once: each user's sweep locks their
account, and a user already swept has no expired lot left, so the host runs it on every replica.
"""

from __future__ import annotations

import logging
from functools import partial

from services.foundation.db import Database, utcnow
from services.points import ledger

log = logging.getLogger("alliance.points.expiry")


async def sweep_expired(db: Database) -> int:
    """Write off every expired lot; returns how many users had some."""
    now = utcnow()
    users = await db.run(lambda s: ledger.users_with_expired_lots(s, now))
    for user_id in users:
        await db.run(partial(ledger.expire_user, user_id=user_id, now=now))
    if users:
        log.info("expired points written off", extra={"users": len(users)})
    return len(users)
