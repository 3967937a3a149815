"""referral.v1.conversion_revoked → the reversal of exactly the earns its converted events made.

A link rejected on review takes back every reward of a conversion that went through it. The event
names each reward by the referral.v1.converted event that granted it; that event's earn is found
by the key the conversions consumer gave it (`referral.v1.converted:<event id>`) and reversed
whole, through the ledger's Reverse (entries mirrored per campaign, budget given back, lots
debited, points.v1.reversed published). All the rewards of one revocation are reversed in one
transaction, together with the inbox row: all of them or none.
"""

from __future__ import annotations

import hashlib
import unicodedata

from sqlmodel import Session, select

from alliance.v1 import referral_events_pb2
from services.foundation import validation
from services.foundation.errors import InvalidArgument
from services.foundation.inbox import MAX_EVENT_ID, Delivery, Handler, Unit
from services.points import ledger
from services.points.commands import ReverseCommand
from services.points.events import REFERRAL_CONVERSION_REVOKED, REFERRAL_CONVERTED
from services.points.models import PointsTransaction

SUBJECT = REFERRAL_CONVERSION_REVOKED.subject
MAX_REASON = 512


class EarnNotYetRecorded(Exception):
    """A revoked reward's converted event has not been applied here yet: try the revocation again later.

    referral.v1.converted and referral.v1.conversion_revoked have consumers of their own, so a
    revocation can be read before the conversion it takes back. That is a matter of time, not a
    bad event, so this is an ordinary exception on purpose: the inbox rolls the unit back (nothing
    of the revocation is written, not even its inbox row) and naks the message with a backoff, and
    it comes back until the earn is there. InvalidArgument or PermanentEventError would park it at
    once, and the award would stay with the referrer. The consumer's max_deliver (service.py) is
    set high so that the wait is long; an event still failing after it is parked, not dropped:
    then the converted event itself was most likely parked, and ops must look at both.
    """


def reversal_key(revoke_event_id: str, converted_event_id: str) -> str:
    """The idempotency key of one reward's reversal: the same for every delivery of the revocation,
    different for each of its rewards. Ids too long to fit the ledger's 128 characters are hashed."""
    key = f"{SUBJECT}:{revoke_event_id}:{converted_event_id}"
    if len(key) <= validation.MAX_KEY:
        return key
    digest = hashlib.sha256(f"{revoke_event_id}\n{converted_event_id}".encode()).hexdigest()
    return f"{SUBJECT}:sha256:{digest}"


def on_conversion_revoked() -> Handler[referral_events_pb2.ConversionRevoked]:
    async def handle(delivery: Delivery[referral_events_pb2.ConversionRevoked]) -> Unit:
        return revocation(delivery.event, delivery.event_id)

    return handle


def revocation(event: referral_events_pb2.ConversionRevoked, event_id: str) -> Unit:
    """The unit of work reversing the rewards of `event`. A bad value (InvalidArgument) parks the
    event; a reward whose earn is not recorded yet raises EarnNotYetRecorded (retried later)."""
    rewards = _rewards(event)
    conversion = event.conversion_id.strip()
    reason = f"referral conversion {conversion} revoked" if conversion else "referral conversion revoked"
    if event.reason.strip():
        reason = f"{reason}: {event.reason.strip()}"
    reason = reason[:MAX_REASON]

    def unit(session: Session) -> object:
        earns: list[tuple[PointsTransaction, str]] = []
        for index, (converted_event_id, referrer_id) in enumerate(rewards):
            earn = _earn_of(session, converted_event_id)
            if earn is None:
                raise EarnNotYetRecorded(
                    f"rewards[{index}]: no earn yet for referral.v1.converted event {converted_event_id}; "
                    "the revocation is retried until it is there"
                )
            if referrer_id and unicodedata.normalize("NFC", referrer_id) != earn.user_id:
                raise InvalidArgument(
                    f"rewards[{index}].referrer_id",
                    f"is {referrer_id!r} but converted event {converted_event_id} awarded {earn.user_id!r}",
                )
            earns.append((earn, converted_event_id))
        reversed_ = []
        # Accounts in user order, as the earn batch locks them, so the two do not deadlock on them.
        for earn, converted_event_id in sorted(earns, key=lambda found: (found[0].user_id, found[0].id)):
            if earn.points - earn.reversed_points <= 0:
                # Nothing to take back: the earn awarded nothing (a level no rule rewards, a cap or
                # the budget reached), or it was reversed already (by ops, or an earlier revocation).
                continue
            # The bank takes points back here, not the customer asking for a refund, and the
            # customer may have spent them meanwhile. The ledger's policy (points.proto,
            # ReverseRequest) never drives a balance negative: without allow_partial a clawback
            # the balance cannot cover fails, and this event would fail on every delivery and end
            # up parked with nothing taken back. With allow_partial the ledger takes what the
            # balance holds and reports the rest as `shortfall` in the reply and in the
            # points.v1.reversed event, for follow-up; the remainder can still be reversed later.
            reversed_.append(
                ledger.reverse(
                    session,
                    ReverseCommand(
                        idempotency_key=reversal_key(event_id, converted_event_id),
                        transaction_id=earn.id,
                        points=0,  # everything not yet reversed
                        reason=reason,
                        allow_partial=True,
                    ),
                )
            )
        return reversed_

    return unit


def _rewards(event: referral_events_pb2.ConversionRevoked) -> list[tuple[str, str]]:
    """(converted event id, referrer id) of each reward, once each, in the event's order."""
    found: dict[str, str] = {}
    for index, reward in enumerate(event.rewards):
        # Taken as sent, not trimmed: the earn's key holds the converted event's id exactly.
        converted = reward.converted_event_id
        if not converted.strip():
            raise InvalidArgument(f"rewards[{index}].converted_event_id", "is required")
        if len(converted) > MAX_EVENT_ID:
            # The conversions consumer parks such an event, so there is no earn to wait for.
            raise InvalidArgument(f"rewards[{index}].converted_event_id", f"is longer than {MAX_EVENT_ID} characters")
        found.setdefault(converted, reward.referrer_id.strip())
    return list(found.items())


def _earn_of(session: Session, converted_event_id: str) -> PointsTransaction | None:
    # The key referral_conversions.earn_command gives the earn (consumers do not import each other).
    key = f"{REFERRAL_CONVERTED.subject}:{converted_event_id}"
    query = select(PointsTransaction).where(
        PointsTransaction.operation == "earn", PointsTransaction.idempotency_key == key
    )
    return session.exec(query).first()
