"""The points ledger: units of work for earn, redeem, reverse and expiry.

Each function runs inside one database transaction (see `Database.run`) and either writes
everything (ledger entries, lots, the cached balance, cap and budget counters, the transaction
record for idempotent replays, the outbox event) or nothing. Rows of one user are serialised by
locking their `points_account` row first; budgets are shared by all users and locked per campaign.

Responses are the API's protobuf messages: they are stored with the transaction so that a repeated
idempotency key returns exactly the first answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import func
from sqlmodel import Session, col, select

from alliance.v1 import points_events_pb2 as events
from alliance.v1 import points_pb2 as api
from services.foundation.db import utcnow
from services.foundation.errors import DomainError, FailedPrecondition, NotFound
from services.foundation.idempotency import replay
from services.foundation.ids import new_id, ts
from services.foundation.outbox import add_event
from services.points.campaigns.book import Candidate
from services.points.commands import EarnCommand, LedgerPage, RedeemCommand, ReverseCommand
from services.points.earn_batch import EarnItem, earn_many
from services.points.events import EXPIRED, REDEEMED, REVERSED
from services.points.models import (
    CampaignBudget,
    EntryKind,
    LedgerEntry,
    LotAllocation,
    PointLot,
    PointsAccount,
    PointsTransaction,
)

R = TypeVar("R", bound=Message)

EXPIRING_SOON = timedelta(days=30)

_KIND_TO_API = {
    EntryKind.EARN: api.ENTRY_KIND_EARN,
    EntryKind.REDEEM: api.ENTRY_KIND_REDEEM,
    EntryKind.REVERSE_EARN: api.ENTRY_KIND_REVERSE_EARN,
    EntryKind.REVERSE_REDEEM: api.ENTRY_KIND_REVERSE_REDEEM,
    EntryKind.EXPIRE: api.ENTRY_KIND_EXPIRE,
}


# -- shared steps --------------------------------------------------------------------------------


def _existing(session: Session, operation: str, key: str) -> PointsTransaction | None:
    query = select(PointsTransaction).where(
        PointsTransaction.operation == operation, PointsTransaction.idempotency_key == key
    )
    return session.exec(query).first()


def _replay(txn: PointsTransaction, request_hash: str, response_type: type[R]) -> R:
    return replay(
        request_hash=request_hash,
        stored_hash=txn.request_hash,
        stored_reply=txn.response,
        reply_type=response_type,
        what=f"{txn.operation} request",
        reference=f"transaction {txn.id}",
    )


def _lock_account(session: Session, user_id: str) -> PointsAccount:
    query = select(PointsAccount).where(PointsAccount.user_id == user_id).with_for_update()
    account = session.exec(query).first()
    if account is None:
        # A racing first write for the same user fails on the primary key and the unit is retried.
        account = PointsAccount(user_id=user_id)
        session.add(account)
        session.flush()
    return account


def _spendable_lots(session: Session, user_id: str, first_transaction: str | None = None) -> list[PointLot]:
    """Lots with points left, soonest expiry first (never-expiring last), optionally one earn's first."""
    query = (
        select(PointLot)
        .where(PointLot.user_id == user_id, PointLot.remaining > 0)
        .order_by(col(PointLot.expires_at).is_(None), col(PointLot.expires_at), col(PointLot.id))
        .with_for_update()
    )
    lots = list(session.exec(query))
    if first_transaction is not None:
        lots.sort(key=lambda lot: lot.transaction_id != first_transaction)  # stable: keeps expiry order
    return lots


def _take_from_lots(session: Session, lots: Iterable[PointLot], points: int, transaction_id: str) -> None:
    left = points
    for lot in lots:
        if left == 0:
            break
        take = min(lot.remaining, left)
        lot.remaining -= take
        left -= take
        session.add(lot)
        assert lot.id is not None  # read from the database
        session.add(LotAllocation(transaction_id=transaction_id, lot_id=lot.id, points=take))
    if left:
        raise AssertionError(f"lots hold {points - left} points but the balance said {points}")


def _expire_lots(session: Session, account: PointsAccount, lots: Sequence[PointLot], now: datetime) -> int:
    """Write expiry entries for lots past their date; returns the points taken away."""
    total = sum(lot.remaining for lot in lots)
    if total == 0:
        return 0
    txn_id = new_id()
    for lot in lots:
        session.add(
            LedgerEntry(
                transaction_id=txn_id,
                user_id=account.user_id,
                kind=EntryKind.EXPIRE,
                points=-lot.remaining,
                campaign_id=lot.campaign_id,
                reference_transaction_id=lot.transaction_id,
                description=f"expired on {lot.expires_at.isoformat() if lot.expires_at else '?'}",
                occurred_at=now,
            )
        )
        lot.remaining = 0
        session.add(lot)
    account.balance -= total
    account.updated_at = now
    session.add(account)
    session.add(
        PointsTransaction(
            id=txn_id,
            operation="expire",
            request_hash="",
            user_id=account.user_id,
            points=-total,
            response=b"",
            occurred_at=now,
        )
    )
    add_event(
        session,
        EXPIRED,
        events.PointsExpired(
            transaction_id=txn_id,
            user_id=account.user_id,
            points=total,
            balance=account.balance,
            occurred_at=ts(now),
        ),
    )
    return total


def _expire_due_for(session: Session, account: PointsAccount, now: datetime) -> None:
    query = (
        select(PointLot)
        .where(PointLot.user_id == account.user_id, PointLot.remaining > 0, col(PointLot.expires_at) <= now)
        .with_for_update()
    )
    _expire_lots(session, account, list(session.exec(query)), now)


# -- earn ----------------------------------------------------------------------------------------


def earn(session: Session, cmd: EarnCommand, candidates: Sequence[Candidate]) -> api.EarnResponse:
    """One earn; the batched path (`earn_batch.earn_many`) is the only implementation."""
    [result] = earn_many(session, [EarnItem(cmd, candidates)])
    if isinstance(result, DomainError):
        raise result
    return result


# -- redeem --------------------------------------------------------------------------------------


def redeem(session: Session, cmd: RedeemCommand) -> api.RedeemResponse:
    previous = _existing(session, "redeem", cmd.idempotency_key)
    if previous is not None:
        return _replay(previous, cmd.request_hash, api.RedeemResponse)
    now = utcnow()
    account = _lock_account(session, cmd.user_id)
    _expire_due_for(session, account, now)
    if account.balance < cmd.points:
        raise FailedPrecondition(
            f"points: {cmd.points} requested but the balance of {cmd.user_id} is {account.balance}"
        )
    txn_id = new_id()
    _take_from_lots(session, _spendable_lots(session, cmd.user_id), cmd.points, txn_id)
    session.add(
        LedgerEntry(
            transaction_id=txn_id,
            user_id=cmd.user_id,
            kind=EntryKind.REDEEM,
            points=-cmd.points,
            source_event=cmd.idempotency_key,
            description=cmd.description or f"order {cmd.order_id}",
            occurred_at=now,
        )
    )
    account.balance -= cmd.points
    account.updated_at = now
    session.add(account)
    response = api.RedeemResponse(transaction_id=txn_id, points=cmd.points, balance=account.balance)
    session.add(
        PointsTransaction(
            id=txn_id,
            operation="redeem",
            idempotency_key=cmd.idempotency_key,
            request_hash=cmd.request_hash,
            user_id=cmd.user_id,
            points=-cmd.points,
            order_id=cmd.order_id,
            response=response.SerializeToString(),
            occurred_at=now,
        )
    )
    add_event(
        session,
        REDEEMED,
        events.PointsRedeemed(
            transaction_id=txn_id,
            user_id=cmd.user_id,
            order_id=cmd.order_id,
            points=cmd.points,
            balance=account.balance,
            occurred_at=ts(now),
        ),
    )
    return response


# -- reverse -------------------------------------------------------------------------------------


def reverse(session: Session, cmd: ReverseCommand) -> api.ReverseResponse:
    previous = _existing(session, "reverse", cmd.idempotency_key)
    if previous is not None:
        return _replay(previous, cmd.request_hash, api.ReverseResponse)
    original = session.get(PointsTransaction, cmd.transaction_id)
    if original is None:
        raise NotFound(f"transaction_id: no transaction {cmd.transaction_id}")
    if original.operation not in ("earn", "redeem"):
        raise FailedPrecondition(
            f"transaction_id: {cmd.transaction_id} is a {original.operation}; "
            "only earns and redemptions can be reversed"
        )
    now = utcnow()
    account = _lock_account(session, original.user_id)
    session.refresh(original)  # reversed_points may have moved while we waited for the lock
    left = abs(original.points) - original.reversed_points
    if left <= 0:
        raise FailedPrecondition(f"transaction_id: {cmd.transaction_id} is already fully reversed")
    wanted = cmd.points or left
    if wanted > left:
        raise FailedPrecondition(f"points: only {left} of transaction {cmd.transaction_id} are left to reverse")
    txn_id = new_id()
    if original.operation == "earn":
        change, shortfall = _claw_back(session, account, original, wanted, cmd, txn_id, now)
        kind = events.REVERSED_KIND_EARN
    else:
        change, shortfall = _refund(session, original, wanted, cmd, txn_id, now), 0
        kind = events.REVERSED_KIND_REDEEM
    original.reversed_points += abs(change)
    session.add(original)
    account.balance += change
    account.updated_at = now
    session.add(account)
    if original.operation == "redeem":
        # A refund puts points back into the lots they came from; any that expired meanwhile are
        # written off now, so the reply's balance is what GetBalance says.
        _expire_due_for(session, account, now)
    response = api.ReverseResponse(transaction_id=txn_id, points=change, shortfall=shortfall, balance=account.balance)
    session.add(
        PointsTransaction(
            id=txn_id,
            operation="reverse",
            idempotency_key=cmd.idempotency_key,
            request_hash=cmd.request_hash,
            user_id=original.user_id,
            points=change,
            reference_id=original.id,
            reason=cmd.reason,
            response=response.SerializeToString(),
            occurred_at=now,
        )
    )
    add_event(
        session,
        REVERSED,
        events.PointsReversed(
            transaction_id=txn_id,
            user_id=original.user_id,
            reversed_transaction_id=original.id,
            reversed_source_event=original.idempotency_key or "",
            reversed_kind=kind,
            points=change,
            shortfall=shortfall,
            reason=cmd.reason,
            balance=account.balance,
            occurred_at=ts(now),
        ),
    )
    return response


def _claw_back(
    session: Session,
    account: PointsAccount,
    original: PointsTransaction,
    wanted: int,
    cmd: ReverseCommand,
    txn_id: str,
    now: datetime,
) -> tuple[int, int]:
    """Take back up to `wanted` earned points; returns (balance change, shortfall)."""
    _expire_due_for(session, account, now)
    take, shortfall = wanted, 0
    if account.balance < wanted:
        if not cmd.allow_partial:
            raise FailedPrecondition(
                f"points: the balance of {account.user_id} is {account.balance}, less than the {wanted} to claw back; "
                "set allow_partial to claw back what is there and report the shortfall"
            )
        take, shortfall = account.balance, wanted - account.balance
    _take_from_lots(session, _spendable_lots(session, account.user_id, first_transaction=original.id), take, txn_id)
    # Mirror the earn's entries (campaign by campaign) so reports per campaign stay right.
    earned = session.exec(
        select(LedgerEntry).where(LedgerEntry.transaction_id == original.id).order_by(col(LedgerEntry.id))
    )
    left = take
    for entry in earned:
        part = min(entry.points, left)
        if part <= 0:
            break
        left -= part
        session.add(
            LedgerEntry(
                transaction_id=txn_id,
                user_id=account.user_id,
                kind=EntryKind.REVERSE_EARN,
                points=-part,
                event_type=entry.event_type,
                source_event=cmd.idempotency_key,
                campaign_id=entry.campaign_id,
                rule_id=entry.rule_id,
                rule_version=entry.rule_version,
                reference_transaction_id=original.id,
                description=cmd.reason,
                occurred_at=now,
            )
        )
        if entry.campaign_id is not None:
            budget = session.get(CampaignBudget, entry.campaign_id, with_for_update=True)
            if budget is not None:
                budget.awarded -= part
                budget.updated_at = now
                session.add(budget)
    return -take, shortfall


def _refund(
    session: Session, original: PointsTransaction, wanted: int, cmd: ReverseCommand, txn_id: str, now: datetime
) -> int:
    """Put redeemed points back into the lots they came from (with their original expiry)."""
    allocations = list(
        session.exec(
            select(LotAllocation).where(LotAllocation.transaction_id == original.id).order_by(col(LotAllocation.id))
        )
    )
    refunded_before = _refunded_per_lot(session, original.id)
    left = wanted
    for allocation in allocations:
        room = allocation.points - refunded_before.get(allocation.lot_id, 0)
        part = min(room, left)
        if part <= 0:
            continue
        lot = session.get(PointLot, allocation.lot_id, with_for_update=True)
        assert lot is not None
        lot.remaining += part
        session.add(lot)
        session.add(LotAllocation(transaction_id=txn_id, lot_id=allocation.lot_id, points=-part))
        left -= part
        if left == 0:
            break
    session.add(
        LedgerEntry(
            transaction_id=txn_id,
            user_id=original.user_id,
            kind=EntryKind.REVERSE_REDEEM,
            points=wanted,
            source_event=cmd.idempotency_key,
            reference_transaction_id=original.id,
            description=cmd.reason,
            occurred_at=now,
        )
    )
    # Lots already past their date are expired again by the next sweep, as the customer would expect.
    return wanted


def _refunded_per_lot(session: Session, redeem_id: str) -> dict[int, int]:
    refunds = select(PointsTransaction.id).where(
        PointsTransaction.reference_id == redeem_id, PointsTransaction.operation == "reverse"
    )
    rows = session.exec(
        select(LotAllocation.lot_id, func.sum(LotAllocation.points))
        .where(col(LotAllocation.transaction_id).in_(refunds))
        .group_by(col(LotAllocation.lot_id))
    )
    return {lot_id: -int(total) for lot_id, total in rows}


# -- expiry --------------------------------------------------------------------------------------


def users_with_expired_lots(session: Session, now: datetime, limit_users: int = 200) -> list[str]:
    query = (
        select(PointLot.user_id)
        .where(PointLot.remaining > 0, col(PointLot.expires_at) <= now)
        .distinct()
        .limit(limit_users)
    )
    return list(session.exec(query))


def expire_user(session: Session, user_id: str, now: datetime) -> None:
    _expire_due_for(session, _lock_account(session, user_id), now)


# -- reads ---------------------------------------------------------------------------------------


def balance(session: Session, user_id: str, now: datetime) -> api.Balance:
    account = session.get(PointsAccount, user_id)
    if account is None:
        return api.Balance(user_id=user_id, balance=0)
    lots = select(PointLot).where(
        PointLot.user_id == user_id, PointLot.remaining > 0, col(PointLot.expires_at) <= now + EXPIRING_SOON
    )
    expired = expiring = 0
    next_expiry = None
    for lot in session.exec(lots):
        assert lot.expires_at is not None
        if lot.expires_at <= now:
            expired += lot.remaining  # not yet swept: no longer spendable
        else:
            expiring += lot.remaining
            next_expiry = min(next_expiry or lot.expires_at, lot.expires_at)
    return api.Balance(
        user_id=user_id,
        balance=account.balance - expired,
        expiring_soon=expiring,
        next_expiry=ts(next_expiry),
        updated_at=ts(account.updated_at),
    )


@dataclass(frozen=True)
class Page:
    entries: list[LedgerEntry]
    next_before_id: int | None


def list_entries(session: Session, page: LedgerPage) -> Page:
    query = select(LedgerEntry).where(LedgerEntry.user_id == page.user_id)
    if page.before_id is not None:
        query = query.where(col(LedgerEntry.id) < page.before_id)
    rows = list(session.exec(query.order_by(col(LedgerEntry.id).desc()).limit(page.page_size + 1)))
    more = len(rows) > page.page_size
    rows = rows[: page.page_size]
    return Page(rows, rows[-1].id if more and rows else None)


def entry_to_api(entry: LedgerEntry) -> api.LedgerEntry:
    return api.LedgerEntry(
        entry_id=str(entry.id),
        kind=_KIND_TO_API[entry.kind],
        points=entry.points,
        created_at=ts(entry.created_at),
        occurred_at=ts(entry.occurred_at),
        source_event=entry.source_event or "",
        event_type=entry.event_type or "",
        campaign_id=entry.campaign_id or "",
        rule_id=entry.rule_id or "",
        rule_version=entry.rule_version or "",
        reversed_transaction_id=entry.reference_transaction_id or "",
        description=entry.description or "",
        transaction_id=entry.transaction_id,
    )


def ledger_sum(session: Session, user_id: str) -> int:
    total = session.exec(select(func.coalesce(func.sum(LedgerEntry.points), 0)).where(LedgerEntry.user_id == user_id))
    return int(total.one())
