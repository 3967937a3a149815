"""The gRPC face of Benefits: validate, read the customer's state, quote or claim."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter
from sqlmodel import Session

from alliance.v1 import benefits_pb2 as api
from alliance.v1 import benefits_pb2_grpc
from services.foundation import validation
from services.foundation.db import Database, after_commit, utcnow
from services.foundation.errors import InvalidArgument, NotFound
from services.foundation.idempotency import command_hash
from services.foundation.ids import ts
from services.foundation.money import wire
from services.points import benefits_store
from services.points.benefits.quote import BenefitBook, Quote, QuoteInput, UnknownMerchant, Usage
from services.points.benefits_store import ClaimCommand, CustomerState
from services.points.quote_cache import QuoteCache
from services.points.quote_messages import applied_fields, quote_message


def moment(value: Timestamp, present: bool, name: str) -> datetime:
    """An optional time of a request: now when absent."""
    return validation.timestamp(value, name, present=present, now=utcnow(), required=False)


def quote_input(customer_id: str, merchant_id: str, category: str, amount: str, at: datetime) -> QuoteInput:
    parsed = validation.amount(amount)
    if parsed is None:
        raise InvalidArgument("amount", "is required")
    return QuoteInput(
        customer_id=validation.required_text(customer_id, "customer_id"),
        merchant_id=validation.required_text(merchant_id, "merchant_id"),
        category=category.strip() or None,
        amount=parsed,
        at=at,
        aum=None,
    )


def claim_hash(quote: QuoteInput, at_given: bool, use_free_item: bool) -> str:
    """A claim's idempotency hash, over its validated values. `at` counts only when the caller gave
    it: when absent it is the server's clock, which differs on every retry."""
    fields = {
        "customer_id": quote.customer_id,
        "merchant_id": quote.merchant_id,
        "category": quote.category,
        "amount": quote.amount,
        "at": quote.at if at_given else None,
        "use_free_item": use_free_item,
    }
    return command_hash("claim", fields)


# Quotes whose alliance discount is not above what the merchant gives the public anyway: the
# agreement with the merchant is broken, and ops follow it up per merchant.
NOT_BEATING_PUBLIC = Counter(
    "alliance_quotes_not_beating_public",
    "QuoteDiscount answers whose discount does not beat the merchant's public discount",
    ["merchant_id"],
)


class BenefitsServicer(benefits_pb2_grpc.BenefitsServicer):
    def __init__(self, db: Database, book: BenefitBook, cache: QuoteCache) -> None:
        self.db = db
        self.book = book
        self.cache = cache

    def _quote(self, inp: QuoteInput, state: CustomerState) -> Quote:
        try:
            return self.book.quote(inp._replace(aum=state.aum), state.usage)
        except UnknownMerchant as error:
            raise NotFound(f"merchant_id: {error}") from error

    async def QuoteDiscount(
        self, request: api.QuoteDiscountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.Quote:
        at = moment(request.at, request.HasField("at"), "at")
        inp = quote_input(request.customer_id, request.merchant_id, request.category, request.amount, at)
        state = self.cache.state_now(inp.customer_id) or await self.cache.state(inp.customer_id)
        quote = self._quote(inp, state)
        if not quote.beats_public:
            NOT_BEATING_PUBLIC.labels(inp.merchant_id).inc()
        return quote_message(quote, inp, state.as_of)

    async def ClaimBenefit(
        self, request: api.ClaimBenefitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.ClaimBenefitResponse:
        at = moment(request.at, request.HasField("at"), "at")
        key = validation.required_text(request.idempotency_key, "idempotency_key", validation.MAX_KEY)
        quote = quote_input(request.customer_id, request.merchant_id, request.category, request.amount, at)
        cmd = ClaimCommand(
            idempotency_key=key,
            request_hash=claim_hash(quote, request.HasField("at"), request.use_free_item),
            quote=quote,
            use_free_item=request.use_free_item,
        )
        self._quote(cmd.quote, CustomerState(None, None, _NO_USAGE))  # unknown merchant: NOT_FOUND before locking

        def unit(session: Session) -> api.ClaimBenefitResponse:
            response = benefits_store.claim(session, cmd, self.book)
            # Also on a replay: the first attempt may have committed for a caller that went away.
            after_commit(session, lambda: self.cache.forget_customer(cmd.quote.customer_id))
            after_commit(session, self.cache.forget_budgets)
            return response

        return await self.db.run(unit)

    async def GetEntitlements(
        self, request: api.GetEntitlementsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.Entitlements:
        customer_id = validation.required_text(request.customer_id, "customer_id")
        at = moment(request.at, request.HasField("at"), "at")
        state = await self.cache.state(customer_id)
        found = self.book.entitlements(customer_id, state.aum, at, state.usage)
        return api.Entitlements(
            customer_id=customer_id,
            tier=found[0].tier if found else "",
            aum=wire(state.aum),
            aum_as_of=ts(state.as_of),
            free_items=[
                api.FreeItemEntitlement(
                    campaign_id=f.campaign_id,
                    offer_id=f.offer_id,
                    item=f.item,
                    per_year=f.per_year,
                    used=f.used,
                    left=f.left,
                )
                for e in found
                for f in e.free_items
            ],
            available_now=[applied_fields(a) for e in found for a in e.available_now],
        )

    async def SetCustomerAum(
        self, request: api.SetCustomerAumRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.CustomerAum:
        customer_id = validation.required_text(request.customer_id, "customer_id")
        aum = validation.amount(request.aum, "aum")
        if aum is None:
            raise InvalidArgument("aum", "is required")
        if not request.HasField("as_of"):
            raise InvalidArgument("as_of", "is required")
        as_of = moment(request.as_of, True, "as_of")

        def unit(session: Session) -> api.CustomerAum:
            stored = benefits_store.set_aum(session, customer_id, aum, as_of)
            after_commit(session, lambda: self.cache.forget_customer(customer_id))
            return stored

        return await self.db.run(unit)


_NO_USAGE = Usage({}, {})
