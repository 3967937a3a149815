"""The review queue: links flagged by a velocity rule wait here until ops decide.

Approve: the link counts as any other and its held conversions are rewarded. Reject (a flagged
link, or an active one found fraudulent later): the user and their subtree leave the referrer's
tree, and every reward already paid through the link is revoked. Deciding the same way twice is a
no-op that answers the first decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, select

from services.foundation.db import utcnow
from services.foundation.errors import FailedPrecondition, NotFound
from services.referral import conversions
from services.referral.models import LinkState, Partner
from services.referral.policy import Policy
from services.referral.tree import detach, lock_links


@dataclass(frozen=True)
class Decided:
    partner: Partner
    released: int = 0
    revoked: int = 0
    replayed: bool = False


def _linked(session: Session, user_id: str) -> Partner:
    lock_links(session)
    partner = session.exec(select(Partner).where(Partner.user_id == user_id)).first()
    if partner is None or partner.link_state == LinkState.NONE:
        raise NotFound(f"user_id: {user_id} has no referral link")
    return partner


def approve(session: Session, user_id: str, reviewer: str, note: str, policy: Policy) -> Decided:
    partner = _linked(session, user_id)
    if partner.link_state == LinkState.ACTIVE:
        if partner.reviewed_by is not None:
            return Decided(partner, replayed=True)
        raise FailedPrecondition(f"user_id: {user_id}'s link is not under review")
    if partner.link_state == LinkState.REJECTED:
        raise FailedPrecondition(f"user_id: {user_id}'s link was already rejected by {partner.reviewed_by}")
    _decide(partner, LinkState.ACTIVE, reviewer, note)
    session.add(partner)
    session.flush()
    return Decided(partner, released=conversions.release_held(session, partner, policy))


def reject(session: Session, user_id: str, reviewer: str, note: str, policy: Policy) -> Decided:
    """`policy` is not consulted: a rejection takes back what was paid, whatever the rules say now."""
    partner = _linked(session, user_id)
    if partner.link_state == LinkState.REJECTED:
        return Decided(partner, replayed=True)
    revoked = conversions.revoke_through(
        session, partner, reason=f"link of {user_id} to {partner.linked_referrer_id} rejected by {reviewer}"
    )
    detach(session, partner.id, now=utcnow())
    session.refresh(partner)
    _decide(partner, LinkState.REJECTED, reviewer, note)
    session.add(partner)
    session.flush()
    return Decided(partner, revoked=revoked)


def _decide(partner: Partner, state: str, reviewer: str, note: str) -> None:
    now = utcnow()
    partner.link_state = state
    partner.reviewed_at = now
    partner.reviewed_by = reviewer
    partner.review_note = note or None
    partner.updated_at = now
