"""`alliance benefits quote`: what a customer would pay at a merchant, from the campaign files
alone. Reads no database, so no free items are counted as used and no budget as spent.

`alliance benefits entitlements CUSTOMER`: what a customer has, asked of a running points service
(tier, AUM and its as-of time, free items used and left this year, offers available now)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import grpc

from alliance.v1 import benefits_pb2 as api
from alliance.v1 import benefits_pb2_grpc
from services.foundation.rules.engine import Matcher
from services.foundation.rules.errors import RuleFileError
from services.points.benefits.quote import BenefitBook, Quote, QuoteInput, UnknownMerchant, Usage
from services.points.campaign_file.benefits_model import percent
from services.points.campaign_file.loader import load_campaign
from services.points.campaign_file.model import Campaign
from services.registry import SERVICES


def add_benefits_parser(subparsers: Any) -> None:
    benefits = subparsers.add_parser("benefits", help="dry-run benefit quotes against the campaign files")
    commands = benefits.add_subparsers(dest="benefits_command", metavar="SUBCOMMAND", required=True)
    quote_cmd = commands.add_parser(
        "quote",
        help="the discount, free item and extras a purchase would get, writing nothing",
        description="Quote a purchase from the campaign files alone. No database is read: free items "
        "count as unused and offer budgets as unspent.",
    )
    quote_cmd.add_argument("--merchant", required=True, help="merchant id, e.g. m-cinema-01")
    quote_cmd.add_argument("--amount", required=True, type=_decimal, help="purchase amount in CNY, e.g. 80")
    quote_cmd.add_argument(
        "--at",
        type=_moment,
        default=None,
        help="ISO date-time with offset (default: now), e.g. 2026-11-24T19:00:00+08:00",
    )
    quote_cmd.add_argument(
        "--aum", type=_decimal, default=None, help="customer AUM in CNY (default: unknown, lowest tier)"
    )
    quote_cmd.add_argument("--category", default=None, help="merchant category; overrides the merchant data")
    quote_cmd.add_argument("--customer", default="cli", help="customer id shown in the quote (default: cli)")
    quote_cmd.add_argument("--rules-dir", default="rules", help="the rules directory (default: rules)")
    quote_cmd.set_defaults(func=quote)

    entitlements_cmd = commands.add_parser(
        "entitlements",
        help="a customer's tier, free items used and left this year, and offers now (running service)",
        description="Ask a running points service (GetEntitlements) what a customer has.",
    )
    entitlements_cmd.add_argument("customer_id")
    entitlements_cmd.add_argument(
        "--address", default=SERVICES["points"].address, help="points service, gRPC (default %(default)s)"
    )
    entitlements_cmd.add_argument("--at", type=_moment, default=None, help="ISO date-time with offset (default: now)")
    entitlements_cmd.set_defaults(func=entitlements)


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0: {text!r}")
    return value


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date-time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a UTC offset, e.g. {text}+08:00")
    return moment


def load_campaigns(directory: Path) -> dict[str, Campaign]:
    campaigns: dict[str, Campaign] = {}
    if not directory.is_dir():
        print(f"note: {directory} does not exist; no campaigns")
        return campaigns
    for file in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        if file.name.startswith("."):
            continue
        try:
            campaigns[str(file)] = load_campaign(str(file), file.read_bytes())
        except RuleFileError as error:
            print(f"note: {file} is refused and left out ({error})")
    return campaigns


def quote(args: argparse.Namespace) -> int:
    at = args.at or datetime.now().astimezone()
    book = BenefitBook(Matcher(), name="benefits-cli")
    book.replace(load_campaigns(Path(args.rules_dir) / "campaigns"))
    for error in book.rejected.values():
        print(f"note: {error}")
    inp = QuoteInput(args.customer, args.merchant, args.category, args.amount, at, args.aum)
    try:
        result = book.quote(inp, Usage())
    except UnknownMerchant as error:
        print(f"error: {error} (--category)")
        return 1
    print_quote(inp, result, book)
    return 0


def print_quote(inp: QuoteInput, quote: Quote, book: BenefitBook) -> None:
    aum = "unknown" if inp.aum is None else f"{inp.aum} CNY"
    print(f"Purchase of {inp.amount} CNY at {inp.merchant_id} ({quote.category}) at {inp.at.isoformat()}, AUM {aum}")
    merchant = book.merchant(inp.merchant_id, inp.at)
    if merchant is not None and merchant.name:
        print(f"  merchant: {merchant.name}")
    if quote.campaign_id is not None:
        print(f"  tier {quote.tier}, {quote.period.replace('_', '-')} (campaign {quote.campaign_id})")
    for applied in quote.applied:
        print(
            f"  discount {applied.offer_id} ({applied.campaign_id}): {applied.detail}, -{applied.discount_amount} CNY"
        )
    print(f"  pays {quote.final_amount} CNY (discount {quote.discount_amount} CNY)")
    if quote.blocked_by:
        print(f"  BLOCKED: {quote.blocked_by} (a claim would be refused)")
    if quote.free_item is not None:
        print(f"  free item {quote.free_item.offer_id} ({quote.free_item.campaign_id}): {quote.free_item.detail}")
    for extra in quote.extras:
        print(f"  extra {extra.offer_id} ({extra.campaign_id}): {extra.detail}")
    for offer_id, reason in quote.skipped:
        print(f"  skipped {offer_id}: {reason}")
    if quote.public_discount is not None:
        verdict = "beats" if quote.beats_public else "does NOT beat"
        print(f"  {verdict} the public discount of {percent(quote.public_discount)} at this merchant")
    print(f"  {quote.explanation}")
    print("No database was read: free items count as unused and budgets as unspent. Nothing was written.")


def entitlements(args: argparse.Namespace) -> int:
    request = api.GetEntitlementsRequest(customer_id=args.customer_id)
    if args.at is not None:
        request.at.FromDatetime(args.at)
    try:
        with grpc.insecure_channel(args.address) as channel:
            reply = benefits_pb2_grpc.BenefitsStub(channel).GetEntitlements(request, timeout=10)
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    aum = f"{reply.aum} CNY as of {reply.aum_as_of.ToJsonString()}" if reply.aum else "not reported (lowest tier)"
    print(f"Customer {reply.customer_id}: tier {reply.tier or '-'}, AUM {aum}")
    for item in reply.free_items:
        print(
            f"  free {item.item} ({item.campaign_id}/{item.offer_id}): "
            f"{item.used} used, {item.left} left of {item.per_year} this year"
        )
    for offer in reply.available_now:
        print(f"  now: {offer.offer_id} ({offer.campaign_id}): {offer.detail}")
    if not reply.free_items and not reply.available_now:
        print("  no benefits in force for this customer now")
    return 0
