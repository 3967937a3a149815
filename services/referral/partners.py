"""Partners and their codes: issued once and stable, revoked, reissued."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, select

from services.foundation.db import utcnow
from services.referral import codes
from services.referral.models import Partner, ReferralCode
from services.referral.tree import Forest, lock_links


@dataclass(frozen=True)
class Issued:
    code: ReferralCode
    issued: bool


def issue_code(session: Session, user_id: str, kind: str | None, *, reissue: bool) -> Issued:
    """The user's active code; a new one if there is none (or `reissue`: the old one revoked).
    `kind`, when given, is recorded (corrected if the partner was first seen as another kind:
    an import names referrers without always knowing their kind)."""
    lock_links(session)  # partner ids are handed out under the link lock
    forest = Forest(session)
    node = forest.user(user_id)
    if node is None:
        node = forest.create(user_id, kind or "customer")
        forest.write()
    partner = session.get(Partner, node.id)
    assert partner is not None
    if kind is not None and partner.kind != kind:
        partner.kind, partner.updated_at = kind, utcnow()
        session.add(partner)
    if partner.code is not None:
        current = session.get(ReferralCode, partner.code)
        assert current is not None
        if not reissue:
            return Issued(current, issued=False)
        _revoke(current, "reissued")
        session.add(current)
    code = ReferralCode(code=_unused_code(session), user_id=user_id)
    session.add(code)
    partner.code, partner.updated_at = code.code, utcnow()
    session.add(partner)
    session.flush()
    return Issued(code, issued=True)


def revoke_code(session: Session, user_id: str, reason: str) -> str | None:
    lock_links(session)  # against a reissue of the same user's code in flight
    partner = session.exec(select(Partner).where(Partner.user_id == user_id)).first()
    if partner is None or partner.code is None:
        return None
    current = session.get(ReferralCode, partner.code)
    assert current is not None
    _revoke(current, reason or "revoked")
    partner.code, partner.updated_at = None, utcnow()
    session.add_all([current, partner])
    session.flush()
    return current.code


def _revoke(code: ReferralCode, reason: str) -> None:
    code.active = False
    code.revoked_at = utcnow()
    code.revoke_reason = reason


def _unused_code(session: Session) -> str:
    while True:  # a clash is about one in a million per issued code: retry
        candidate = codes.new_code()
        if session.get(ReferralCode, candidate) is None:
            return candidate
