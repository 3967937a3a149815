"""customer.v1.registered over real NATS, on SQLite and PostgreSQL: the event path links through
Register's checks, and records each refusal with its reason."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import nats.js
from google.protobuf.timestamp_pb2 import Timestamp
from sqlmodel import select

from alliance.v1 import customer_events_pb2
from alliance.v1 import referral_pb2 as api
from services.foundation.db import Database
from services.foundation.inbox import ParkedEvent
from services.referral.models import LinkRefusal
from tests.integration.conftest import ReferralUnderTest
from tests.support import eventually


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def publish(js: nats.js.JetStreamContext, user: str, code: str, **fields: object) -> str:
    at = Timestamp()
    at.FromDatetime(datetime.now(UTC) - timedelta(seconds=5))
    event = customer_events_pb2.CustomerRegistered(
        event_id=uid("evt"),
        user_id=user,
        referral_code=code,
        registered_at=at,
        **fields,  # type: ignore[arg-type]
    )
    await js.publish("customer.v1.registered", event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id})
    return event.event_id


async def test_registration_events_link_or_record_the_refusal(
    referral: ReferralUnderTest, js: nats.js.JetStreamContext
) -> None:
    with contextlib.suppress(nats.js.errors.BadRequestError):  # made by an earlier test
        await js.add_stream(name="CUSTOMER", subjects=["customer.v1.>"])
    a, b, c, revoked_owner = uid("a"), uid("b"), uid("c"), uid("gone")
    code_a = await referral.code(a)
    old = await referral.code(revoked_owner)
    await referral.stub.RevokeCode(api.RevokeCodeRequest(user_id=revoked_owner))

    await publish(js, b, code_a.lower())
    await eventually(lambda: _linked(referral, b))
    await referral.register(c, await referral.code(b))  # a <- b <- c
    code_c = await referral.code(c)
    refused = {
        await publish(js, a, code_c): "CYCLE",  # a under c: a <- b <- c <- a
        await publish(js, uid(), "ABCD2345"): "UNKNOWN_CODE",
        await publish(js, uid(), old): "REVOKED_CODE",
        await publish(js, a, code_a): "SELF_REFERRAL",
        await publish(js, b, code_c): "ALREADY_REFERRED",
        await publish(js, uid(), "not-a-code"): "UNKNOWN_CODE",
    }
    parked = await publish(js, "", code_a)  # no user id: a bad event, parked
    skipped = await publish(js, uid("plain"), "")  # registered without a code: nothing to link

    db = Database(referral.settings.database_url)
    try:

        async def recorded() -> dict[str, str]:
            rows = await db.read(lambda s: s.exec(select(LinkRefusal)).all())
            found = {r.event_id: r.reason for r in rows if r.event_id in refused}
            return found if len(found) == len(refused) else {}

        assert await eventually(recorded) == refused
        await eventually(
            lambda: db.read(lambda s: s.exec(select(ParkedEvent).where(ParkedEvent.event_id == parked)).first())
        )

        async def drained() -> bool:
            info = await js.consumer_info("CUSTOMER", "referral-customer-v1-registered")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(drained)
        assert skipped not in {r.event_id for r in await db.read(lambda s: s.exec(select(LinkRefusal)).all())}
    finally:
        db.close()
    path = await referral.stub.GetPathToRoot(api.GetPathToRootRequest(user_id=c))
    assert [s.user_id for s in path.ancestors] == [b, a]


async def test_registration_events_go_under_review_by_velocity(
    referral: ReferralUnderTest, js: nats.js.JetStreamContext
) -> None:
    with contextlib.suppress(nats.js.errors.BadRequestError):
        await js.add_stream(name="CUSTOMER", subjects=["customer.v1.>"])
    code = await referral.code(uid("owner"))
    users = [uid() for _ in range(3)]
    for user in users:  # three accounts from one device: max 2 within 30 days
        await publish(js, user, code, device_hash="device-1")
    for user in users:
        await eventually(lambda user=user: _linked(referral, user))
    states = [(await referral.stub.GetPartner(api.GetPartnerRequest(user_id=u))).partner.link for u in users]
    assert sorted(s.state for s in states) == [api.LINK_STATE_ACTIVE] * 2 + [api.LINK_STATE_UNDER_REVIEW]
    assert {s.flagged_by for s in states} == {"", "test-referral/shared-device"}


async def _linked(referral: ReferralUnderTest, user: str) -> bool:
    try:
        reply = await referral.stub.GetPartner(api.GetPartnerRequest(user_id=user))
    except Exception:
        return False
    return reply.partner.HasField("link")
