"""Points multipliers from benefits offers (e.g. "double points off-peak at the cinema"), applied
to what a merchant.spend Earn awards.

The offer is decided like a quote: the customer's tier from their AUM, the period and weekday of
the purchase in the campaign's time zone, the merchant and its category from the Earn attributes
`merchant_id` and `merchant_category`. It multiplies every award of the purchase before caps and
budgets apply, so a cap still holds for doubled points; the award records the factor and offer.

The tier comes from the quote data in memory (QuoteCache): an AUM report made at this replica
counts at once, one made at another replica within QUOTE_CACHE_SECONDS. An Earn in that window
gets the multiplier of the previous tier. AUM is reported daily by core banking, so this is
accepted; the award records which offer applied, for audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal

from services.points.benefits.quote import BenefitBook, PointsMultiplier, QuoteInput
from services.points.campaigns.evaluation import Candidate
from services.points.commands import EarnCommand
from services.points.quote_cache import QuoteCache

SPEND_EVENT = "merchant.spend"


class SpendMultipliers:
    def __init__(self, book: BenefitBook, cache: QuoteCache) -> None:
        self.book = book
        self.cache = cache

    async def apply(self, cmd: EarnCommand, candidates: Sequence[Candidate]) -> list[Candidate]:
        if not candidates or cmd.event_type != SPEND_EVENT:
            return list(candidates)
        merchant_id = cmd.attributes.get("merchant_id", "")
        category = cmd.attributes.get("merchant_category") or None
        if not self.book.multiplier_possible(merchant_id, category, cmd.occurred_at):
            return list(candidates)  # most purchases: no lookup of the customer at all
        state = await self.cache.state(cmd.user_id)
        purchase = QuoteInput(cmd.user_id, merchant_id, category, cmd.amount or Decimal(0), cmd.occurred_at, state.aum)
        found = self.book.points_multiplier(purchase)
        if found is None:
            return list(candidates)
        return [multiplied(candidate, found) for candidate in candidates]


def multiplied(candidate: Candidate, by: PointsMultiplier) -> Candidate:
    points = int((Decimal(candidate.points) * by.factor).to_integral_value(ROUND_HALF_UP))
    return replace(candidate, points=points, multiplier=by.factor, multiplier_offer=f"{by.campaign_id}/{by.offer_id}")
