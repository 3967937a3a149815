"""Conversions: a referred user's completed business, rewarded up the chain, held while the
user's link is under review, revoked when it is rejected.

A conversion is recorded once per business reference (the API and the business.v1.completed
consumer share this). Rewarded levels: the direct referrer (level 1) and, when the policy says
so, the partners above it, as long as each link on the way is active: a flagged link stops the
climb: a partner whose own link is under review earns for its referrals but passes nothing up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from alliance.v1 import referral_events_pb2
from services.foundation.db import utcnow
from services.foundation.errors import AlreadyExists
from services.foundation.idempotency import command_hash
from services.foundation.ids import new_id, ts_fields
from services.foundation.outbox import add_event
from services.referral import leaderboard
from services.referral.events import CONVERSION_REVOKED, CONVERTED
from services.referral.models import Conversion, ConversionReward, ConversionState, LinkState, Partner
from services.referral.policy import Policy
from services.referral.tree import add_up_chain, lock_links, path_rows

# Set by the events themselves: referral.v1.converted carries them as fields, and the points
# service adds them to the earn's attributes.
RESERVED_ATTRIBUTES = frozenset({"product", "level", "referred_id", "conversion_id", "event", "amount"})


@dataclass(frozen=True)
class ConversionCommand:
    business_ref: str
    user_id: str
    product: str
    occurred_at: datetime
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def request_hash(self) -> str:
        # Who completed what: the business itself. Its time and attributes may differ between the
        # two paths that report it (a call without occurred_at, core banking's event with it): the
        # first report is kept, and the second is the same business, not a conflict.
        return command_hash("conversion", {"user_id": self.user_id, "product": self.product})


@dataclass(frozen=True)
class Recorded:
    conversion: Conversion
    rewards: list[ConversionReward]
    replayed: bool


def record(session: Session, cmd: ConversionCommand, policy: Policy, *, source: str) -> Recorded:
    # The lock first: two deliveries of one business (an event and a call, two replicas) then
    # see each other, and the second replays instead of failing on the unique reference.
    lock_links(session)
    existing = session.exec(select(Conversion).where(Conversion.business_ref == cmd.business_ref)).first()
    if existing is not None:
        if existing.request_hash != cmd.request_hash:
            raise AlreadyExists(
                f"business_ref: {cmd.business_ref} was already recorded for a different conversion ({existing.id})"
            )
        return Recorded(existing, rewards_of(session, existing.id), replayed=True)
    partner = session.exec(select(Partner).where(Partner.user_id == cmd.user_id)).first()
    if partner is None or partner.link_state in (LinkState.NONE, LinkState.REJECTED):
        state = ConversionState.UNATTRIBUTED
    elif partner.link_state == LinkState.REVIEW:
        state = ConversionState.HELD
    else:
        state = ConversionState.REWARDED
    conversion = Conversion(
        id=new_id(),
        business_ref=cmd.business_ref,
        request_hash=cmd.request_hash,
        user_id=cmd.user_id,
        product=cmd.product,
        state=state,
        source=source,
        attributes=json.dumps(dict(cmd.attributes), sort_keys=True, ensure_ascii=False),
        occurred_at=cmd.occurred_at,
    )
    session.add(conversion)
    session.flush()
    if partner is not None:
        add_up_chain(session, partner.id, product=cmd.product)
    rewards = reward(session, conversion, partner, policy) if state == ConversionState.REWARDED else []
    return Recorded(conversion, rewards, replayed=False)


def reward(session: Session, conversion: Conversion, partner: Partner | None, policy: Policy) -> list[ConversionReward]:
    """Publish referral.v1.converted for each rewarded level and count it on the leaderboards."""
    assert partner is not None
    rewards: list[ConversionReward] = []
    attributes = json.loads(conversion.attributes)
    for row in path_rows(session, partner.id, limit=policy.levels):
        level = int(row["level"])
        event_id = add_event(
            session,
            CONVERTED,
            referral_events_pb2.ReferralConverted(
                referrer_id=row["user_id"],
                referred_id=conversion.user_id,
                product=conversion.product,
                level=level,
                occurred_at=ts_fields(conversion.occurred_at),
                attributes=attributes,
                conversion_id=conversion.id,
            ),
        )
        counted = None
        if level == 1:
            on = leaderboard.boards(
                conversion.occurred_at, policy.timezone, policy.campaigns_at(conversion.occurred_at)
            )
            leaderboard.count(session, user_id=row["user_id"], kind=row["kind"], on=on, delta=1)
            counted = json.dumps({"kind": row["kind"], "boards": on})
        rewards.append(
            ConversionReward(
                conversion_id=conversion.id, level=level, referrer_id=row["user_id"], event_id=event_id, counted=counted
            )
        )
        if row["link_state"] != LinkState.ACTIVE:  # a flagged partner passes nothing further up
            break
    session.add_all(rewards)
    conversion.state = ConversionState.REWARDED
    conversion.updated_at = utcnow()
    session.add(conversion)
    session.flush()
    return rewards


def release_held(session: Session, partner: Partner, policy: Policy) -> int:
    """The link was approved: reward its held conversions."""
    held = session.exec(
        select(Conversion).where(Conversion.user_id == partner.user_id, Conversion.state == ConversionState.HELD)
    ).all()
    for conversion in held:
        reward(session, conversion, partner, policy)
    return len(held)


def revoke_through(session: Session, partner: Partner, reason: str) -> int:
    """The link above `partner` was rejected: revoke every reward paid through it (the partner's
    own conversions at every level; a partner d levels below it, the levels above d), publishing
    referral.v1.conversion_revoked for each conversion. Held conversions are dropped. Returns the
    number of conversions whose rewards were revoked."""
    now = utcnow()
    for held in session.exec(
        select(Conversion).where(Conversion.user_id == partner.user_id, Conversion.state == ConversionState.HELD)
    ).all():
        held.state, held.updated_at = ConversionState.REVOKED, now
        session.add(held)
    revoked = 0
    # As deep as rewards were ever paid, not as deep as the rules pay now: they may have changed.
    deepest = session.exec(select(func.max(ConversionReward.level))).first() or 1
    for user_id, distance in _within(session, partner, deepest - 1):
        for conversion in session.exec(
            select(Conversion).where(Conversion.user_id == user_id, Conversion.state == ConversionState.REWARDED)
        ).all():
            taken = [r for r in rewards_of(session, conversion.id) if r.level > distance and not r.revoked]
            if not taken:
                continue
            revoked += 1
            _revoke(session, conversion, taken, reason, whole=distance == 0)
    session.flush()
    return revoked


def _revoke(
    session: Session,
    conversion: Conversion,
    taken: Sequence[ConversionReward],
    reason: str,
    *,
    whole: bool,
) -> None:
    now = utcnow()
    for item in taken:
        item.revoked = True
        session.add(item)
        if item.counted:
            counted = json.loads(item.counted)
            on = [(key, campaign) for key, campaign in counted["boards"]]
            leaderboard.count(session, user_id=item.referrer_id, kind=counted["kind"], on=on, delta=-1)
    if whole:
        conversion.state, conversion.updated_at = ConversionState.REVOKED, now
        session.add(conversion)
    add_event(
        session,
        CONVERSION_REVOKED,
        referral_events_pb2.ConversionRevoked(
            conversion_id=conversion.id,
            referred_id=conversion.user_id,
            rewards=[
                referral_events_pb2.RevokedReward(
                    converted_event_id=r.event_id, referrer_id=r.referrer_id, level=r.level
                )
                for r in taken
            ],
            reason=reason,
            occurred_at=ts_fields(now),
        ),
    )


def _within(session: Session, partner: Partner, depth: int) -> list[tuple[str, int]]:
    """The partner (distance 0) and the partners up to `depth` levels below it."""
    found = [(partner.user_id, 0)]
    frontier = [partner.id]
    for distance in range(1, depth + 1):
        if not frontier:
            break
        children = session.exec(select(Partner.id, Partner.user_id).where(col(Partner.referrer).in_(frontier))).all()
        found += [(user_id, distance) for _, user_id in children]
        frontier = [partner_id for partner_id, _ in children]
    return found


def rewards_of(session: Session, conversion_id: str) -> list[ConversionReward]:
    return list(
        session.exec(
            select(ConversionReward)
            .where(ConversionReward.conversion_id == conversion_id)
            .order_by(col(ConversionReward.level))
        ).all()
    )


def add_points(session: Session, *, event_id: str, transaction_id: str, points: int) -> bool:
    """points.v1.awarded for a referral.v1.converted event: the referrer's referral points and the
    `points_below` of everyone above. False when the event is not one of ours."""
    lock_links(session)
    reward_row = session.exec(select(ConversionReward).where(ConversionReward.event_id == event_id)).first()
    if reward_row is None:
        return False
    reward_row.points += points
    reward_row.points_transaction_id = transaction_id
    session.add(reward_row)
    _points_up_chain(session, reward_row.referrer_id, points)
    return True


class AwardNotYetSeen(Exception):
    """A reversal of an award whose points.v1.awarded has not been applied here yet (the two
    subjects have consumers of their own, so either may come first): retried, not dropped."""


def take_points(session: Session, *, event_id: str, points: int) -> bool:
    """points.v1.reversed of an earn of our referral.v1.converted event: the same counters, down."""
    lock_links(session)
    reward_row = session.exec(select(ConversionReward).where(ConversionReward.event_id == event_id)).first()
    if reward_row is None:
        return False
    if reward_row.points_transaction_id is None:
        raise AwardNotYetSeen(f"the award of {event_id} has not been applied yet")
    reward_row.points -= points
    session.add(reward_row)
    _points_up_chain(session, reward_row.referrer_id, -points)
    return True


def _points_up_chain(session: Session, user_id: str, points: int) -> None:
    partner_id = session.exec(select(Partner.id).where(Partner.user_id == user_id)).first()
    if partner_id is not None and points:
        add_up_chain(session, partner_id, points=points)
