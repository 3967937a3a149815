"""Links: one Register or a whole import batch, through exactly the same checks.

In order, for each proposed link (new user, referrer or code):
1. the code exists and is active (its owner is the referrer);
2. not a self-referral;
3. the user has no referrer yet (the same link again is "already linked", not an error);
4. no cycle: the user is not the referrer or above it (checked only when the user already has
   referrals of their own: a user without any cannot close a loop);
5. the velocity rules of the policy: over `max` registrations sharing the referrer, device or
   phone within the window puts the link under review (or refuses it, action: refuse).
Earlier links of the same batch count in every check, as if they had been registered one by one.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session

from services.foundation import driver_sql
from services.referral.models import LinkState
from services.referral.policy import Policy, VelocityRule
from services.referral.tree import PARTNER, ROLLUP_IN_SQL_MAX, Forest, Node, lock_links

LINKED_AT = PARTNER.c.linked_at


class Refusal:
    """Why a link is refused: the names of the API's RefusalReason."""

    UNKNOWN_CODE = "UNKNOWN_CODE"
    REVOKED_CODE = "REVOKED_CODE"
    SELF_REFERRAL = "SELF_REFERRAL"
    ALREADY_REFERRED = "ALREADY_REFERRED"
    CYCLE = "CYCLE"
    INVALID = "INVALID"
    VELOCITY = "VELOCITY"


@dataclass(frozen=True)
class Proposal:
    user_id: str
    kind: str
    linked_at: datetime
    source: str  # register | import:<batch_id>
    code: str | None = None
    referrer_id: str | None = None
    referrer_kind: str = "customer"
    device_hash: str | None = None
    phone_hash: str | None = None


@dataclass(frozen=True)
class Outcome:
    """`state`: active or review (linked now), already (the same link existed), refused."""

    state: str
    user_id: str
    referrer_id: str | None = None
    reason: str | None = None
    message: str = ""
    flagged_by: str | None = None
    flag_reason: str | None = None


def link_all(session: Session, proposals: Sequence[Proposal], policy: Policy) -> list[Outcome]:
    """Check and make every proposed link, in order; one outcome each."""
    lock_links(session)
    forest = Forest(session)
    codes = _load_codes(session, [p.code for p in proposals if p.code])
    forest.load_users(
        [p.user_id for p in proposals]
        + [p.referrer_id for p in proposals if p.referrer_id]
        + [c.user_id for c in codes.values()]
    )
    velocity = Velocity(session, policy.velocity)
    referrers = [(p, r) for p in proposals if (r := _referrer_of(p, codes))]
    velocity.prefetch(referrers, forest)
    if not _new_users_under_partners(forest, proposals, referrers):
        # Cycle checks and the counters to add up read the chains above; read them all at once.
        forest.load_paths([node.id for node in forest.by_id.values()])
    outcomes = [_link_one(forest, codes, velocity, p) for p in proposals]
    forest.write()
    return outcomes


def _new_users_under_partners(
    forest: Forest, proposals: Sequence[Proposal], referrers: Sequence[tuple[Proposal, str]]
) -> bool:
    """Every proposal a user who is no partner yet, under a referrer who is: no cycle can close,
    and the database adds the counters up (`Forest.write`), so no chain needs reading."""
    return (
        len(proposals) <= ROLLUP_IN_SQL_MAX
        and len(referrers) == len(proposals)
        and all(forest.by_user.get(p.user_id) is None for p in proposals)
        and all(r in forest.by_user for _, r in referrers)
    )


def _referrer_of(p: Proposal, codes: dict[str, CodeOwner]) -> str | None:
    code = codes.get(p.code) if p.code else None
    return code.user_id if code is not None else p.referrer_id


def _link_one(forest: Forest, codes: dict[str, CodeOwner], velocity: Velocity, p: Proposal) -> Outcome:
    def refuse(reason: str, message: str, referrer_id: str | None = p.referrer_id) -> Outcome:
        return Outcome("refused", p.user_id, referrer_id, reason, message)

    referrer_id = p.referrer_id
    if p.code:
        code = codes.get(p.code)
        if code is None:
            return refuse(Refusal.UNKNOWN_CODE, f"code: no referral code {p.code}")
        if not code.active:
            linked = forest.user(p.user_id)
            if (
                linked is not None
                and linked.link_state != LinkState.REJECTED
                and linked.linked_referrer_id == code.user_id
            ):
                return Outcome("already", p.user_id, code.user_id)  # a retry after the owner reissued
            return refuse(Refusal.REVOKED_CODE, f"code: {p.code} was revoked", code.user_id)
        if referrer_id and referrer_id != code.user_id:
            return refuse(Refusal.INVALID, f"code: {p.code} belongs to {code.user_id}, not referrer {referrer_id}")
        referrer_id = code.user_id
    if not referrer_id:
        return refuse(Refusal.INVALID, "code: a code or a referrer_id is required")
    if referrer_id == p.user_id:
        return refuse(Refusal.SELF_REFERRAL, f"user_id: {p.user_id} cannot use their own code", referrer_id)

    user = forest.user(p.user_id)
    if user is not None and user.link_state != LinkState.NONE:
        if user.linked_referrer_id == referrer_id and user.link_state != LinkState.REJECTED:
            return Outcome("already", p.user_id, referrer_id, flagged_by=None)
        if user.link_state == LinkState.REJECTED:
            message = f"user_id: {p.user_id}'s link to {user.linked_referrer_id} was rejected on review"
        else:
            message = f"user_id: {p.user_id} was already referred by {user.linked_referrer_id}"
        return refuse(Refusal.ALREADY_REFERRED, message, referrer_id)

    referrer = forest.user(referrer_id)
    if user is not None and user.direct > 0 and referrer is not None:
        loop = _loop(forest, user, referrer)
        if loop:
            return refuse(
                Refusal.CYCLE, f"user_id: linking {p.user_id} under {referrer_id} closes a loop: {loop}", referrer_id
            )

    flag = velocity.check(p, referrer_id)
    if flag is not None and flag[0].action == "refuse":
        return refuse(Refusal.VELOCITY, f"{flag[0].id}: {flag[1]}", referrer_id)

    if referrer is None:
        referrer = forest.create(referrer_id, p.referrer_kind)
    if user is None:
        user = forest.create(p.user_id, p.kind)
    state = LinkState.ACTIVE if flag is None else LinkState.REVIEW
    forest.attach(
        user,
        referrer,
        state,
        {
            "link_code": p.code,
            "link_source": p.source,
            "linked_at": p.linked_at,
            "device_hash": p.device_hash,
            "phone_hash": p.phone_hash,
            "flagged_by": flag[0].id if flag else None,
            "flag_reason": flag[1] if flag else None,
        },
    )
    velocity.record(p, referrer_id)
    return Outcome(
        state, p.user_id, referrer_id, flagged_by=flag[0].id if flag else None, flag_reason=flag[1] if flag else None
    )


def _loop(forest: Forest, user: Node, referrer: Node) -> str:
    """The loop a link user -> referrer would close ("A <- B <- C <- A"), or "" if none."""
    chain = [referrer]
    if referrer is not user:
        for above in forest.ancestors(referrer):
            chain.append(above)
            if above is user:
                break
        else:
            return ""
    names = [user.user_id] + [n.user_id for n in chain]
    return (
        " <- ".join(reversed(names))
        if len(names) <= 8
        else " <- ".join([*reversed(names[-4:]), "...", *reversed(names[:3])])
    )


@dataclass(frozen=True, slots=True)
class CodeOwner:
    user_id: str
    active: bool


def _load_codes(session: Session, codes: list[str]) -> dict[str, CodeOwner]:
    unique = list(dict.fromkeys(codes))
    if not unique:
        return {}
    found = driver_sql.rows(session, "SELECT code, user_id, active FROM referral_code WHERE code IN ({texts})", unique)
    return {code: CodeOwner(user_id, bool(active)) for code, user_id, active in found}


def busiest_window(times: Sequence[datetime], at: datetime, within: timedelta) -> int:
    """The most registrations, this one at `at` included, in any window of length `within` that
    contains it. Registrations stamped after it count too: the order they arrive in (an unsorted
    import, events delivered late, a backdated call) must not decide whether a rule fires."""
    first = bisect_left(times, at - within)
    last = bisect_right(times, at + within)
    around = times[first:last]
    split = bisect_right(around, at)
    # A window [s, s + within] holding `at` starts at `at` or at an earlier registration s.
    starts = [t for t in around[:split] if t >= at - within] + [at]
    return max(bisect_right(around, start + within) - bisect_left(around, start) + 1 for start in starts)


class Velocity:
    """Counts registrations sharing a referrer, device or phone within each rule's window: those
    in the database (read once per batch, for every key the batch has, over the batch's time span)
    and those made earlier in this batch."""

    # The partner column each rule counts by, and what its values are.
    _COLUMNS = {
        "referrer": ("referrer", "{ints}"),
        "device": ("device_hash", "{texts}"),
        "phone": ("phone_hash", "{texts}"),
    }

    def __init__(self, session: Session, rules: Sequence[VelocityRule]) -> None:
        self.session = session
        self.rules = rules
        self.times: dict[tuple[str, str], list[datetime]] = defaultdict(list)  # sorted

    @staticmethod
    def _key(per: str, p: Proposal, referrer_id: str) -> str | None:
        return {"referrer": referrer_id, "device": p.device_hash, "phone": p.phone_hash}[per]

    def prefetch(self, proposals: Sequence[tuple[Proposal, str]], forest: Forest) -> None:
        """Read the stored registrations every check of this batch can count."""
        stored = driver_sql.to_driver(self.session, LINKED_AT)
        read = driver_sql.from_driver(self.session, LINKED_AT)
        for per in {rule.per for rule in self.rules}:
            window = max(rule.within for rule in self.rules if rule.per == per)
            keyed = [(p, key) for p, referrer_id in proposals if (key := self._key(per, p, referrer_id))]
            values: dict[object, str] = {}
            for _, key in keyed:
                if per != "referrer":
                    values[key] = key
                elif (node := forest.by_user.get(key)) is not None and not node.new:
                    values[node.id] = key  # links under a referrer are found by its partner id
            if not values:
                continue
            low = min(p.linked_at for p, _ in keyed) - window
            high = max(p.linked_at for p, _ in keyed) + window
            column, values_of = self._COLUMNS[per]
            sql = f"SELECT {column}, linked_at FROM partner WHERE {column} IN ({values_of})"
            sql += " AND linked_at > ? AND linked_at <= ?"
            for value, linked_at in driver_sql.rows(self.session, sql, list(values), stored(low), stored(high)):
                self.times[(per, values[value])].append(read(linked_at))
        for times in self.times.values():
            times.sort()

    def check(self, p: Proposal, referrer_id: str) -> tuple[VelocityRule, str] | None:
        """The first rule this registration breaks, with the reason, or None."""
        for rule in self.rules:
            key = self._key(rule.per, p, referrer_id)
            if not key:
                continue
            busiest = busiest_window(self.times.get((rule.per, key), []), p.linked_at, rule.within)
            if busiest > rule.max:
                what = {"referrer": f"under {referrer_id}", "device": "on this device", "phone": "with this phone"}
                return rule, f"{busiest} registrations {what[rule.per]} within {rule.within_text} (max {rule.max})"
        return None

    def record(self, p: Proposal, referrer_id: str) -> None:
        for per in ("referrer", "device", "phone"):
            key = self._key(per, p, referrer_id)
            if key:
                insort(self.times[(per, key)], p.linked_at)
