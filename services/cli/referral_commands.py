"""`alliance referral ...`: the referral service for ops: codes and their QR images, a partner's
tree, the review queue, bulk imports of referral history and the leaderboards, over gRPC to a
running referral service; and `simulate`, a dry run of the referral rule files on a scenario,
with no service at all (a throwaway SQLite database).

examples:
  alliance referral code u-1001 --qr poster.svg
  alliance referral code u-1001 --reissue                    # revoke the code, issue a new one
  alliance referral tree u-1001 --depth 3
  alliance referral review list
  alliance referral review approve u-2002 --reviewer ops-li --note "same family, checked"
  alliance referral review reject u-2003 --reviewer ops-li --note "device farm"
  alliance referral import history.csv --source mini-program-2025
  alliance referral leaderboard --period week --kind employee
  alliance referral simulate scenario.json --rules-dir rules
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlmodel import Session, select

from alliance.v1 import referral_pb2 as api
from alliance.v1 import referral_pb2_grpc
from services.cli.rules_commands import _rule_files, load_policies
from services.foundation import migrations
from services.foundation.db import Database
from services.foundation.errors import DomainError
from services.referral import codes as referral_codes
from services.referral import conversions
from services.referral.conversions import ConversionCommand
from services.referral.linking import Outcome, Proposal, link_all
from services.referral.models import SCHEMA, LinkState, Partner
from services.referral.policy import Policy, combine
from services.registry import SERVICES

T = TypeVar("T")
TIMEOUT = 10.0
IMPORT_COLUMNS = ("user_id", "referrer_id", "code", "linked_at", "kind", "referrer_kind", "device_hash", "phone_hash")
KIND_VALUES = {"": api.USER_KIND_UNSPECIFIED, "customer": api.USER_KIND_CUSTOMER, "employee": api.USER_KIND_EMPLOYEE}
KIND_NAMES = {
    api.USER_KIND_UNSPECIFIED: "customer",
    api.USER_KIND_CUSTOMER: "customer",
    api.USER_KIND_EMPLOYEE: "employee",
}
STATE_NAMES = {
    api.LINK_STATE_UNSPECIFIED: "no link",
    api.LINK_STATE_ACTIVE: "active",
    api.LINK_STATE_UNDER_REVIEW: "under review",
    api.LINK_STATE_REJECTED: "rejected",
}
PERIODS = {
    "day": api.PERIOD_DAY,
    "week": api.PERIOD_WEEK,
    "month": api.PERIOD_MONTH,
    "year": api.PERIOD_YEAR,
    "all": api.PERIOD_ALL,
}
QR_FORMATS = {".svg": api.QR_FORMAT_SVG, ".png": api.QR_FORMAT_PNG}
FIRST_REFUSALS = 20
_CHUNK = 1000  # links per ImportChunk message of a batch


class _Help(argparse.HelpFormatter):
    """Refills prose paragraphs of a description or epilog; keeps indented lines (examples) as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        # Prose paragraphs are refilled whole; indented lines (examples) are kept as written.
        lines: list[str] = []
        prose: list[str] = []

        def flush() -> None:
            if prose:
                lines.append(super(_Help, self)._fill_text(" ".join(prose), width, indent))
                prose.clear()

        for line in text.splitlines():
            if line.strip() and not line[0].isspace():
                prose.append(line.strip())
                continue
            flush()
            lines.append(indent + line)
        flush()
        return "\n".join(lines)


_HELP = _Help


# -- the parser ---------------------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    referral = commands.add_parser(
        "referral",
        help="referral codes, trees, reviews, imports, leaderboards; dry-run the referral rules",
        description=__doc__,
        formatter_class=_HELP,
    )
    default = SERVICES["referral"].address
    referral.add_argument("--address", default=default, help=f"the referral service's gRPC address (default {default})")
    # Also accepted after the action (`alliance referral tree U --address H:P`); set only when given.
    address = argparse.ArgumentParser(add_help=False)
    address.add_argument(
        "--address", default=argparse.SUPPRESS, help=f"the referral service's gRPC address (default {default})"
    )
    actions = referral.add_subparsers(dest="action", metavar="ACTION", required=True)

    code = actions.add_parser(
        "code",
        parents=[address],
        help="a user's referral code and QR code (issued on first call)",
        description="Print the user's referral code and the link its QR code holds, issuing the code if the "
        "user has none. --qr writes the QR image (SVG or PNG, from the extension). --reissue revokes the "
        "current code (registrations through it are refused from then on) and issues a new one; it is "
        "idempotent by key: a key is generated and printed unless --idempotency-key gives one, and "
        "re-running with the same key returns the same new code instead of revoking again.",
        epilog="examples:\n  alliance referral code u-1001\n  alliance referral code u-1001 --qr poster.png\n"
        "  alliance referral code e-77 --kind employee --qr badge.svg\n"
        "  alliance referral code u-1001 --reissue --idempotency-key ticket-4711",
        formatter_class=_HELP,
    )
    code.add_argument("user_id", metavar="USER")
    code.add_argument("--kind", choices=["customer", "employee"], default="customer", help="recorded on first sight")
    code.add_argument("--reissue", action="store_true", help="revoke the current code and issue a new one")
    code.add_argument("--idempotency-key", help="with --reissue: a key that makes a retried reissue safe")
    code.add_argument("--qr", metavar="FILE", type=Path, help="write the QR image to FILE.svg or FILE.png")
    code.set_defaults(func=show_code)

    tree = actions.add_parser(
        "tree",
        parents=[address],
        help="a partner: its path to the root, its subtree and its referrals as a tree",
        description="Show a partner: how it was referred, the referrers above it up to the root, the "
        "statistics of everything below it (size, depth, conversions by product, referral points) and "
        "the users it referred, drawn as a tree --depth levels down, newest first.",
        epilog="examples:\n  alliance referral tree u-1001\n  alliance referral tree u-1001 --depth 4 --limit 100",
        formatter_class=_HELP,
    )
    tree.add_argument("user_id", metavar="USER")
    tree.add_argument("--depth", type=_positive, default=2, help="levels of referrals to draw (default 2)")
    tree.add_argument(
        "--limit", type=_positive, default=20, help="referrals drawn under each partner, newest first (default 20)"
    )
    tree.set_defaults(func=show_tree)

    review = actions.add_parser(
        "review",
        help="the review queue: links a velocity rule flagged",
        description="Links flagged by a velocity rule are in the tree but their conversions earn nothing "
        "until approved. Approve: the link counts and its held conversions are rewarded. Reject (flagged "
        "or not): the user leaves the referrer's tree and every reward paid through the link is revoked.",
        epilog="examples:\n  alliance referral review list --limit 200\n"
        '  alliance referral review approve u-2002 --reviewer ops-li --note "checked by phone"\n'
        '  alliance referral review reject u-2003 --reviewer ops-li --note "device farm"',
        formatter_class=_HELP,
    )
    decisions = review.add_subparsers(dest="review_action", metavar="ACTION", required=True)
    listing = decisions.add_parser(
        "list",
        parents=[address],
        help="flagged links, oldest first",
        description="Flagged links, oldest first: the user, the referrer, the velocity rule, why, and when.",
        epilog="example:\n  alliance referral review list --limit 500",
        formatter_class=_HELP,
    )
    listing.add_argument("--limit", type=_positive, default=100, help="at most this many (default 100)")
    listing.set_defaults(func=list_reviews)
    for name, decision, what, note in (
        ("approve", api.REVIEW_DECISION_APPROVE, "count the link and reward its held conversions", "checked by phone"),
        (
            "reject",
            api.REVIEW_DECISION_REJECT,
            "take the user out of the tree and revoke every reward paid through the link",
            "device farm",
        ),
    ):
        decide = decisions.add_parser(
            name,
            parents=[address],
            help=what,
            description=f"{name.title()} the link of a referred user: {what}.",
            epilog=f'example:\n  alliance referral review {name} u-2002 --reviewer ops-li --note "{note}"',
            formatter_class=_HELP,
        )
        decide.add_argument("user_id", metavar="USER", help="the referred user whose link is decided")
        decide.add_argument("--reviewer", required=True, help="who decided, for the audit trail")
        decide.add_argument("--note", default="", help="why")
        decide.set_defaults(func=review_link, decision=decision)

    imports = actions.add_parser(
        "import",
        parents=[address],
        help="import referral history from a CSV or JSON Lines file",
        description="Import existing links through the same checks as registrations (unknown or revoked "
        "codes, self-referral, users already referred, cycles, velocity rules). FILE is CSV with a header "
        f"({','.join(IMPORT_COLUMNS)}; required: user_id, linked_at and referrer_id or code) or JSON Lines "
        "(.jsonl, .ndjson) with the same keys. linked_at is an ISO date-time with a UTC offset; kind and "
        "referrer_kind are customer (default) or employee. The file is sent in batches, each its own call "
        "with batch id <sha256 of the file, 16 hex>-<batch number>: re-running the same file is safe (the "
        "service answers each batch with its first report) — but keep the same --batch-size. Exit code 1 "
        "if any link was refused.",
        epilog="examples:\n  alliance referral import history.csv\n"
        "  alliance referral import links.jsonl --batch-size 50000 --source mini-program-2025\n\n"
        "history.csv:\n  user_id,referrer_id,code,linked_at,kind\n"
        "  u-2,u-1,,2025-03-01T10:00:00+08:00,customer\n  u-3,,ABCD2345,2025-03-02T09:30:00+08:00,",
        formatter_class=_HELP,
    )
    imports.add_argument("file", metavar="FILE", type=Path)
    imports.add_argument(
        "--batch-size", type=_positive, default=10_000, help="links per ImportLinks call (default 10000)"
    )
    imports.add_argument("--source", default="", help="where the history comes from, e.g. mini-program-2025")
    imports.add_argument("--timeout", type=float, default=600.0, help="seconds per batch (default 600)")
    imports.set_defaults(func=import_links)

    board = actions.add_parser(
        "leaderboard",
        parents=[address],
        help="top partners by conversions in a period",
        description="Top partners by conversions in the period now (the bank's time zone); customers and "
        "employees are ranked apart; --campaign: conversions of one referral campaign of the rules.",
        epilog="examples:\n  alliance referral leaderboard\n"
        "  alliance referral leaderboard --period week --kind employee --top 20\n"
        "  alliance referral leaderboard --period all --campaign referral-autumn-2026",
        formatter_class=_HELP,
    )
    board.add_argument("--period", choices=list(PERIODS), default="month", help="default month")
    board.add_argument("--campaign", default="", help="a campaign id of rules/referral/ (default: all conversions)")
    board.add_argument("--kind", choices=["customer", "employee"], default="customer", help="default customer")
    board.add_argument("--top", type=_positive, default=10, help="how many (default 10, at most 100)")
    board.set_defaults(func=show_leaderboard)

    simulate_cmd = actions.add_parser(
        "simulate",
        help="dry-run the referral rule files on registrations and conversions (no service needed)",
        description="Run a scenario through the real linking and conversion code with the policy of "
        "RULES_DIR/referral/*.yaml, on a throwaway SQLite database: which registrations are linked, "
        "put under review (and by which velocity rule) or refused, and which conversions are rewarded at "
        "which levels. Events are staged in the throwaway outbox, never published; nothing is kept. "
        "Events are run in time order (registrations before conversions at the same moment).",
        epilog="SCENARIO.json:\n"
        '  {"registrations": [\n'
        '     {"user_id": "u-2", "referrer_id": "u-1", "at": "2026-11-23T10:00:00+08:00",\n'
        '      "device_hash": "d-9", "phone_hash": "p-3"}],\n'
        '   "conversions": [\n'
        '     {"user_id": "u-2", "product": "credit_card", "at": "2026-11-24T09:00:00+08:00"}]}\n\n'
        "registrations: user_id and at required; referrer_id or code (codes are random, so the throwaway "
        "database has none: use referrer_id); optional kind, referrer_kind (customer|employee), "
        "device_hash, phone_hash.\nconversions: user_id, product and at required; optional business_ref "
        "(default sim-<n>), attributes.\n\nexample:\n  alliance referral simulate scenario.json --rules-dir rules",
        formatter_class=_HELP,
    )
    simulate_cmd.add_argument("scenario", metavar="SCENARIO.json", type=Path)
    simulate_cmd.add_argument("--rules-dir", type=Path, default=Path("rules"), help="default: rules")
    simulate_cmd.set_defaults(func=simulate)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# -- talking to the service ---------------------------------------------------------------------


class Failed(Exception):
    """A call failed: the message is printed and the command exits 1."""


@contextmanager
def _service(args: argparse.Namespace) -> Iterator[referral_pb2_grpc.ReferralServiceStub]:
    with grpc.insecure_channel(args.address) as channel:
        yield referral_pb2_grpc.ReferralServiceStub(channel)


def _call(args: argparse.Namespace, rpc: Callable[..., T], request: Any, timeout: float = TIMEOUT) -> T:
    try:
        return rpc(request, timeout=timeout)
    except grpc.RpcError as error:
        raise Failed(_rpc_problem(args, error)) from None


def _rpc_problem(args: argparse.Namespace, error: grpc.RpcError) -> str:
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    text = f"{code.name}: {details}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        text += f" (is the referral service running at {args.address}? see --address)"
    return text


def _run(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except Failed as failed:
            print(f"error: {failed}", file=sys.stderr)
            return 1

    run.__name__ = command.__name__
    run.__doc__ = command.__doc__
    return run


def _when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).astimezone().isoformat(sep=" ", timespec="seconds")


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def _table(header: list[str], rows: list[list[str]], right: Iterable[int] = ()) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    aligned = set(right)

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in aligned else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(header).rstrip())
    for row in rows:
        print(line(row).rstrip())


# -- code ---------------------------------------------------------------------------------------


@_run
def show_code(args: argparse.Namespace) -> int:
    """`referral code USER`: the code, its QR payload, and the image on request."""
    if args.idempotency_key and not args.reissue:
        print("error: --idempotency-key only goes with --reissue", file=sys.stderr)
        return 2
    request = api.IssueCodeRequest(
        user_id=args.user_id, kind=KIND_VALUES[args.kind], reissue=args.reissue, idempotency_key=""
    )
    image_format = None
    if args.qr is not None:
        image_format = QR_FORMATS.get(args.qr.suffix.lower())
        if image_format is None:
            print(f"error: --qr {args.qr}: the file must end in .svg or .png", file=sys.stderr)
            return 2
        request.qr_images.append(image_format)
    generated = False
    if args.reissue:
        request.idempotency_key = args.idempotency_key or f"reissue-{uuid.uuid4().hex}"
        generated = not args.idempotency_key
    with _service(args) as stub:
        reply = _call(args, stub.IssueCode, request)
    state = "issued now" if reply.issued else f"issued {_when(reply.issued_at)}"
    print(f"user        {reply.user_id}")
    print(f"code        {reply.code}   ({state})")
    print(f"QR payload  {reply.qr_payload}")
    if args.reissue:
        print(f"idempotency key  {request.idempotency_key}")
        if generated:
            print(f"  to retry this reissue safely: --idempotency-key {request.idempotency_key}")
    if args.qr is not None:
        try:
            if image_format == api.QR_FORMAT_SVG:
                args.qr.write_text(reply.qr_svg, encoding="utf-8")
            else:
                args.qr.write_bytes(reply.qr_png)
        except OSError as error:
            raise Failed(f"cannot write {args.qr}: {error.strerror or error}") from None
        print(f"QR image    {args.qr} ({args.qr.stat().st_size} bytes)")
    return 0


# -- tree ---------------------------------------------------------------------------------------


@_run
def show_tree(args: argparse.Namespace) -> int:
    """`referral tree USER`: the partner, its path to the root, its subtree and its referrals."""
    with _service(args) as stub:
        partner = _call(args, stub.GetPartner, api.GetPartnerRequest(user_id=args.user_id)).partner
        path = _call(args, stub.GetPathToRoot, api.GetPathToRootRequest(user_id=args.user_id))
        stats = _call(args, stub.GetSubtreeStats, api.GetSubtreeStatsRequest(user_id=args.user_id))
        code = f"code {partner.code}" if partner.code else "no active code"
        print(
            f"Partner {partner.user_id} ({KIND_NAMES[partner.kind]}), {code}, known since {_when(partner.created_at)}"
        )
        if partner.HasField("link"):
            print(f"  referred by {partner.link.referrer_id}: {_link_text(partner.link)}")
        else:
            print("  a root: nobody referred this user")

        ancestors = list(path.ancestors)
        if ancestors:
            more = " (and more above: the path is cut at 100 levels)" if path.truncated else ""
            print(f"Path to the root, nearest first ({_plural(len(ancestors), 'level')}){more}:")
            shown = ancestors if len(ancestors) <= 12 else [*ancestors[:10], None, ancestors[-1]]
            for step in shown:
                if step is None:
                    print(f"  {'...':>5}  ({len(ancestors) - 11} more)")
                    continue
                notes = []
                if step.link_state != api.LINK_STATE_ACTIVE:
                    notes.append(f"link below {STATE_NAMES[step.link_state]}")
                if step is ancestors[-1] and not path.truncated:
                    notes.append("root")
                note = f"  ({', '.join(notes)})" if notes else ""
                print(f"  {step.level:>5}  {step.user_id}  {KIND_NAMES[step.kind]}{note}")

        print(
            f"Subtree: {_plural(stats.size, 'user')} below, {stats.direct} direct, {_plural(stats.depth, 'level')} deep"
        )
        if stats.conversions:
            total = sum(p.conversions for p in stats.conversions)
            products = ", ".join(f"{p.product} {p.conversions}" for p in stats.conversions)
            print(f"  conversions below: {total} ({products})")
        else:
            print("  conversions below: none")
        print(
            f"  referral points: {stats.referral_points} earned by {partner.user_id}, "
            f"{stats.subtree_referral_points} by everyone below"
        )

        if not partner.direct_referrals:
            print("No referrals.")
            return 0
        print(f"Referrals, newest first ({_plural(args.depth, 'level')}, at most {args.limit} under each):")
        print(f"{partner.user_id}  ({partner.direct_referrals} direct, {partner.descendants} below)")
        _draw(args, stub, partner.user_id, partner.direct_referrals, "", 1)
    return 0


def _draw(
    args: argparse.Namespace,
    stub: referral_pb2_grpc.ReferralServiceStub,
    user_id: str,
    direct: int,
    indent: str,
    level: int,
) -> None:
    links, more = _referrals(args, stub, user_id, args.limit)
    hidden = max(direct - len(links), 1 if more else 0)
    for i, link in enumerate(links):
        last = i == len(links) - 1 and not hidden
        child = _call(args, stub.GetPartner, api.GetPartnerRequest(user_id=link.user_id)).partner
        counts = (
            f"{child.direct_referrals} direct, {child.descendants} below" if child.direct_referrals else "no referrals"
        )
        print(f"{indent}{'└── ' if last else '├── '}{link.user_id}  {_link_text(link)}  ({counts})")
        if child.direct_referrals and level < args.depth:
            _draw(args, stub, link.user_id, child.direct_referrals, indent + ("    " if last else "│   "), level + 1)
    if hidden:
        print(f"{indent}└── ... {hidden} more")


def _referrals(
    args: argparse.Namespace, stub: referral_pb2_grpc.ReferralServiceStub, user_id: str, limit: int
) -> tuple[list[api.Link], bool]:
    """Up to `limit` direct referrals, newest first (ListReferrals page by page), and whether there
    are more."""
    links: list[api.Link] = []
    token = ""
    while True:
        request = api.ListReferralsRequest(user_id=user_id, page_size=min(500, limit - len(links)), page_token=token)
        reply = _call(args, stub.ListReferrals, request)
        links.extend(reply.links)
        token = reply.next_page_token
        if not token or len(links) >= limit:
            return links[:limit], bool(token) or len(links) > limit


def _link_text(link: api.Link) -> str:
    text = STATE_NAMES[link.state]
    if link.state == api.LINK_STATE_UNDER_REVIEW:
        text = f"UNDER REVIEW ({link.flagged_by}: {link.flag_reason})"
    elif link.state == api.LINK_STATE_REJECTED:
        text = f"REJECTED by {link.reviewed_by or '?'}"
    via = f"code {link.code}" if link.code else link.source or "?"
    return f"{text}, linked {_when(link.linked_at)} via {via}"


# -- reviews ------------------------------------------------------------------------------------


@_run
def list_reviews(args: argparse.Namespace) -> int:
    """`referral review list`: flagged links as a table, oldest first."""
    links: list[api.Link] = []
    token = ""
    with _service(args) as stub:
        while True:
            size = min(500, args.limit - len(links))
            reply = _call(args, stub.ListReviews, api.ListReviewsRequest(page_size=size, page_token=token))
            links.extend(reply.links)
            token = reply.next_page_token
            if not token or len(links) >= args.limit:
                break
    if not links:
        print("No links under review.")
        return 0
    rows = [[l.user_id, l.referrer_id, l.flagged_by, l.flag_reason, _when(l.linked_at)] for l in links]  # noqa: E741
    _table(["USER", "REFERRER", "RULE", "REASON", "LINKED AT"], rows)
    more = f"; more are waiting (--limit {args.limit} reached)" if token else ""
    print(f"{_plural(len(links), 'link')} under review{more}")
    return 0


@_run
def review_link(args: argparse.Namespace) -> int:
    """`referral review approve|reject USER`."""
    request = api.ReviewLinkRequest(
        user_id=args.user_id, decision=args.decision, reviewer=args.reviewer, note=args.note
    )
    with _service(args) as stub:
        reply = _call(args, stub.ReviewLink, request)
    link = reply.link
    verb = "approved" if args.decision == api.REVIEW_DECISION_APPROVE else "rejected"
    print(f"{link.user_id}'s link to {link.referrer_id}: {verb} by {link.reviewed_by} at {_when(link.reviewed_at)}")
    if link.review_note:
        print(f"  note: {link.review_note}")
    if reply.replayed:
        print("  (the link already had this decision: nothing changed)")
    elif args.decision == api.REVIEW_DECISION_APPROVE:
        print(f"  {_plural(reply.conversions_released, 'held conversion')} released and rewarded")
    else:
        print(
            f"  {link.user_id} left {link.referrer_id}'s tree; rewards of "
            f"{_plural(reply.conversions_revoked, 'conversion')} revoked"
        )
    return 0


# -- leaderboard --------------------------------------------------------------------------------


@_run
def show_leaderboard(args: argparse.Namespace) -> int:
    """`referral leaderboard`: top partners by conversions."""
    request = api.GetLeaderboardRequest(
        period=PERIODS[args.period], campaign=args.campaign, kind=KIND_VALUES[args.kind], top=args.top
    )
    with _service(args) as stub:
        reply = _call(args, stub.GetLeaderboard, request)
    scope = f"campaign {args.campaign}" if args.campaign else "all conversions"
    period = "of all time" if args.period == "all" else f"{reply.period_key} ({args.period})"
    print(f"Leaderboard {period}, {args.kind}s, {scope}")
    if not reply.entries:
        print("No conversions in this period.")
        return 0
    rows = [[str(e.rank), e.user_id, str(e.conversions)] for e in reply.entries]
    _table(["RANK", "USER", "CONVERSIONS"], rows, right=(0, 2))
    return 0


# -- import -------------------------------------------------------------------------------------


@dataclass
class Refused:
    line: int
    user_id: str
    referrer_id: str
    reason: str
    message: str


@dataclass
class ImportReport:
    read: int = 0
    linked: int = 0
    under_review: int = 0
    already_linked: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    first: list[Refused] = field(default_factory=list)
    batches: int = 0
    replayed: int = 0

    def refuse(self, refusals: Iterable[Refused]) -> None:
        for refusal in refusals:
            self.refused[refusal.reason] += 1
            self.first.append(refusal)
        self.first = sorted(self.first, key=lambda r: r.line)[:FIRST_REFUSALS]


@dataclass
class _Row:
    line: int
    values: dict[str, str] = field(default_factory=dict)  # what could be read
    problem: str = ""  # why the record cannot become a link


@_run
def import_links(args: argparse.Namespace) -> int:
    """`referral import FILE`: the file to ImportLinks, batch by batch, then the report."""
    file: Path = args.file
    try:
        digest = _sha256(file)
        rows = _read_rows(file)
        first_row = next(rows, None)  # the header is checked before anything is sent
    except (OSError, ValueError) as error:
        print(f"error: {file}: {_reading_problem(error)}", file=sys.stderr)
        return 1
    if first_row is None:
        print(f"{file}: no links to import")
        return 0
    print(f"Importing {file} (sha256 {digest[:16]}) in batches of {args.batch_size} links")
    report = ImportReport()
    stopped = ""
    with _service(args) as stub:
        try:
            for number, (lines, links, local) in enumerate(
                _batches(itertools.chain([first_row], rows), args.batch_size, report), start=1
            ):
                report.refuse(local)
                if links:
                    stopped = _send_batch(args, stub, f"{digest[:16]}-{number}", lines, links, report)
                    if stopped:
                        break
        except (OSError, ValueError) as error:
            stopped = f"{file}: {_reading_problem(error)}"
    _print_import_report(file, report)
    if stopped:
        print(f"error: {stopped}", file=sys.stderr)
        print(
            "Stopped. Re-running the same file (with the same --batch-size) is safe: batches already "
            "imported answer with their first report.",
            file=sys.stderr,
        )
        return 1
    return 1 if report.refused else 0


def _reading_problem(error: Exception) -> str:
    if isinstance(error, OSError):
        return f"cannot be read: {error.strerror or error}"
    return str(error)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_json_lines(file: Path) -> bool:
    if file.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return True
    if file.suffix.lower() == ".csv":
        return False
    with file.open(encoding="utf-8-sig") as handle:
        for line in handle:
            if line.strip():
                return line.lstrip().startswith("{")
    return False


def _read_rows(file: Path) -> Iterator[_Row]:
    """The file's records with their line numbers (1-based; a CSV record's first line)."""
    return _json_rows(file) if _is_json_lines(file) else _csv_rows(file)


def _csv_rows(file: Path) -> Iterator[_Row]:
    with file.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header: list[str] | None = None
        previous = 0
        for record in reader:
            line, previous = previous + 1, reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                header = [name.strip().lower() for name in record]
                _check_header(header)
                continue
            values = {name: cell.strip() for name, cell in zip(header, record, strict=False) if name}
            problem = f"{len(record)} fields, the header has {len(header)}" if len(record) != len(header) else ""
            yield _Row(line, values, problem)


def _check_header(header: list[str]) -> None:
    unknown = [name for name in header if name and name not in IMPORT_COLUMNS]
    duplicated = [name for name, n in Counter(header).items() if name and n > 1]
    missing = [name for name in ("user_id", "linked_at") if name not in header]
    if "referrer_id" not in header and "code" not in header:
        missing.append("referrer_id or code")
    problems = []
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)}")
    if duplicated:
        problems.append(f"column(s) {', '.join(duplicated)} more than once")
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if problems:
        raise ValueError(f"line 1 (the header): {'; '.join(problems)}; columns: {','.join(IMPORT_COLUMNS)}")


def _json_rows(file: Path) -> Iterator[_Row]:
    with file.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as error:
                yield _Row(line, problem=f"not valid JSON: {error.msg} (column {error.colno})")
                continue
            if not isinstance(raw, dict):
                yield _Row(line, problem='must be a JSON object like {"user_id": ..., "linked_at": ...}')
                continue
            values = {k: str(v).strip() for k, v in raw.items() if isinstance(v, str | int) and not isinstance(v, bool)}
            unknown = sorted(set(raw) - set(IMPORT_COLUMNS))
            bad = sorted(k for k, v in raw.items() if v is not None and k not in values)
            if unknown:
                problem = f"unknown key(s) {', '.join(unknown)}; keys: {', '.join(IMPORT_COLUMNS)}"
            elif bad:
                problem = f"{', '.join(bad)}: must be text"
            else:
                problem = ""
            yield _Row(line, values, problem)


def _imported_link(values: Mapping[str, str]) -> api.ImportedLink:
    """A record -> ImportedLink; ValueError for what the message cannot carry (a bad time or kind).
    Everything else (a missing user, a malformed code) is left to the service's checks."""
    link = api.ImportedLink(
        user_id=values.get("user_id", ""),
        referrer_id=values.get("referrer_id", ""),
        code=values.get("code", ""),
        device_hash=values.get("device_hash", ""),
        phone_hash=values.get("phone_hash", ""),
    )
    for name in ("kind", "referrer_kind"):
        kind = values.get(name, "").lower()
        if kind not in KIND_VALUES:
            raise ValueError(f"{name}: '{values[name]}' is not customer or employee")
        setattr(link, name, KIND_VALUES[kind])
    text = values.get("linked_at", "")
    if not text:
        raise ValueError("linked_at: is required (an ISO date-time with a UTC offset)")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"linked_at: '{text}' is not an ISO date-time, e.g. 2025-03-01T10:00:00+08:00") from None
    if moment.tzinfo is None:
        raise ValueError(f"linked_at: '{text}' needs a UTC offset, e.g. 2025-03-01T10:00:00+08:00")
    link.linked_at.FromDatetime(moment.astimezone(UTC))
    return link


def _batches(
    rows: Iterator[_Row], size: int, report: ImportReport
) -> Iterator[tuple[list[int], list[api.ImportedLink], list[Refused]]]:
    """(lines, links, local refusals) per batch of `size` links; records that cannot become a link
    are refused here, with their line, and not sent."""
    lines: list[int] = []
    links: list[api.ImportedLink] = []
    local: list[Refused] = []
    for row in rows:
        report.read += 1
        values = row.values
        try:
            if row.problem:
                raise ValueError(row.problem)
            link = _imported_link(values)
        except ValueError as problem:
            local.append(
                Refused(row.line, values.get("user_id", ""), values.get("referrer_id", ""), "INVALID", str(problem))
            )
            continue
        lines.append(row.line)
        links.append(link)
        if len(links) == size:
            yield lines, links, local
            lines, links, local = [], [], []
    if links or local:
        yield lines, links, local


def _import_requests(batch_id: str, source: str, links: list[api.ImportedLink]) -> Iterator[api.ImportLinksRequest]:
    yield api.ImportLinksRequest(header=api.ImportHeader(batch_id=batch_id, source=source))
    for start in range(0, len(links), _CHUNK):
        yield api.ImportLinksRequest(links=api.ImportChunk(links=links[start : start + _CHUNK]))


def _send_batch(
    args: argparse.Namespace,
    stub: referral_pb2_grpc.ReferralServiceStub,
    batch_id: str,
    lines: list[int],
    links: list[api.ImportedLink],
    report: ImportReport,
) -> str:
    """One ImportLinks call; the batch's figures added to the report. A problem stops the import."""
    try:
        reply: api.ImportLinksResponse = stub.ImportLinks(
            _import_requests(batch_id, args.source, links), timeout=args.timeout
        )
    except grpc.RpcError as error:
        problem = _rpc_problem(args, error)
        if error.code() == grpc.StatusCode.ALREADY_EXISTS:
            problem += f" (batch {batch_id} was imported before with other links: was --batch-size different then?)"
        return f"batch {batch_id} (lines {lines[0]}-{lines[-1]}): {problem}"
    report.batches += 1
    report.replayed += reply.replayed
    report.linked += reply.linked
    report.under_review += reply.under_review
    report.already_linked += reply.already_linked
    report.refuse(
        Refused(
            lines[r.index] if 0 <= r.index < len(lines) else 0,
            r.user_id,
            r.referrer_id,
            api.RefusalReason.Name(r.reason).removeprefix("REFUSAL_REASON_"),
            r.message,
        )
        for r in reply.refusals
    )
    replayed = " (imported before: its first report)" if reply.replayed else ""
    print(
        f"batch {batch_id}: lines {lines[0]}-{lines[-1]}, {_plural(len(links), 'link')}: {reply.linked} linked, "
        f"{reply.under_review} under review, {reply.already_linked} already linked, "
        f"{len(reply.refusals)} refused{replayed}",
        flush=True,
    )
    return ""


def _print_import_report(file: Path, report: ImportReport) -> None:
    refused = sum(report.refused.values())
    print(f"Report for {file}: {_plural(report.read, 'record')} read, {_plural(report.batches, 'batch', 'batches')}")
    print(f"  linked          {report.linked:>9}")
    print(f"  under review    {report.under_review:>9}")
    print(f"  already linked  {report.already_linked:>9}")
    print(f"  refused         {refused:>9}")
    for reason, count in sorted(report.refused.items(), key=lambda item: (-item[1], item[0])):
        print(f"    {reason:<16}{count:>9}")
    if report.replayed:
        every = "every batch was" if report.replayed == report.batches else f"{report.replayed} batches were"
        print(f"  ({every} imported before: the figures are the first import's; nothing new was written)")
    if report.first:
        shown = "the first" if refused > len(report.first) else "all"
        print(f"Refused ({shown} {len(report.first)} of {refused}, by line):")
        for r in report.first:
            who = f"{r.user_id or '?'} <- {r.referrer_id or '?'}"
            print(f"  line {r.line}: {who}: {r.reason}: {r.message}")


# -- simulate -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Registration:
    index: int
    proposal: Proposal


@dataclass(frozen=True)
class _Conversion:
    index: int
    command: ConversionCommand


class ScenarioError(ValueError):
    pass


def simulate(args: argparse.Namespace) -> int:
    """`referral simulate SCENARIO.json`: the scenario through the real code on a throwaway database."""
    try:
        registrations, conversions_ = read_scenario(args.scenario)
    except (OSError, ValueError) as error:
        print(f"{args.scenario}: {_reading_problem(error)}")
        return 1
    policy = _load_policy(args.rules_dir / "referral")
    if policy is None:
        return 1
    events: list[tuple[datetime, int, _Registration | _Conversion]] = [
        (r.proposal.linked_at, 0, r) for r in registrations
    ] + [(c.command.occurred_at, 1, c) for c in conversions_]
    events.sort(key=lambda e: (e[0], e[1]))  # stable: file order within a moment
    tally: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="alliance-referral-simulate-") as scratch:
        db = Database(f"sqlite:///{Path(scratch) / 'referral.db'}")
        try:
            migrations.upgrade(db, SCHEMA)
            for _, _, event in events:
                if isinstance(event, _Registration):
                    tally[_simulate_registration(db, policy, event)] += 1
                else:
                    tally[_simulate_conversion(db, policy, event)] += 1
        finally:
            db.close()
    print(
        f"Registrations: {tally['active']} linked, {tally['review']} under review, "
        f"{tally['already']} already linked, {tally['refused']} refused. Conversions: {tally['rewarded']} rewarded, "
        f"{tally['held']} held, {tally['unattributed']} unattributed, {tally['failed']} refused."
    )
    print("Nothing was written: the database was a throwaway, and no event was published.")
    return 0


def _load_policy(directory: Path) -> Policy | None:
    if not directory.is_dir():
        print(f"{directory}: no such directory (the referral policy files are RULES_DIR/referral/*.yaml)")
        return None
    contents: dict[str, bytes] = {}
    for file in _rule_files(directory, recursive=False):
        contents[str(file)] = file.read_bytes()
    policies, errors = load_policies(contents)
    if errors:
        for error in errors.values():
            for problem in error.problems:
                print(problem)
        print(f"{_plural(len(errors), 'policy file')} refused: fix them first (alliance rules validate {directory})")
        return None
    policy = combine(policies)
    if not policies:
        print(f"note: no policy files in {directory}: no velocity rules, the direct referrer alone is rewarded")
    for name in sorted(policies):
        document = policies[name]
        print(f"Policy {document.id} ({name}, version {document.version})")
    for rule in policy.velocity:
        print(f"  velocity {rule.id}: more than {rule.max} per {rule.per} within {rule.within_text} -> {rule.action}")
    print(f"  rewards: {_plural(policy.levels, 'level')}")
    return policy


def _simulate_registration(db: Database, policy: Policy, event: _Registration) -> str:
    p = event.proposal
    via = f"code {p.code}" if p.code else f"referrer {p.referrer_id}"

    def unit(session: Session) -> Outcome:
        [outcome] = link_all(session, [p], policy)
        return outcome

    where = f"registration[{event.index}] {p.linked_at.astimezone(policy.timezone).isoformat()} {p.user_id} via {via}"
    if p.code and not referral_codes.is_well_formed(p.code):
        print(f"{where}: refused (INVALID): {p.code} is not a referral code")
        return "refused"
    outcome = db.run_sync(unit)
    if outcome.state == LinkState.ACTIVE:
        print(f"{where}: linked under {outcome.referrer_id}")
    elif outcome.state == LinkState.REVIEW:
        print(f"{where}: UNDER REVIEW by rule {outcome.flagged_by}: {outcome.flag_reason}")
    elif outcome.state == "already":
        print(f"{where}: already linked under {outcome.referrer_id} (nothing to do)")
    else:
        print(f"{where}: REFUSED ({outcome.reason}): {outcome.message}")
    return outcome.state


def _simulate_conversion(db: Database, policy: Policy, event: _Conversion) -> str:
    cmd = event.command

    def unit(session: Session) -> tuple[str, list[tuple[int, str]], str]:
        done = conversions.record(session, cmd, policy, source="simulate")
        link = session.exec(select(Partner.link_state).where(Partner.user_id == cmd.user_id)).first()
        levels = [(r.level, r.referrer_id) for r in done.rewards if not r.revoked]
        return done.conversion.state, levels, link or LinkState.NONE

    at = cmd.occurred_at.astimezone(policy.timezone).isoformat()
    where = f"conversion[{event.index}] {at} {cmd.user_id} {cmd.product} ({cmd.business_ref})"
    try:
        state, levels, link = db.run_sync(unit)
    except DomainError as refused:
        print(f"{where}: REFUSED: {refused.message}")
        return "failed"
    if state == "rewarded":
        rewarded = ", ".join(f"level {level} {referrer}" for level, referrer in levels)
        print(f"{where}: rewarded: {rewarded}")
    elif state == "held":
        print(f"{where}: HELD: {cmd.user_id}'s link is under review; rewarded if approved")
    elif state == "unattributed":
        why = "link was rejected" if link == LinkState.REJECTED else "has no referrer"
        print(f"{where}: unattributed: {cmd.user_id} {why}")
    else:
        print(f"{where}: {state}")
    return state


_REGISTRATION_KEYS = {"user_id", "referrer_id", "code", "at", "device_hash", "phone_hash", "kind", "referrer_kind"}
_CONVERSION_KEYS = {"user_id", "product", "at", "business_ref", "attributes"}


def read_scenario(path: Path) -> tuple[list[_Registration], list[_Conversion]]:
    """SCENARIO.json -> registrations and conversions; ValueError naming the entry and field."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ScenarioError(f"not valid JSON: {error}") from None
    if not isinstance(raw, dict) or set(raw) - {"registrations", "conversions"}:
        raise ScenarioError('must be a JSON object with "registrations" and "conversions" (lists)')
    registrations = [_registration(i, entry) for i, entry in enumerate(_entries(raw, "registrations"))]
    conversions_ = [_conversion(i, entry) for i, entry in enumerate(_entries(raw, "conversions"))]
    if not registrations and not conversions_:
        raise ScenarioError("has no registrations and no conversions")
    return registrations, conversions_


def _entries(raw: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    entries = raw.get(name)
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ScenarioError(f"{name} must be a list of objects")
    return entries


def _text(entry: Mapping[str, Any], where: str, key: str, *, required: bool = False) -> str | None:
    value = entry.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ScenarioError(f"{where}.{key} is required")
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ScenarioError(f"{where}.{key} must be text")
    return str(value).strip()


def _moment(entry: Mapping[str, Any], where: str) -> datetime:
    text = _text(entry, where, "at", required=True)
    assert text is not None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ScenarioError(f"{where}.at: '{text}' is not an ISO date-time, e.g. 2026-11-23T10:00:00+08:00") from None
    if moment.tzinfo is None:
        raise ScenarioError(f"{where}.at: '{text}' needs a UTC offset, e.g. 2026-11-23T10:00:00+08:00")
    return moment.astimezone(UTC)


def _kind(entry: Mapping[str, Any], where: str, key: str) -> str:
    kind = (_text(entry, where, key) or "customer").lower()
    if kind not in ("customer", "employee"):
        raise ScenarioError(f"{where}.{key} must be customer or employee")
    return kind


def _registration(index: int, entry: Mapping[str, Any]) -> _Registration:
    where = f"registrations[{index}]"
    unknown = sorted(set(entry) - _REGISTRATION_KEYS)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key(s) {', '.join(unknown)} (keys: {', '.join(sorted(_REGISTRATION_KEYS))})"
        )
    code = _text(entry, where, "code")
    referrer_id = _text(entry, where, "referrer_id")
    if not code and not referrer_id:
        raise ScenarioError(f"{where}: referrer_id (or code) is required")
    user_id = _text(entry, where, "user_id", required=True)
    assert user_id is not None
    return _Registration(
        index,
        Proposal(
            user_id=user_id,
            kind=_kind(entry, where, "kind"),
            linked_at=_moment(entry, where),
            source="simulate",
            code=referral_codes.normalize(code) if code else None,
            referrer_id=referrer_id,
            referrer_kind=_kind(entry, where, "referrer_kind"),
            device_hash=_text(entry, where, "device_hash"),
            phone_hash=_text(entry, where, "phone_hash"),
        ),
    )


def _conversion(index: int, entry: Mapping[str, Any]) -> _Conversion:
    where = f"conversions[{index}]"
    unknown = sorted(set(entry) - _CONVERSION_KEYS)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key(s) {', '.join(unknown)} (keys: {', '.join(sorted(_CONVERSION_KEYS))})"
        )
    attributes = entry.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ScenarioError(f"{where}.attributes must be an object of name: value")
    user_id = _text(entry, where, "user_id", required=True)
    product = _text(entry, where, "product", required=True)
    assert user_id is not None and product is not None
    return _Conversion(
        index,
        ConversionCommand(
            business_ref=_text(entry, where, "business_ref") or f"sim-{index}",
            user_id=user_id,
            product=product,
            occurred_at=_moment(entry, where),
            attributes={str(k): str(v) for k, v in attributes.items()},
        ),
    )
