"""customer.v1.registered (mini-program) → a link, through exactly Register's checks.

A registration without a code makes nothing. A refused link (unknown code, cycle, ...) is not a
bad event: it is acknowledged and kept in `link_refusal` with its reason, since no caller is
there to be told. A malformed event (no user id, a bad time) is parked like any other.
"""

from __future__ import annotations

from sqlmodel import Session

from alliance.v1 import customer_events_pb2
from services.foundation import validation
from services.foundation.db import utcnow
from services.foundation.inbox import Delivery, Handler, Unit
from services.referral import codes
from services.referral.events import CUSTOMER_REGISTERED
from services.referral.linking import Proposal, link_all
from services.referral.models import LinkRefusal
from services.referral.policy import PolicyBook


def on_customer_registered(book: PolicyBook) -> Handler[customer_events_pb2.CustomerRegistered]:
    async def handle(delivery: Delivery[customer_events_pb2.CustomerRegistered]) -> Unit | None:
        event = delivery.event
        if not event.referral_code.strip():
            return None
        code = codes.normalize(event.referral_code)[:64]  # a bad code is a refusal to record, not a bad event
        proposal = Proposal(
            user_id=validation.required_text(event.user_id, "user_id"),
            kind="employee" if event.employee else "customer",
            code=code,
            linked_at=validation.timestamp(
                event.registered_at,
                "registered_at",
                present=event.HasField("registered_at"),
                now=utcnow(),
                future=False,
            ),
            source=CUSTOMER_REGISTERED.subject,
            device_hash=event.device_hash.strip()[:128] or None,
            phone_hash=event.phone_hash.strip()[:128] or None,
        )
        policy = book.policy
        event_id = delivery.event_id

        def unit(session: Session) -> object:
            if not codes.is_well_formed(code):  # as Register refuses it, but recorded: no caller to tell
                session.add(_refusal(event_id, proposal, "UNKNOWN_CODE", f"code: {code!r} is not a referral code"))
                return None
            [outcome] = link_all(session, [proposal], policy)
            if outcome.state == "refused":
                assert outcome.reason is not None
                session.add(_refusal(event_id, proposal, outcome.reason, outcome.message, outcome.referrer_id))
            return outcome

        return unit

    return handle


def _refusal(event_id: str, p: Proposal, reason: str, message: str, referrer_id: str | None = None) -> LinkRefusal:
    return LinkRefusal(
        event_id=event_id, user_id=p.user_id, referrer_id=referrer_id, code=p.code, reason=reason, message=message[:512]
    )
