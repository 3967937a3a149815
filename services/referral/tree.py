"""The referral forest in one unit of work: partners loaded on demand, links added and removed,
and the subtree counters of every ancestor brought up to date when the unit is written.

A batch of links (one Register, or an import of a hundred thousand) changes the counters of the
new links' children and of every ancestor above them. Each touched partner is written once, with
its children's changes summed first (children before parents), so a batch costs the partners it
touches, not the sum of their depths: a chain of 10,000 levels imported at once is 10,000 rows
written, not 50 million.

Every write of the tree or its counters (links, reviews, conversions, referral points) holds the
link lock (`lock_links`) and reads after taking it: so the cycle check sees every earlier link,
and counters read and written back in one unit are never overwritten by another.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlmodel import Session

from services.foundation import driver_sql
from services.foundation.db import utcnow
from services.foundation.schema import table_of
from services.foundation.upsert import insert_or_add
from services.referral.models import LinkState, Partner, PartnerCounter, PartnerProduct

PARTNER = table_of(Partner)
COUNTER = table_of(PartnerCounter)
PRODUCT = table_of(PartnerProduct)
# pg_advisory_xact_lock key of link writes ("referral" in ASCII); SQLite's BEGIN IMMEDIATE already
# serializes writers.
LINK_LOCK = 0x726566657272616C
_CHUNK = 500  # ids per IN (...) list
_FEW_CHAINS = 64  # below this many starts, ancestors are loaded a chain per query
# Most new links whose counters one statement adds up (Register batches; imports are larger and
# read their chains, which PostgreSQL cannot plan in one recursive query from so many starts).
ROLLUP_IN_SQL_MAX = 1_000
ANALYZE_AFTER = 5_000  # new partners in one unit that make PostgreSQL's statistics stale

_PARTNER_COLUMNS = ["id", "user_id", "kind", "code", "referrer", "link_state", "linked_referrer_id"]
_COUNTERS = ["descendants", "direct", "height", "points_own", "points_below"]  # partner_counter's
# What linking a partner that exists writes: never its id, user, kind or code (IssueCode and
# RevokeCode own those), and not its counters (written as any other touched partner's).
_LINKED_COLUMNS = ["referrer", "link_state", "linked_referrer_id"]
# What a touched partner's counters update writes (not updated_at: a link below is not a change
# of the partner).
_COUNTER_COLUMNS = ["descendants", "direct", "height", "points_below"]
_LINK_COLUMNS = [
    "link_seq",
    "link_code",
    "link_source",
    "linked_at",
    "device_hash",
    "phone_hash",
    "flagged_by",
    "flag_reason",
]


# A Node's fields, in order.
_NODE_SQL_COLUMNS = ", ".join(
    [*(f"partner.{c}" for c in _PARTNER_COLUMNS), *(f"partner_counter.{c}" for c in _COUNTERS)]
)
_SELECT_NODES = f"SELECT {_NODE_SQL_COLUMNS} FROM partner JOIN partner_counter ON partner_counter.id = partner.id"
_BY_IDS = f"{_SELECT_NODES} WHERE partner.id IN ({{ints}})"
# The chain from each start upwards, the starts included: UNION (not ALL) walks a shared
# ancestor once.
_CHAIN = """WITH RECURSIVE up(id) AS ({ints} UNION
    SELECT p.referrer FROM partner p JOIN up ON p.id = up.id WHERE p.referrer IS NOT NULL)
"""
_CHAINS_FROM_MANY = _CHAIN + f"{_SELECT_NODES} WHERE partner.id IN (SELECT id FROM up)"
# Adds new leaves (`{ints}`, inserted already) to every partner above them: per ancestor, how many
# arrived below it, how many directly, and the longest distance down to one.
_ADD_NEW_LEAVES = """WITH RECURSIVE chain(id, level) AS (
    SELECT referrer, 1 FROM partner WHERE id IN ({ints})
    UNION ALL
    SELECT p.referrer, chain.level + 1 FROM chain JOIN partner p ON p.id = chain.id WHERE p.referrer IS NOT NULL
), added(id, below, under, down) AS (
    SELECT id, count(*), sum(CASE WHEN level = 1 THEN 1 ELSE 0 END), max(level) FROM chain GROUP BY id
)
UPDATE partner_counter SET descendants = partner_counter.descendants + added.below,
    direct = partner_counter.direct + added.under, height = {greatest}(partner_counter.height, added.down)
FROM added WHERE partner_counter.id = added.id
"""
# From one start, given as a scalar: PostgreSQL plans that by the primary key, however deep.
_CHAIN_FROM_ONE = (
    _CHAIN.replace("{ints}", "SELECT CAST(? AS BIGINT)") + f"{_SELECT_NODES} JOIN up ON partner.id = up.id"
)


def lock_links(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LINK_LOCK})


@dataclass(eq=False)
class Node:
    """A partner row as the unit of work sees it; counters are those in the database until the
    forest is written."""

    id: int
    user_id: str
    kind: str
    code: str | None = None
    referrer: int | None = None
    link_state: str = LinkState.NONE
    linked_referrer_id: str | None = None
    descendants: int = 0
    direct: int = 0
    height: int = 0
    points_own: int = 0
    points_below: int = 0
    link: dict[str, object] | None = None  # link columns to write, when this unit linked it
    new: bool = False

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> Node:
        """A row of `_SELECT_NODES` (the dataclass's fields start in the same order)."""
        return cls(*row)


@dataclass(slots=True)
class _Change:
    descendants: int = 0
    direct: int = 0
    points: int = 0
    height: int = -1  # a new lower bound, -1: none
    products: dict[str, int] = field(default_factory=dict)


class Forest:
    """Partners of one unit of work, by id and user id."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.by_id: dict[int, Node] = {}
        self.by_user: dict[str, Node] = {}
        self._next_id: int | None = None
        self._next_seq: int | None = None
        self._attached: list[Node] = []  # children of new links, in order
        self._absent: set[str] = set()

    # -- loading ---------------------------------------------------------------------------

    def _keep(self, node: Node) -> Node:
        self.by_id[node.id] = node
        self.by_user[node.user_id] = node
        return node

    def _rows(self, sql: str, *params: object) -> Sequence[Sequence[Any]]:
        # A batch reads hundreds of partners: SQLAlchemy's processing of each row of a mapped
        # select cost more than the queries.
        return driver_sql.rows(self.session, sql, *params)

    def load_users(self, user_ids: Iterable[str]) -> None:
        """Load the partners of these users that exist, in one query."""
        wanted = [u for u in dict.fromkeys(user_ids) if u not in self.by_user and u not in self._absent]
        if not wanted:
            return
        for row in self._rows(f"{_SELECT_NODES} WHERE user_id IN ({{texts}})", wanted):
            self._keep(Node.from_tuple(row))
        self._absent.update(u for u in wanted if u not in self.by_user)

    def user(self, user_id: str) -> Node | None:
        if user_id not in self.by_user and user_id not in self._absent:
            self.load_users([user_id])
        return self.by_user.get(user_id)

    def node(self, partner_id: int) -> Node:
        if partner_id not in self.by_id:
            self._load_path_from(partner_id)
        return self.by_id[partner_id]

    def _load_path_from(self, partner_id: int) -> None:
        """Load a partner and every ancestor above it not loaded yet, in one recursive query."""
        for row in self._rows(_CHAIN_FROM_ONE, partner_id):
            if row[0] not in self.by_id:
                self._keep(Node.from_tuple(row))

    def load_paths(self, partner_ids: Sequence[int]) -> None:
        """Load the ancestors of these partners. SQLite walks every chain in one recursive query
        (shared ancestors once). PostgreSQL estimates such a query's rows from its start and joins
        each level by scanning the whole table (a second or more on a million partners), so there
        a few chains are walked one recursive query each, and many a level at a time."""
        frontier = {self.by_id[i].referrer for i in partner_ids if i in self.by_id}
        starts = sorted(i for i in frontier if i is not None and i not in self.by_id)
        if not starts:
            return
        if self.session.get_bind().dialect.name != "postgresql":
            for row in self._rows(_CHAINS_FROM_MANY, starts):
                if row[0] not in self.by_id:
                    self._keep(Node.from_tuple(row))
        elif len(starts) <= _FEW_CHAINS:
            for start in starts:
                if start not in self.by_id:
                    self._load_path_from(start)
        else:
            while starts:
                above = {self._keep(Node.from_tuple(row)).referrer for row in self._rows(_BY_IDS, starts)}
                starts = sorted(i for i in above if i is not None and i not in self.by_id)

    def ancestors(self, node: Node) -> Iterator[Node]:
        """The partners above `node`, nearest first, as they are in this unit (new links included)."""
        current = node
        while current.referrer is not None:
            current = self.node(current.referrer)
            yield current

    # -- changes ---------------------------------------------------------------------------

    def create(self, user_id: str, kind: str) -> Node:
        if self._next_id is None:
            self._number_from_stored()
        assert self._next_id is not None
        node = Node(id=self._next_id, user_id=user_id, kind=kind, new=True)
        self._next_id += 1
        self._absent.discard(user_id)
        return self._keep(node)

    def _number_from_stored(self) -> None:
        """Partner ids and link numbers go on from the largest stored (the link lock is held)."""
        [(last_id, last_seq)] = self._rows("SELECT (SELECT max(id) FROM partner), (SELECT max(link_seq) FROM partner)")
        self._next_id, self._next_seq = (last_id or 0) + 1, (last_seq or 0) + 1

    def attach(self, child: Node, parent: Node, state: str, link: dict[str, object]) -> None:
        child.referrer = parent.id
        child.link_state = state
        child.linked_referrer_id = parent.user_id
        if self._next_seq is None:
            self._number_from_stored()
        assert self._next_seq is not None
        child.link = link | {"link_seq": self._next_seq}
        self._next_seq += 1
        parent.direct += 1  # seen at once by the cycle checks of later links in the batch
        self._attached.append(child)

    def only_new_leaves(self) -> bool:
        """True when every link of this unit so far brings a new partner under an existing one, and
        few enough of them: the database can then add them up every chain itself (see `write`)."""
        return len(self._attached) <= ROLLUP_IN_SQL_MAX and all(
            child.new and child.referrer is not None and not self.by_id[child.referrer].new for child in self._attached
        )

    def write(self) -> None:
        """Write new partners, new links and every touched ancestor's counters.

        New partners under existing ones (a batch of Register calls) carry no subtree: each adds
        one descendant, and a height of its distance, to every partner above it. One statement
        climbs their chains and adds that up inside the database, so the chains are never read
        into this process. Any other batch (a subtree moving, an import) is summed here, children
        before parents, from the chains loaded."""
        rolled_up_in_sql = self.only_new_leaves()
        changes = {} if rolled_up_in_sql else self._counter_changes()
        now = utcnow()
        new_partners: list[dict[str, object]] = []
        new_counters: list[dict[str, object]] = []
        linked: list[dict[str, object]] = []
        counters: list[tuple[object, ...]] = []
        for node in self.by_id.values():
            change = changes.get(node.id)
            if not node.new and change is None and node.link is None:
                continue
            if change is not None:
                node.descendants += change.descendants
                node.points_below += change.points
                node.height = max(node.height, change.height)
            if node.new:
                row = {name: getattr(node, name) for name in _PARTNER_COLUMNS} | dict.fromkeys(_LINK_COLUMNS)
                new_partners.append(row | (node.link or {}) | {"created_at": now, "updated_at": now})
                new_counters.append({name: getattr(node, name) for name in ["id", *_COUNTERS]})
                continue
            if node.link is not None:
                row = {name: getattr(node, name) for name in ["id", *_LINKED_COLUMNS]}
                linked.append(row | node.link | {"updated_at": now})
            counters.append((*(getattr(node, name) for name in _COUNTER_COLUMNS), node.id))
        connection = self.session.connection()
        if new_partners:
            driver_sql.insert(self.session, PARTNER, new_partners)
            driver_sql.insert(self.session, COUNTER, new_counters)
            if len(new_partners) >= ANALYZE_AFTER and connection.dialect.name == "postgresql":
                # Statistics of a table that grew by a bulk import lag until autovacuum comes by;
                # meanwhile the next batch's lookups were planned as whole-table scans (seconds each).
                connection.execute(text("ANALYZE partner"))
                connection.execute(text("ANALYZE partner_counter"))
        if rolled_up_in_sql and self._attached:
            greatest = "GREATEST" if connection.dialect.name == "postgresql" else "max"
            self._rows(_ADD_NEW_LEAVES.replace("{greatest}", greatest), [child.id for child in self._attached])
        # The bulk of a link's work: one row per ancestor.
        assignments = ", ".join(f"{name} = ?" for name in _COUNTER_COLUMNS)
        driver_sql.execute_many(self.session, f"UPDATE partner_counter SET {assignments} WHERE id = ?", counters)
        if linked:
            names = [*_LINKED_COLUMNS, *_LINK_COLUMNS, "updated_at"]
            statement = (
                update(PARTNER)
                .where(PARTNER.c.id == bindparam("b_id"))
                .values({name: bindparam(f"b_{name}") for name in names})
            )
            connection.execute(statement, [{f"b_{k}": r[k] for k in ["id", *names]} for r in linked])
        products = [
            {"partner": partner_id, "product": product, "own": 0, "below": count}
            for partner_id, change in changes.items()
            for product, count in change.products.items()
            if count
        ]
        if products:
            connection.execute(insert_or_add(connection, PRODUCT, ["partner", "product"], ["below"]), products)
        for node in self.by_id.values():
            node.new, node.link = False, None
        self._attached.clear()

    def _counter_changes(self) -> dict[int, _Change]:
        """Each touched partner's change, children before parents."""
        if not self._attached:
            return {}
        carried = self._products_of(self._attached)
        touched: dict[int, Node] = {}
        for child in self._attached:
            touched[child.id] = child
            for above in self.ancestors(child):
                if above.id in touched:
                    break
                touched[above.id] = above
        waiting: dict[int, int] = defaultdict(int)  # touched children not yet summed
        for node in touched.values():
            if node.referrer is not None:
                waiting[node.referrer] += 1
        attached = {child.id for child in self._attached}
        changes: dict[int, _Change] = {node_id: _Change() for node_id in touched}
        ready = [node for node in touched.values() if waiting[node.id] == 0]
        while ready:
            node = ready.pop()
            change = changes[node.id]
            if node.referrer is None:
                continue
            up = changes[node.referrer]
            if node.id in attached:  # the whole subtree arrives
                up.descendants += node.descendants + change.descendants + 1
                up.points += node.points_own + node.points_below + change.points
                for product, count in carried.get(node.id, {}).items():
                    up.products[product] = up.products.get(product, 0) + count
            else:  # only what changed below it
                up.descendants += change.descendants
                up.points += change.points
            for product, count in change.products.items():
                up.products[product] = up.products.get(product, 0) + count
            up.height = max(up.height, max(node.height, change.height) + 1)
            waiting[node.referrer] -= 1
            if waiting[node.referrer] == 0:
                ready.append(touched[node.referrer])
        return changes

    def _products_of(self, nodes: Sequence[Node]) -> dict[int, dict[str, int]]:
        """Conversions of existing partners that move with their subtree (own + below)."""
        ids = [n.id for n in nodes if not n.new]
        found: dict[int, dict[str, int]] = defaultdict(dict)
        for start in range(0, len(ids), _CHUNK):
            rows = self.session.execute(
                select(PRODUCT.c.partner, PRODUCT.c.product, PRODUCT.c.own + PRODUCT.c.below).where(
                    PRODUCT.c.partner.in_(ids[start : start + _CHUNK])
                )
            )
            for partner_id, product, total in rows:
                if total:
                    found[partner_id][product] = total
        return found


# -- queries and single-partner changes ------------------------------------------------------

_PATH = """
WITH RECURSIVE up(id, level) AS (
    SELECT CAST({start} AS BIGINT), {first}
    UNION ALL
    SELECT p.referrer, up.level + 1 FROM partner p JOIN up ON p.id = up.id
    WHERE p.referrer IS NOT NULL AND up.level < :limit
)
SELECT {columns}, up.level AS level FROM up JOIN partner ON partner.id = up.id
JOIN partner_counter ON partner_counter.id = partner.id ORDER BY up.level
"""


def path_rows(
    session: Session, partner_id: int, *, include_self: bool = False, limit: int = 10**9
) -> list[dict[str, Any]]:
    """The partner (if `include_self`, level 0) and its ancestors nearest first (level 1 = its
    referrer), at most `limit` levels up."""
    if include_self:
        sql = _PATH.format(start=":start", first="0", columns=_NODE_SQL_COLUMNS)
    else:
        sql = _PATH.format(
            start="(SELECT referrer FROM partner WHERE id = :start)", first="1", columns=_NODE_SQL_COLUMNS
        )
    rows = session.execute(text(sql), {"start": partner_id, "limit": limit}).mappings()
    return [dict(row) for row in rows if row["id"] is not None]


# Each step reads the ancestor's row once and carries what the next step needs (its referrer)
# and what the answer shows (its user, kind, and the state of the link below it).
_USER_PATH = text("""
WITH RECURSIVE up(referrer, user_id, kind, link_state, below_state, level) AS (
    SELECT r.referrer, r.user_id, r.kind, r.link_state, u.link_state, 1
    FROM partner u JOIN partner r ON r.id = u.referrer WHERE u.user_id = :user_id
    UNION ALL
    SELECT p.referrer, p.user_id, p.kind, p.link_state, up.link_state, up.level + 1
    FROM partner p JOIN up ON p.id = up.referrer WHERE up.level < :limit
)
SELECT user_id, kind, level, below_state FROM up ORDER BY level
""")


def path_of_user(session: Session, user_id: str, *, limit: int) -> list[tuple[str, str, int, str]]:
    """(user_id, kind, level, state of the link below it) of the partners above a user, nearest
    first, at most `limit`: one query, the read path of GetPathToRoot."""
    rows = session.execute(_USER_PATH, {"user_id": user_id, "limit": limit})
    return [(u, k, int(level), state) for u, k, level, state in rows]


def add_up_chain(
    session: Session, partner_id: int, *, product: str | None = None, points: int = 0, count: int = 1
) -> None:
    """A conversion (product, count) or referral points of one partner: its own counters and the
    `below` counters of every ancestor."""
    above = [row["id"] for row in path_rows(session, partner_id)]
    connection = session.connection()
    if product is not None:
        rows = [{"partner": partner_id, "product": product, "own": count, "below": 0}]
        rows += [{"partner": a, "product": product, "own": 0, "below": count} for a in above]
        connection.execute(insert_or_add(connection, PRODUCT, ["partner", "product"], ["own", "below"]), rows)
    if points:
        session.execute(
            update(COUNTER).where(COUNTER.c.id == partner_id).values(points_own=COUNTER.c.points_own + points)
        )
        for start in range(0, len(above), _CHUNK):
            session.execute(
                update(COUNTER)
                .where(COUNTER.c.id.in_(above[start : start + _CHUNK]))
                .values(points_below=COUNTER.c.points_below + points)
            )


def detach(session: Session, child_id: int, *, now: datetime) -> None:
    """Take a partner and its subtree out from under its referrer: every ancestor loses the
    subtree's counters, and heights are recomputed from the remaining children."""
    child = session.get(Partner, child_id)
    counters = session.get(PartnerCounter, child_id)
    assert child is not None and child.referrer is not None and counters is not None
    above = path_rows(session, child_id)
    size = counters.descendants + 1
    points = counters.points_own + counters.points_below
    moved = {
        product: own + below
        for product, own, below in session.execute(
            select(PRODUCT.c.product, PRODUCT.c.own, PRODUCT.c.below).where(PRODUCT.c.partner == child_id)
        )
        if own + below
    }
    parent_id = child.referrer
    child.referrer = None
    child.updated_at = now
    session.add(child)
    session.flush()
    connection = session.connection()
    heights_changing = True  # once an ancestor keeps its height, every one above keeps theirs
    for row in above:
        values: dict[str, object] = {
            "descendants": COUNTER.c.descendants - size,
            "points_below": COUNTER.c.points_below - points,
        }
        if row["id"] == parent_id:
            values["direct"] = COUNTER.c.direct - 1
        if heights_changing:
            tallest = session.execute(
                select(func.max(COUNTER.c.height))
                .select_from(COUNTER.join(PARTNER, PARTNER.c.id == COUNTER.c.id))
                .where(PARTNER.c.referrer == row["id"])
            ).scalar()
            height = 0 if tallest is None else tallest + 1
            if height != row["height"]:
                values["height"] = height
            else:
                heights_changing = False
        session.execute(update(COUNTER).where(COUNTER.c.id == row["id"]).values(values))
        for product, count in moved.items():
            connection.execute(
                update(PRODUCT)
                .where(PRODUCT.c.partner == row["id"], PRODUCT.c.product == product)
                .values(below=PRODUCT.c.below - count)
            )
