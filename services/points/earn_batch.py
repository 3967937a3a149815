"""Earn for many events in one transaction: set-based reads, decisions in memory, bulk writes.

Earn is the hot path (every card swipe at an alliance merchant, every referral). Calls that arrive
while a transaction is in the database wait and go together in the next one (group commit), so
the per-call cost is a few dictionary look-ups instead of a dozen statements. The decisions are
the same as one call at a time, taken in arrival order: each event sees the balances, cap usage
and budgets left by the events before it, and a key repeated inside a batch replays the first.

Locks: the accounts of the batch's users, in user order (so two batches cannot deadlock), then
the budgets of the campaigns involved; the same order as every other writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update
from sqlmodel import Session

from alliance.v1 import points_events_pb2 as events
from alliance.v1 import points_pb2 as api
from services.foundation.db import utcnow
from services.foundation.errors import AlreadyExists, DomainError
from services.foundation.idempotency import replay
from services.foundation.ids import new_id, ts, ts_fields
from services.foundation.outbox import add_event_rows, event_row
from services.foundation.schema import table_of
from services.foundation.upsert import insert_ignoring_conflicts, insert_or_replace
from services.points.campaigns.book import Candidate
from services.points.commands import EarnCommand
from services.points.events import AWARDED
from services.points.limits import cap_windows, limit
from services.points.models import (
    CampaignBudget,
    CampaignUsage,
    EntryKind,
    LedgerEntry,
    PointLot,
    PointsAccount,
    PointsTransaction,
)

TXN = table_of(PointsTransaction)
ACCOUNT = table_of(PointsAccount)
USAGE = table_of(CampaignUsage)
BUDGET = table_of(CampaignBudget)
LEDGER = table_of(LedgerEntry)
LOT = table_of(PointLot)


@dataclass(frozen=True)
class EarnItem:
    cmd: EarnCommand
    candidates: Sequence[Candidate]


@dataclass(frozen=True)
class _Done:
    transaction_id: str
    request_hash: str
    response: bytes


@dataclass
class _Writes:
    ledger: list[dict[str, object]] = field(default_factory=list)
    lots: list[dict[str, object]] = field(default_factory=list)
    transactions: list[dict[str, object]] = field(default_factory=list)
    outbox: list[dict[str, object]] = field(default_factory=list)


def earn_many(session: Session, items: Sequence[EarnItem]) -> list[api.EarnResponse | DomainError]:
    conn = session.connection()
    now = utcnow()
    done = _already_done(conn, [item.cmd.idempotency_key for item in items])
    balances = _lock_accounts(conn, sorted({item.cmd.user_id for item in items}), now)
    unswept = _expired_unswept(conn, sorted(balances), now)
    campaigns = {c.campaign_id for item in items for c in item.candidates}
    usage = _usage(conn, campaigns, set(balances))
    budgeted = {c.campaign_id for item in items for c in item.candidates if _budget_of(c) is not None}
    awarded = _lock_budgets(conn, sorted(budgeted), now)

    writes = _Writes()
    touched_usage: set[tuple[str, str, str]] = set()
    touched_users: set[str] = set()
    results: list[api.EarnResponse | DomainError] = []
    for item in items:
        cmd = item.cmd
        previous = done.get(cmd.idempotency_key)
        if previous is not None:
            results.append(_replay(previous, cmd))
            continue
        response, serialized = _decide(item, balances, unswept, usage, awarded, writes, touched_usage, now)
        if response.points:
            touched_users.add(cmd.user_id)
        done[cmd.idempotency_key] = _Done(response.transaction_id, cmd.request_hash, serialized)
        results.append(response)

    _write(session, writes, balances, touched_users, usage, touched_usage, awarded, now)
    return results


def _budget_of(candidate: Candidate) -> int | None:
    terms = candidate.campaign.points
    return None if terms is None else terms.budget


def _decide(
    item: EarnItem,
    balances: dict[str, int],
    unswept: dict[str, int],
    usage: dict[tuple[str, str, str], int],
    awarded: dict[str, int],
    writes: _Writes,
    touched_usage: set[tuple[str, str, str]],
    now: datetime,
) -> tuple[api.EarnResponse, bytes]:
    cmd = item.cmd
    txn_id = new_id()
    response = api.EarnResponse(transaction_id=txn_id)
    awards: list[Any] = []  # fields of AwardedPoints (protobuf takes fields for nested messages)
    for candidate in item.candidates:
        campaign = candidate.campaign
        if candidate.expires_at is not None and candidate.expires_at <= now:
            # A late (backdated) event: its points would be expired on arrival. Awarding them would
            # spend budget and caps on nothing and tell the customer "awarded" then "expired".
            response.notices.append(
                f"{campaign.id}/{candidate.rule_id}: points would have expired at "
                f"{candidate.expires_at.isoformat()}, nothing awarded"
            )
            continue
        windows = cap_windows(campaign, cmd.occurred_at)
        used = {w.key: usage.get((campaign.id, cmd.user_id, w.key), 0) for w in windows}
        budget = _budget_of(candidate)
        budget_left = None if budget is None else budget - awarded.get(campaign.id, 0)
        allowed = limit(candidate.points, used, windows, budget_left)
        if allowed.points <= 0:
            response.notices.append(f"{campaign.id}/{candidate.rule_id}: {allowed.limited_by}, nothing awarded")
            continue
        for window in windows:
            key = (campaign.id, cmd.user_id, window.key)
            usage[key] = usage.get(key, 0) + allowed.points
            touched_usage.add(key)
        if budget is not None:
            awarded[campaign.id] = awarded.get(campaign.id, 0) + allowed.points
        writes.ledger.append(
            {
                "transaction_id": txn_id,
                "user_id": cmd.user_id,
                "kind": EntryKind.EARN,
                "points": allowed.points,
                "event_type": cmd.event_type,
                "source_event": cmd.idempotency_key,
                "campaign_id": campaign.id,
                "rule_id": candidate.rule_id,
                "rule_version": candidate.campaign_version,
                "reference_transaction_id": None,
                "description": None,
                "occurred_at": cmd.occurred_at,
                "created_at": now,
            }
        )
        writes.lots.append(
            {
                "user_id": cmd.user_id,
                "transaction_id": txn_id,
                "campaign_id": campaign.id,
                "points": allowed.points,
                "remaining": allowed.points,
                "expires_at": candidate.expires_at,
                "created_at": now,
            }
        )
        # One set of fields for the reply's Award and the event's AwardedPoints: two messages,
        # so that an API change cannot silently change the event contract.
        award = {
            "campaign_id": campaign.id,
            "rule_id": candidate.rule_id,
            "rule_version": candidate.campaign_version,
            "points": allowed.points,
            "expires_at": ts_fields(candidate.expires_at),
            "limited_by": allowed.limited_by,
            "multiplier": "" if candidate.multiplier is None else f"{candidate.multiplier.normalize():f}",
            "multiplier_offer": candidate.multiplier_offer,
        }
        response.awards.add(**award)
        awards.append(award)
        if allowed.limited_by:
            response.notices.append(f"{campaign.id}/{candidate.rule_id}: {allowed.limited_by}")
    response.points = sum(a.points for a in response.awards)
    balances[cmd.user_id] += response.points
    # What GetBalance says: points expired but not yet written off by the sweep are not spendable.
    response.balance = balances[cmd.user_id] - unswept.get(cmd.user_id, 0)
    serialized = response.SerializeToString()
    writes.transactions.append(
        {
            "id": txn_id,
            "operation": "earn",
            "idempotency_key": cmd.idempotency_key,
            "request_hash": cmd.request_hash,
            "user_id": cmd.user_id,
            "points": response.points,
            "reversed_points": 0,
            "reference_id": None,
            "order_id": None,
            "reason": None,
            "response": serialized,
            "occurred_at": cmd.occurred_at,
            "created_at": now,
        }
    )
    if response.points:
        writes.outbox.append(
            event_row(
                AWARDED,
                events.PointsAwarded(
                    transaction_id=txn_id,
                    user_id=cmd.user_id,
                    source_event=cmd.idempotency_key,
                    event_type=cmd.event_type,
                    awards=awards,
                    points=response.points,
                    balance=response.balance,
                    occurred_at=ts(cmd.occurred_at),
                ),
            )
        )
    return response, serialized


def _replay(previous: _Done, cmd: EarnCommand) -> api.EarnResponse | DomainError:
    # One call of the batch may be refused while the others go on: returned, not raised.
    try:
        return replay(
            request_hash=cmd.request_hash,
            stored_hash=previous.request_hash,
            stored_reply=previous.response,
            reply_type=api.EarnResponse,
            what="earn request",
            reference=f"transaction {previous.transaction_id}",
        )
    except AlreadyExists as refused:
        return refused


# -- reads ---------------------------------------------------------------------------------------


# Statements built once: building them per batch was a measurable share of an Earn.
_DONE = select(TXN.c.idempotency_key, TXN.c.id, TXN.c.request_hash, TXN.c.response).where(
    TXN.c.operation == "earn", TXN.c.idempotency_key.in_(bindparam("keys", expanding=True))
)
_ACCOUNTS = (
    select(ACCOUNT.c.user_id, ACCOUNT.c.balance)
    .where(ACCOUNT.c.user_id.in_(bindparam("users", expanding=True)))
    .order_by(ACCOUNT.c.user_id)
    .with_for_update()
)
_USAGE = select(USAGE.c.campaign_id, USAGE.c.user_id, USAGE.c.window, USAGE.c.points).where(
    USAGE.c.campaign_id.in_(bindparam("campaigns", expanding=True)),
    USAGE.c.user_id.in_(bindparam("users", expanding=True)),
)


def _already_done(conn: Connection, keys: list[str]) -> dict[str, _Done]:
    rows = conn.execute(_DONE, {"keys": list(set(keys))})
    return {key: _Done(txn_id, request_hash, response) for key, txn_id, request_hash, response in rows}


def _lock_accounts(conn: Connection, users: list[str], now: datetime) -> dict[str, int]:
    balances = {user: balance for user, balance in conn.execute(_ACCOUNTS, {"users": users})}
    missing = [u for u in users if u not in balances]
    if missing:
        conn.execute(
            insert_ignoring_conflicts(conn, ACCOUNT),
            [{"user_id": u, "balance": 0, "created_at": now, "updated_at": now} for u in missing],
        )
        balances.update((user, balance) for user, balance in conn.execute(_ACCOUNTS, {"users": missing}))
    return balances


_UNSWEPT = (
    select(LOT.c.user_id, func.sum(LOT.c.remaining))
    .where(
        LOT.c.user_id.in_(bindparam("users", expanding=True)),
        LOT.c.remaining > 0,
        LOT.c.expires_at <= bindparam("now"),
    )
    .group_by(LOT.c.user_id)
)


def _expired_unswept(conn: Connection, users: list[str], now: datetime) -> dict[str, int]:
    """Points per user in lots past their date that the expiry sweep has not written off yet."""
    return {user: int(total) for user, total in conn.execute(_UNSWEPT, {"users": users, "now": now})}


def _usage(conn: Connection, campaigns: set[str], users: set[str]) -> dict[tuple[str, str, str], int]:
    if not campaigns:
        return {}
    rows = conn.execute(_USAGE, {"campaigns": sorted(campaigns), "users": sorted(users)})
    return {(c, u, w): p for c, u, w, p in rows}


def _lock_budgets(conn: Connection, campaigns: list[str], now: datetime) -> dict[str, int]:
    if not campaigns:
        return {}
    conn.execute(
        insert_ignoring_conflicts(conn, BUDGET),
        [{"campaign_id": c, "awarded": 0, "updated_at": now} for c in campaigns],
    )
    query = select(BUDGET.c.campaign_id, BUDGET.c.awarded).where(BUDGET.c.campaign_id.in_(campaigns))
    return {campaign: total for campaign, total in conn.execute(query.order_by(BUDGET.c.campaign_id).with_for_update())}


# -- writes --------------------------------------------------------------------------------------


def _write(
    session: Session,
    writes: _Writes,
    balances: dict[str, int],
    touched_users: set[str],
    usage: dict[tuple[str, str, str], int],
    touched_usage: set[tuple[str, str, str]],
    awarded: dict[str, int],
    now: datetime,
) -> None:
    conn = session.connection()
    for table, rows in (
        (LEDGER, writes.ledger),
        (LOT, writes.lots),
        (TXN, writes.transactions),
    ):
        if rows:
            conn.execute(table.insert(), rows)
    add_event_rows(session, writes.outbox)
    if touched_users:
        conn.execute(
            update(ACCOUNT)
            .where(ACCOUNT.c.user_id == bindparam("uid"))
            .values(balance=bindparam("new_balance"), updated_at=bindparam("now")),
            [{"uid": u, "new_balance": balances[u], "now": now} for u in sorted(touched_users)],
        )
    if touched_usage:
        conn.execute(
            insert_or_replace(conn, USAGE, ["campaign_id", "user_id", "window"], ["points"]),
            [
                {"campaign_id": c, "user_id": u, "window": w, "points": usage[(c, u, w)]}
                for c, u, w in sorted(touched_usage)
            ],
        )
    if awarded and writes.ledger:
        conn.execute(
            update(BUDGET)
            .where(BUDGET.c.campaign_id == bindparam("cid"))
            .values(awarded=bindparam("total"), updated_at=bindparam("now")),
            [{"cid": c, "total": total, "now": now} for c, total in sorted(awarded.items())],
        )
