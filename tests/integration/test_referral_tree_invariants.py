"""The forest's counters against a brute-force recount, after random links (out of order, in
batches, with cycles and repeats), conversions, referral points and rejections, on SQLite and
PostgreSQL. These are the invariants written at the top of services/referral/models.py."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from sqlmodel import Session, col, select

from services.foundation.db import Database
from services.referral import conversions, reviews
from services.referral.conversions import ConversionCommand
from services.referral.linking import Proposal, link_all
from services.referral.models import (
    SCHEMA,
    ConversionReward,
    LeaderboardCount,
    LinkState,
    Partner,
    PartnerCounter,
    PartnerProduct,
)
from services.referral.policy import Policy, ReferralCampaign
from tests.support import database_with

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    with database_with(database_url, SCHEMA.complete_metadata()) as database:
        yield database


def counters_of(session: Session, user_id: str) -> PartnerCounter:
    return session.exec(
        select(PartnerCounter).join(Partner, col(Partner.id) == PartnerCounter.id).where(Partner.user_id == user_id)
    ).one()


def recount(session: Session) -> None:
    """Assert every stored counter equals the one computed from the parent pointers."""
    partners = {p.id: p for p in session.exec(select(Partner)).all()}
    counters = {c.id: c for c in session.exec(select(PartnerCounter)).all()}
    assert counters.keys() == partners.keys(), "a partner without its counters row, or counters of nobody"
    children: dict[int, list[int]] = defaultdict(list)
    for p in partners.values():
        if p.referrer is not None:
            children[p.referrer].append(p.id)
    own: dict[int, dict[str, int]] = defaultdict(dict)
    for row in session.exec(select(PartnerProduct)).all():
        own[row.partner][row.product] = row.own
    points_own = {c.id: c.points_own for c in counters.values()}
    rewards = session.exec(select(ConversionReward)).all()
    by_user = {p.user_id: p.id for p in partners.values()}
    expected_points: dict[int, int] = defaultdict(int)
    for reward in rewards:
        expected_points[by_user[reward.referrer_id]] += reward.points
    stored_below = {(r.partner, r.product): r.below for r in session.exec(select(PartnerProduct)).all()}

    # Children before parents, without recursion (a chain is 10,000 deep).
    order: list[int] = []
    stack = [p.id for p in partners.values() if p.referrer is None]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(children[node])
    assert len(order) == len(partners), "a cycle, or a partner under a missing referrer"
    size: dict[int, int] = defaultdict(int)
    height: dict[int, int] = defaultdict(int)
    points: dict[int, int] = defaultdict(int)
    products: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for node in reversed(order):
        p, c = partners[node], counters[node]
        assert (c.descendants, c.height, c.direct) == (size[node], height[node], len(children[node])), p.user_id
        assert c.points_below == points[node] and c.points_own == expected_points[node], p.user_id
        for product, count in products[node].items():
            assert stored_below.get((node, product), 0) == count, (p.user_id, product)
        if p.referrer is not None:
            up = p.referrer
            size[up] += size[node] + 1
            height[up] = max(height[up], height[node] + 1)
            points[up] += points[node] + points_own[node]
            for product, count in [*products[node].items(), *own[node].items()]:
                products[up][product] += count


@pytest.mark.parametrize("levels", [1, 3])
def test_counters_match_a_recount_after_random_work(db: Database, levels: int) -> None:
    rng = random.Random(levels)
    policy = Policy(levels=levels)
    users = [f"u{i:03d}" for i in range(120)]
    clock = iter(T0 + timedelta(minutes=i) for i in range(10_000))
    refs = iter(range(10_000))
    for step in range(40):
        batch = []
        for _ in range(rng.randint(1, 12)):
            user, referrer = rng.sample(users, 2)
            batch.append(
                Proposal(user_id=user, kind="customer", referrer_id=referrer, linked_at=next(clock), source="t")
            )

        db.run_sync(lambda s, batch=batch: link_all(s, batch, policy))  # refusals: recount finds no cycle
        for _ in range(rng.randint(0, 4)):
            user = rng.choice(users)
            cmd = ConversionCommand(
                business_ref=f"b{next(refs)}",
                user_id=user,
                product=rng.choice(["loan", "card"]),
                occurred_at=next(clock),
            )
            db.run_sync(lambda s, cmd=cmd: conversions.record(s, cmd, policy, source="t"))
        for reward in db.run_sync(lambda s: s.exec(select(ConversionReward).where(ConversionReward.points == 0)).all()):
            points = rng.randint(1, 50)
            db.run_sync(
                lambda s, r=reward, p=points: conversions.add_points(
                    s, event_id=r.event_id, transaction_id=r.event_id[:32], points=p
                )
            )
        if step % 5 == 4:
            linked = db.run_sync(
                lambda s: [
                    p.user_id for p in s.exec(select(Partner).where(Partner.link_state == LinkState.ACTIVE)).all()
                ]
            )
            victim = rng.choice(linked)
            db.run_sync(lambda s, v=victim: reviews.reject(s, v, "ops", "test", policy))
        db.run_sync(recount)


def test_counters_match_a_recount_after_batches_of_new_users_under_partners(db: Database) -> None:
    # Register's batches: every user new, every referrer a partner already. The database adds
    # these up the chains itself (Forest.write), so the counters are checked against a recount
    # with chains that share ancestors, several new users under one referrer, and a deep chain.
    rng = random.Random(11)
    clock = iter(T0 + timedelta(minutes=i) for i in range(10_000))
    chain = [
        Proposal(user_id=f"c{i}", kind="customer", referrer_id=f"c{i - 1}", linked_at=next(clock), source="t")
        for i in range(1, 60)
    ]
    db.run_sync(lambda s: link_all(s, chain, Policy()))
    partners = ["c0", *(p.user_id for p in chain)]
    serial = iter(range(10_000))
    for _ in range(25):
        batch = []
        for _ in range(rng.randint(1, 40)):
            user = f"n{next(serial)}"
            batch.append(
                Proposal(
                    user_id=user, kind="customer", referrer_id=rng.choice(partners), linked_at=next(clock), source="t"
                )
            )
        outcomes = db.run_sync(lambda s, batch=batch: link_all(s, batch, Policy()))
        assert {o.state for o in outcomes} == {LinkState.ACTIVE}
        partners += [p.user_id for p in batch]
        db.run_sync(recount)


def test_a_cycle_is_refused_in_a_batch_and_against_the_database(db: Database) -> None:
    policy = Policy()

    def proposal(user: str, referrer: str, minute: int) -> Proposal:
        return Proposal(
            user_id=user, kind="customer", referrer_id=referrer, linked_at=T0 + timedelta(minutes=minute), source="t"
        )

    # A <- B and B <- C already stored; C <- A would close A <- B <- C <- A.
    db.run_sync(lambda s: link_all(s, [proposal("b", "a", 1), proposal("c", "b", 2)], policy))
    outcomes = db.run_sync(lambda s: link_all(s, [proposal("a", "c", 3)], policy))
    assert outcomes[0].reason == "CYCLE" and "a <- b <- c <- a" in outcomes[0].message
    # The same loop made inside one batch: the third link is refused.
    outcomes = db.run_sync(
        lambda s: link_all(s, [proposal("y", "x", 1), proposal("z", "y", 2), proposal("x", "z", 3)], policy)
    )
    assert [o.state for o in outcomes] == ["active", "active", "refused"] and outcomes[2].reason == "CYCLE"
    db.run_sync(recount)


def test_a_chain_of_ten_thousand_levels(db: Database) -> None:
    """Deep as well as wide: one import of a 10,000-level chain, bottom link first, then answers."""
    policy = Policy()
    n = 10_000
    batch = [
        Proposal(
            user_id=f"c{i + 1}", kind="customer", referrer_id=f"c{i}", linked_at=T0 + timedelta(seconds=i), source="t"
        )
        for i in reversed(range(n))
    ]
    outcomes = db.run_sync(lambda s: link_all(s, batch, policy))
    assert all(o.state == "active" for o in outcomes)
    top = db.run_sync(lambda s: counters_of(s, "c0"))
    assert (top.descendants, top.height, top.direct) == (n, n, 1)
    # One more link at the bottom updates all 10,000 ancestors; a loop from the bottom is refused.
    db.run_sync(
        lambda s: link_all(
            s, [Proposal(user_id="extra", kind="customer", referrer_id=f"c{n}", linked_at=T0, source="t")], policy
        )
    )
    outcome = db.run_sync(
        lambda s: link_all(
            s, [Proposal(user_id="c0", kind="customer", referrer_id="extra", linked_at=T0, source="t")], policy
        )
    )
    assert outcome[0].reason == "CYCLE"
    db.run_sync(recount)


def test_a_rejection_takes_back_what_was_paid_after_the_rules_changed(db: Database) -> None:
    """Paid three levels deep and counted on a campaign board; then the rules drop to one level
    and lose the campaign; a rejection still revokes every level and empties the board."""
    three = Policy(levels=3, campaigns=(ReferralCampaign("spring", T0 - timedelta(days=30), None),))
    one = Policy(levels=1)
    chain = [Proposal(user_id=b, kind="customer", referrer_id=a, linked_at=T0, source="t") for a, b in pairwise("abcd")]
    db.run_sync(lambda s: link_all(s, chain, three))
    cmd = ConversionCommand(business_ref="b-1", user_id="d", product="loan", occurred_at=T0 + timedelta(hours=1))
    paid = db.run_sync(lambda s: conversions.record(s, cmd, three, source="t"))
    assert [(r.referrer_id, r.level) for r in paid.rewards] == [("c", 1), ("b", 2), ("a", 3)]
    db.run_sync(lambda s: reviews.reject(s, "c", "ops", "", one))  # the link c -> b
    rewards = db.run_sync(lambda s: s.exec(select(ConversionReward)).all())
    assert {(r.referrer_id, r.revoked) for r in rewards} == {("c", False), ("b", True), ("a", True)}
    boards = db.run_sync(lambda s: s.exec(select(LeaderboardCount).where(LeaderboardCount.user_id == "c")).all())
    assert {b.campaign for b in boards} == {"", "spring"} and all(b.conversions == 1 for b in boards)
    db.run_sync(lambda s: reviews.reject(s, "d", "ops", "", one))  # now d's own link: c loses it
    boards = db.run_sync(lambda s: s.exec(select(LeaderboardCount).where(LeaderboardCount.user_id == "c")).all())
    assert all(b.conversions == 0 for b in boards)
    db.run_sync(recount)


def test_a_reversal_before_its_award_waits_for_it(db: Database) -> None:
    db.run_sync(
        lambda s: link_all(
            s, [Proposal(user_id="y", kind="customer", referrer_id="x", linked_at=T0, source="t")], Policy()
        )
    )
    cmd = ConversionCommand(business_ref="b-2", user_id="y", product="loan", occurred_at=T0)
    [reward] = db.run_sync(lambda s: conversions.record(s, cmd, Policy(), source="t")).rewards
    with pytest.raises(conversions.AwardNotYetSeen):
        db.run_sync(lambda s: conversions.take_points(s, event_id=reward.event_id, points=100))
    db.run_sync(lambda s: conversions.add_points(s, event_id=reward.event_id, transaction_id="t1", points=100))
    db.run_sync(lambda s: conversions.take_points(s, event_id=reward.event_id, points=100))
    x = db.run_sync(lambda s: counters_of(s, "x"))
    assert x.points_own == 0
    db.run_sync(recount)
