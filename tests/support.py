"""Helpers shared by the tests, in one module: waiting with a deadline, request builders that
read like the business, the points service under test and its campaign terms, event readers.
Fixtures live in the conftest.py files and build on these."""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import grpc
import nats
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import DeliverPolicy
from sqlalchemy import MetaData

from alliance.v1 import benefits_pb2, benefits_pb2_grpc, points_pb2, points_pb2_grpc
from services.foundation.bus import EventBus, stream_config
from services.foundation.db import Database
from services.foundation.host import ServiceHost
from services.points.settings import PointsSettings

# -- waiting ------------------------------------------------------------------------------------

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


# -- the kit's parts on their own --------------------------------------------------------------------


@asynccontextmanager
async def connected_bus(url: str, name: str = "test") -> AsyncIterator[EventBus]:
    bus = EventBus(url, name=name)
    await asyncio.wait_for(bus.connect(), 10)
    try:
        yield bus
    finally:
        await bus.close()


@contextmanager
def database_with(url: str, metadata: MetaData) -> Iterator[Database]:
    """A Database with `metadata`'s tables created, closed afterwards."""
    database = Database(url)
    metadata.create_all(database.engine)
    try:
        yield database
    finally:
        database.close()


# -- points requests ------------------------------------------------------------------------------


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
) -> points_pb2.EarnRequest:
    attrs = {"product": product, **attributes} if product else dict(attributes)
    return points_pb2.EarnRequest(
        idempotency_key=key or uuid.uuid4().hex,
        user_id=user,
        event_type=event_type,
        occurred_at=stamp(when),
        attributes=attrs,
        amount=amount,
    )


def redeem_request(
    user: str, points: int, *, key: str | None = None, order: str = "order-1"
) -> points_pb2.RedeemRequest:
    return points_pb2.RedeemRequest(
        idempotency_key=key or uuid.uuid4().hex, user_id=user, points=points, order_id=order
    )


def reverse_request(
    transaction_id: str, *, points: int = 0, key: str | None = None, allow_partial: bool = False
) -> points_pb2.ReverseRequest:
    return points_pb2.ReverseRequest(
        idempotency_key=key or uuid.uuid4().hex,
        transaction_id=transaction_id,
        points=points,
        reason="test reversal",
        allow_partial=allow_partial,
    )


# -- the points service under test ----------------------------------------------------------------

# Terms chosen for the tests: easy sums, a daily cap and a budget small enough to hit.
TEST_CAMPAIGN = """\
campaign: test-referral
title: Referral terms for tests
active:
  from: 2020-01-01
timezone: Asia/Shanghai
priority: 10
points:
  stacking: all
  caps:
    per_user_per_day: 1000
  expiry:
    days: 365
  rules:
    - id: card
      when: {event: referral.converted, product: credit_card}
      award: 50
    - id: loan
      when: {event: referral.converted, product: loan}
      award: 100
    - id: spend
      when: {event: merchant.spend}
      award: {per_amount: 10, points: 1, max: 200}
"""


def write_campaign(rules_dir: Path, name: str, text: str) -> Path:
    path = rules_dir / "campaigns" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(textwrap.dedent(text))
    tmp.replace(path)  # atomic, like an editor's save or a ConfigMap swap
    return path


# Points that expire a day after they are earned.
SHORT_LIVED = """\
campaign: short-lived
title: Points that expire after one day
active: {from: 2020-01-01}
points:
  expiry: {days: 1}
  rules:
    - id: like
      when: {event: social.liked}
      award: 5
"""


@dataclass
class PointsUnderTest:
    host: ServiceHost
    stub: points_pb2_grpc.PointsStub
    channel: grpc.aio.Channel
    rules_dir: Path
    settings: PointsSettings
    nats_url: str

    async def reload_rules(self) -> None:
        await rules_read(self.host)


async def rules_read(host: ServiceHost) -> None:
    """Wait until a service has read every rule file as it is on disk now."""
    assert host.kit is not None
    directories = [directory for directory, _ in host.kit.declared.rule_directories]

    async def read() -> bool:
        return all(directory.up_to_date() for directory in directories)

    await eventually(read, timeout=10)


def points_settings(database_url: str, nats_url: str, rules_dir: Path, **overrides: object) -> PointsSettings:
    values: dict[str, object] = dict(
        grpc_port=0,
        metrics_port=0,
        database_url=database_url,
        nats_url=nats_url,
        rules_dir=rules_dir,
        rules_poll_seconds=0.1,
        shutdown_grace_seconds=2,
        expiry_sweep_seconds=3600,
        log_level="WARNING",
    )
    values.update(overrides)
    return PointsSettings(**values)  # type: ignore[arg-type]


# -- benefits -------------------------------------------------------------------------------------

BEIJING = timezone(timedelta(hours=8))
TUESDAY_EVENING = datetime(2026, 11, 24, 19, 0, tzinfo=BEIJING)

CINEMA = """\
campaign: test-cinema
title: Cinema benefits for tests
active: {from: 2020-01-01}
timezone: Asia/Shanghai
benefits:
  tiers:
    - {id: basic, min_aum: 0}
    - {id: silver, min_aum: 50000}
    - {id: gold, min_aum: 100000}
  calendar:
    peak:
      weekly:
        - {from: "fri 12:00", until: "sun 24:00"}
      holidays: [2026-12-02]
  merchants:
    m-cinema: {category: cinema, public_discount: 0.10, name: Test Cinema}
    m-cheap: {category: cinema, public_discount: 0.60, name: Always Cheap Cinema}
  floor_price: 1.00
  offers:
    - id: gold-offpeak
      when: {category: cinema, tier: gold, period: off_peak}
      discount: {rate: 0.50}
      priority: 10
    - id: gold-peak
      when: {category: cinema, tier: gold, period: peak}
      discount: {rate: 0.20}
    - id: silver-any
      when: {category: cinema, tier: silver}
      discount: {rate: 0.30}
      budget: 50
      on_exhausted: fail
    - id: free-ticket
      when: {category: cinema}
      free_item: {item: cinema-ticket, per_year: {silver: 1, gold: 2}}
"""


async def set_aum(stub: benefits_pb2_grpc.BenefitsStub, customer: str, aum: str) -> None:
    await stub.SetCustomerAum(benefits_pb2.SetCustomerAumRequest(customer_id=customer, aum=aum, as_of=stamp()))


def quote_request(
    customer: str, at: datetime = TUESDAY_EVENING, merchant: str = "m-cinema", amount: str = "80.00"
) -> benefits_pb2.QuoteDiscountRequest:
    return benefits_pb2.QuoteDiscountRequest(customer_id=customer, merchant_id=merchant, amount=amount, at=stamp(at))


def claim_request(
    customer: str, *, key: str | None = None, free: bool = False, amount: str = "80.00", at: datetime = TUESDAY_EVENING
) -> benefits_pb2.ClaimBenefitRequest:
    return benefits_pb2.ClaimBenefitRequest(
        idempotency_key=key or uuid.uuid4().hex,
        customer_id=customer,
        merchant_id="m-cinema",
        amount=amount,
        at=stamp(at),
        use_free_item=free,
    )


# -- events ---------------------------------------------------------------------------------------


async def published_for(js: nats.js.JetStreamContext, subject: str, message_type, user: str) -> list:  # type: ignore[no-untyped-def]
    """Every event on `subject` about `user`, read with a throwaway ordered consumer."""
    found = []
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                break
            event = message_type.FromString(msg.data)
            if event.user_id == user:
                found.append((event, msg.headers))
    finally:
        await sub.unsubscribe()
    return found


async def ensure_referral_stream(js: nats.js.JetStreamContext) -> None:
    """The REFERRAL stream as the referral service's host makes it (create, or update to its
    config), whether or not a referral service on the session's NATS made it first."""
    config = stream_config("referral")
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)
