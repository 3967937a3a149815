"""Benefits in the database: customer AUM, free-item quotas, offer budgets, claims.

A claim locks the customer's row first (so one customer's claims take turns: 50 concurrent claims
on the last free ticket give exactly one winner), then the offer budgets, then decides with the
same pure quote as QuoteDiscount, on the usage it read under those locks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from sqlmodel import Session, select

from alliance.v1 import benefits_events_pb2 as events
from alliance.v1 import benefits_pb2 as api
from services.foundation.db import utcnow
from services.foundation.errors import FailedPrecondition
from services.foundation.idempotency import replay
from services.foundation.ids import new_id, ts
from services.foundation.money import from_cents, to_cents
from services.foundation.outbox import add_event
from services.points.benefits.quote import BenefitBook, Quote, QuoteInput, Usage
from services.points.events import CLAIMED
from services.points.models import BenefitClaim, CustomerAum, FreeItemUsage, OfferBudget
from services.points.quote_messages import claimed_quote, quote_message


class CustomerState(NamedTuple):
    aum: Decimal | None
    as_of: datetime | None
    usage: Usage


@dataclass(frozen=True)
class ClaimCommand:
    idempotency_key: str
    request_hash: str
    quote: QuoteInput
    use_free_item: bool


# -- AUM -----------------------------------------------------------------------------------------


def set_aum(session: Session, customer_id: str, aum: Decimal, as_of: datetime) -> api.CustomerAum:
    """Store a report unless a newer one is stored already (reports can arrive out of order)."""
    row = session.get(CustomerAum, customer_id, with_for_update=True)
    if row is None:
        row = CustomerAum(customer_id=customer_id)
    applied = row.as_of is None or as_of >= row.as_of
    if applied:
        row.aum_cents, row.as_of, row.updated_at = to_cents(aum), as_of, utcnow()
        session.add(row)
    stored = from_cents(row.aum_cents) if row.aum_cents is not None else aum
    return api.CustomerAum(customer_id=customer_id, aum=str(stored), as_of=ts(row.as_of), applied=applied)


# -- reads ---------------------------------------------------------------------------------------


def customer_state(session: Session, customer_id: str, *, lock: bool = False) -> CustomerState:
    row = session.get(CustomerAum, customer_id, with_for_update=lock)
    if row is None and lock:
        # The row is the customer's claim lock; a racing first claim fails on the key and retries.
        row = CustomerAum(customer_id=customer_id)
        session.add(row)
        session.flush()
    used = {
        (u.campaign_id, u.offer_id, u.year): u.used
        for u in session.exec(select(FreeItemUsage).where(FreeItemUsage.customer_id == customer_id))
    }
    budgets = select(OfferBudget).order_by(OfferBudget.campaign_id, OfferBudget.offer_id)
    if lock:
        budgets = budgets.with_for_update()
    spent = {(b.campaign_id, b.offer_id): from_cents(b.spent_cents) for b in session.exec(budgets)}
    aum = from_cents(row.aum_cents) if row is not None and row.aum_cents is not None else None
    return CustomerState(aum, row.as_of if row is not None else None, Usage(used, spent))


# -- claims --------------------------------------------------------------------------------------


def claim(session: Session, cmd: ClaimCommand, book: BenefitBook) -> api.ClaimBenefitResponse:
    previous = session.exec(select(BenefitClaim).where(BenefitClaim.idempotency_key == cmd.idempotency_key)).first()
    if previous is not None:
        return replay(
            request_hash=cmd.request_hash,
            stored_hash=previous.request_hash,
            stored_reply=previous.response,
            reply_type=api.ClaimBenefitResponse,
            what="claim",
            reference=f"claim {previous.id}",
        )
    state = customer_state(session, cmd.quote.customer_id, lock=True)
    inp = cmd.quote._replace(aum=state.aum)
    quote = book.quote(inp, state.usage)
    now = utcnow()
    if cmd.use_free_item:
        kind, campaign_id, offer_id, discount = _take_free_item(session, quote, inp)
    else:
        kind, campaign_id, offer_id, discount = _spend_budgets(session, quote, book, now)
    claim_id = new_id()
    response = api.ClaimBenefitResponse(claim_id=claim_id, quote=quote_message(quote, inp, state.as_of))
    session.add(
        BenefitClaim(
            id=claim_id,
            idempotency_key=cmd.idempotency_key,
            request_hash=cmd.request_hash,
            customer_id=inp.customer_id,
            merchant_id=inp.merchant_id,
            kind=kind,
            campaign_id=campaign_id,
            offer_id=offer_id,
            amount_cents=to_cents(inp.amount),
            discount_cents=to_cents(discount),
            response=response.SerializeToString(),
            claimed_at=inp.at,
        )
    )
    add_event(
        session,
        CLAIMED,
        events.BenefitClaimed(
            claim_id=claim_id,
            customer_id=inp.customer_id,
            merchant_id=inp.merchant_id,
            kind=kind,
            quote=claimed_quote(quote, inp, free_item=cmd.use_free_item),
            claimed_at=ts(inp.at),
        ),
    )
    return response


def _take_free_item(session: Session, quote: Quote, inp: QuoteInput) -> tuple[str, str, str, Decimal]:
    item = quote.free_item
    if item is None:
        reasons = "; ".join(f"{offer}: {why}" for offer, why in quote.skipped) or "no free-item offer applies here"
        raise FailedPrecondition(f"use_free_item: no free item available ({reasons})")
    year = quote_year(quote, item.campaign_id, inp)
    key = (item.campaign_id, item.offer_id, inp.customer_id, year)
    usage = session.get(FreeItemUsage, key) or FreeItemUsage(
        campaign_id=item.campaign_id, offer_id=item.offer_id, customer_id=inp.customer_id, year=year, used=0
    )
    usage.used += 1
    session.add(usage)
    return "free_item", item.campaign_id, item.offer_id, Decimal(0)


def quote_year(quote: Quote, campaign_id: str, inp: QuoteInput) -> str:
    return str(quote.years.get(campaign_id, inp.at.year))


def _spend_budgets(session: Session, quote: Quote, book: BenefitBook, now: datetime) -> tuple[str, str, str, Decimal]:
    if quote.blocked_by:
        raise FailedPrecondition(quote.blocked_by)
    if not quote.applied:
        raise FailedPrecondition("no discount applies to this purchase; nothing to claim")
    for applied in quote.applied:
        if book.offer_budget(applied.campaign_id, applied.offer_id) is None:
            continue
        budget = session.get(OfferBudget, (applied.campaign_id, applied.offer_id), with_for_update=True)
        if budget is None:
            budget = OfferBudget(campaign_id=applied.campaign_id, offer_id=applied.offer_id, spent_cents=0)
        budget.spent_cents += to_cents(applied.discount_amount)
        budget.updated_at = now
        session.add(budget)
    first = quote.applied[0]
    return "discount", first.campaign_id, first.offer_id, quote.discount_amount
