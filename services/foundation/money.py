"""CNY amounts in every service: Decimal in the domain, integer cents in the database, decimal
strings on the wire."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def to_cents(amount: Decimal) -> int:
    return int((amount.quantize(CENT, rounding=ROUND_HALF_UP) * 100).to_integral_value())


def from_cents(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT)


def wire(amount: Decimal | None) -> str:
    return "" if amount is None else str(amount.quantize(CENT, rounding=ROUND_HALF_UP))
