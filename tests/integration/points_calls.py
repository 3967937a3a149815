"""Small request builders so tests read like the business they check."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from alliance.v1 import points_pb2 as api


def stamp(when: datetime | None = None) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(when or datetime.now(UTC))
    return t


def earn_request(
    user: str,
    *,
    key: str | None = None,
    event_type: str = "referral.converted",
    product: str = "credit_card",
    amount: str = "",
    when: datetime | None = None,
    **attributes: str,
) -> api.EarnRequest:
    attrs = {"product": product, **attributes} if product else dict(attributes)
    return api.EarnRequest(
        idempotency_key=key or uuid.uuid4().hex,
        user_id=user,
        event_type=event_type,
        occurred_at=stamp(when),
        attributes=attrs,
        amount=amount,
    )


def redeem_request(user: str, points: int, *, key: str | None = None, order: str = "order-1") -> api.RedeemRequest:
    return api.RedeemRequest(idempotency_key=key or uuid.uuid4().hex, user_id=user, points=points, order_id=order)


def reverse_request(
    transaction_id: str, *, points: int = 0, key: str | None = None, allow_partial: bool = False
) -> api.ReverseRequest:
    return api.ReverseRequest(
        idempotency_key=key or uuid.uuid4().hex,
        transaction_id=transaction_id,
        points=points,
        reason="test reversal",
        allow_partial=allow_partial,
    )
