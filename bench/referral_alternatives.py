"""Referral tree storage: counters up the ancestor chain (A, the chosen model) against a closure table (B).

    .venv/bin/python -m bench.referral_alternatives            # the full run (~10 min on 2 cores)
    .venv/bin/python -m bench.referral_alternatives --users 200000 --chain 2000   # a quick one

A. partner(user_id PK, referrer_id, descendants, height), index on referrer_id. A link c->p adds
   1 + c.descendants to every ancestor of c and raises its height to dist + c.height, in one
   statement (recursive CTE up the chain + UPDATE ... FROM). Subtree size and height: one row.
   Path to root: recursive CTE on referrer_id.
B. closure(ancestor, descendant, depth, PK(ancestor, descendant)), index (descendant, depth). A link
   c->p inserts (a, c, d+1) for every (a, p, d) and (c, c, 0). Subtree: count(*) and max(depth)
   where ancestor = X and depth > 0. Path to root: where descendant = X order by depth.

Both on SQLite (a file in --workdir, WAL, synchronous=NORMAL, as services/foundation/db.py opens it)
and on PostgreSQL (a scratch database, created and dropped here), with raw DB-API (sqlite3,
psycopg). The 1M-user tree is random but seeded: a referral push where each new user's referrer is
mostly a recent (active) user, sometimes a big referrer (chosen in proportion to referrals made)
or anyone; a dozen seed users and ~0.2% organic sign-ups are roots. The build computes each
model's rows in Python and bulk-loads them (SQLite executemany, PostgreSQL COPY), indexes after the
load, then checkpoints (SQLite) or VACUUM ANALYZEs (PostgreSQL); build time covers all of that.
The 10,000-level chain lives in its own SQLite file and its own PostgreSQL table; its closure
rows are generated in the database. Query times are medians of warm repeated calls on one
connection, each call executing the statement and fetching all its rows; "committed" times include
the commit (PostgreSQL flushes its WAL at each commit with synchronous_commit=on; SQLite with
synchronous=NORMAL does not sync at commit, only at checkpoints).

PostgreSQL plans the recursive step of A's CTE by table size: on the 10,000-row chain and the 1M
tree it is an index lookup per level, but a chain of 1,000 (7 pages, --chain 1000) gets a hash join
over a sequential scan at every level (~90 ms for the path instead of ~3 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

SUBTREE_TARGET = 100_000
SUBTREE_RUNS = 50
PATH_RUNS = 200
LINK_RUNS = 100  # new users under one leaf of the big tree
CHAIN_LINK_RUNS = 20
CHAIN_PATH_RUNS = 50
COPY_CHUNK = 200_000


# --- the tree ------------------------------------------------------------------------------------


@dataclass
class Tree:
    ids: list[str]
    parent: list[int]  # -1 for a root; a referrer always joined before the users it referred
    depth: list[int] = field(default_factory=list)
    descendants: list[int] = field(default_factory=list)
    height: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def referral_push(users: int, seed: int = 20260) -> Tree:
    """A seeded random referral tree: 12 seed roots, 0.2% organic roots, the rest referred."""
    rnd = random.Random(seed)
    parent = [-1] * users
    referrals: list[int] = []  # the referrer of every link so far: sampling it favours big referrers
    for i in range(1, users):
        if i < 12 or rnd.random() < 0.002:
            continue
        r = rnd.random()
        if r < 0.60:  # a recent, still active user (recency ~ exponential, mean 30,000 sign-ups back)
            p = i - 1 - int(rnd.expovariate(1 / 30_000)) % i
        elif r < 0.75:  # a big referrer, in proportion to the referrals already made
            p = referrals[rnd.randrange(len(referrals))] if referrals else rnd.randrange(i)
        else:  # anyone
            p = rnd.randrange(i)
        parent[i] = p
        referrals.append(p)
    return Tree([f"u{i:07d}" for i in range(users)], parent)


def chain_ids(levels: int) -> list[str]:
    return [f"k{i:06d}" for i in range(levels)]


def add_depths(tree: Tree) -> None:
    depth = [0] * len(tree)
    for c, p in enumerate(tree.parent):
        if p >= 0:
            depth[c] = depth[p] + 1
    tree.depth = depth


def add_counters(tree: Tree) -> None:
    """Model A's columns, bottom-up (children come after their referrer)."""
    descendants = [0] * len(tree)
    height = [0] * len(tree)
    parent = tree.parent
    for c in range(len(tree) - 1, -1, -1):
        p = parent[c]
        if p >= 0:
            descendants[p] += 1 + descendants[c]
            if height[c] + 1 > height[p]:
                height[p] = height[c] + 1
    tree.descendants, tree.height = descendants, height


def closure_rows(tree: Tree) -> Iterator[tuple[str, str, int]]:
    """Model B's rows: (c, c, 0) and (a, c, distance) for every ancestor a of c."""
    ids, parent = tree.ids, tree.parent
    for c in range(len(tree)):
        cid = ids[c]
        yield cid, cid, 0
        p, d = parent[c], 1
        while p >= 0:
            yield ids[p], cid, d
            p, d = parent[p], d + 1


def closure_copy_text(tree: Tree) -> Iterator[str]:
    """Model B's rows as COPY text, in chunks."""
    ids, parent = tree.ids, tree.parent
    lines: list[str] = []
    for c in range(len(tree)):
        cid = ids[c]
        lines.append(f"{cid}\t{cid}\t0\n")
        p, d = parent[c], 1
        while p >= 0:
            lines.append(f"{ids[p]}\t{cid}\t{d}\n")
            p, d = parent[p], d + 1
        if len(lines) >= COPY_CHUNK:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


# --- the two databases ---------------------------------------------------------------------------


class Db:
    name: str
    greatest: str  # scalar max of two values

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement in its own committed transaction."""
        raise NotImplementedError

    def sql(self, text: str) -> str:
        return text

    def size(self, tables: list[str]) -> int:
        """Bytes on disk: the SQLite file after a checkpoint; PostgreSQL's tables with their indexes."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Sqlite(Db):
    name = "SQLite"
    greatest = "max"

    def __init__(self, path: Path) -> None:
        self.path = path
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        self.conn = self.connect()

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def sql(self, text: str) -> str:
        return text.replace("%s", "?")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(self.sql(sql), params).fetchall()

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(self.sql(sql), params)
        self.conn.execute("COMMIT")

    def bulk(self, ddl: list[str], insert: str, rows: Iterator[Sequence[Any]], after: list[str]) -> None:
        self.conn.execute("PRAGMA cache_size=-1000000")  # 1 GB page cache for the build only
        self.conn.execute("BEGIN")
        for stmt in ddl:
            self.conn.execute(stmt)
        self.conn.executemany(insert, rows)
        for stmt in after:
            self.conn.execute(stmt)
        self.conn.execute("COMMIT")
        self.checkpoint()
        self.conn.close()
        self.conn = self.connect()  # queries run with the services' settings (default page cache)

    def checkpoint(self) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def size(self, tables: list[str]) -> int:
        self.checkpoint()
        return os.path.getsize(self.path)

    def close(self) -> None:
        self.conn.close()


class Postgres(Db):
    name = "PostgreSQL"
    greatest = "greatest"

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(sql, params)
        return cur.fetchall() if cur.description else []

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.conn.transaction():
            self.conn.execute(sql, params)

    def bulk(self, ddl: list[str], table: str, chunks: Iterator[str], after: list[str]) -> None:
        self.conn.execute("SET maintenance_work_mem = '1GB'")  # for the index builds
        with self.conn.transaction():
            for stmt in ddl:
                self.conn.execute(stmt)
            with self.conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                for chunk in chunks:
                    copy.write(chunk)
            for stmt in after:
                self.conn.execute(stmt)
        self.conn.execute(f"VACUUM ANALYZE {table}")
        self.conn.execute("RESET maintenance_work_mem")

    def size(self, tables: list[str]) -> int:
        return sum(self.execute("SELECT pg_total_relation_size(%s)", (t,))[0][0] for t in tables)

    def close(self) -> None:
        self.conn.close()


# --- the two models ------------------------------------------------------------------------------


class Model:
    name: str
    tables: list[str]

    def __init__(self, db: Db, table: str) -> None:
        self.db, self.t = db, table
        self.tables = [table]

    def build(self, tree: Tree) -> None:
        raise NotImplementedError

    def build_chain(self, levels: int) -> None:
        raise NotImplementedError

    def subtree(self, user: str) -> tuple[int, int]:
        raise NotImplementedError

    def path(self, user: str) -> list[str]:
        """The user's referrer, its referrer, ... up to the root."""
        raise NotImplementedError

    def link_new(self, child: str, referrer: str) -> None:
        """A new user (no descendants yet) referred by `referrer`, committed."""
        raise NotImplementedError

    def rows(self) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM {self.t}")[0][0])


class Counters(Model):
    name = "A counters"

    def build(self, tree: Tree) -> None:
        add_counters(tree)
        ids, parent, desc, height = tree.ids, tree.parent, tree.descendants, tree.height
        t = self.t
        if isinstance(self.db, Sqlite):
            self.db.bulk(
                [
                    f"CREATE TABLE {t} (user_id TEXT PRIMARY KEY, referrer_id TEXT,"
                    " descendants INTEGER NOT NULL, height INTEGER NOT NULL)"
                ],
                f"INSERT INTO {t} VALUES (?, ?, ?, ?)",
                ((ids[i], ids[parent[i]] if parent[i] >= 0 else None, desc[i], height[i]) for i in range(len(tree))),
                [f"CREATE INDEX {t}_referrer ON {t} (referrer_id)"],
            )
        else:
            assert isinstance(self.db, Postgres)

            def chunks() -> Iterator[str]:
                for start in range(0, len(tree), COPY_CHUNK):
                    yield "".join(
                        f"{ids[i]}\t{ids[parent[i]] if parent[i] >= 0 else chr(92) + 'N'}\t{desc[i]}\t{height[i]}\n"
                        for i in range(start, min(start + COPY_CHUNK, len(tree)))
                    )

            self.db.bulk(
                [
                    f"CREATE TABLE {t} (user_id text NOT NULL, referrer_id text,"
                    " descendants integer NOT NULL, height integer NOT NULL)"
                ],
                t,
                chunks(),
                [f"ALTER TABLE {t} ADD PRIMARY KEY (user_id)", f"CREATE INDEX {t}_referrer ON {t} (referrer_id)"],
            )

    def build_chain(self, levels: int) -> None:
        ids = chain_ids(levels)
        tree = Tree(ids, [i - 1 for i in range(levels)])
        self.build(tree)

    def subtree(self, user: str) -> tuple[int, int]:
        row = self.db.execute(f"SELECT descendants, height FROM {self.t} WHERE user_id = %s", (user,))[0]
        return int(row[0]), int(row[1])

    def path(self, user: str) -> list[str]:
        t = self.t
        rows = self.db.execute(
            f"WITH RECURSIVE up(id, dist) AS ("
            f" SELECT referrer_id, 1 FROM {t} WHERE user_id = %s AND referrer_id IS NOT NULL"
            f" UNION ALL"
            f" SELECT p.referrer_id, up.dist + 1 FROM {t} p JOIN up ON p.user_id = up.id"
            f" WHERE p.referrer_id IS NOT NULL)"
            f" SELECT id FROM up ORDER BY dist",
            (user,),
        )
        return [r[0] for r in rows]

    def link_sql(self) -> str:
        t = self.t
        return (
            f"WITH RECURSIVE anc(id, dist) AS ("
            f" SELECT CAST(%s AS TEXT), 1"
            f" UNION ALL"
            f" SELECT p.referrer_id, anc.dist + 1 FROM {t} p JOIN anc ON p.user_id = anc.id"
            f" WHERE p.referrer_id IS NOT NULL)"
            f" UPDATE {t} SET descendants = {t}.descendants + 1 + %s,"
            f" height = {self.db.greatest}({t}.height, anc.dist + %s)"
            f" FROM anc WHERE {t}.user_id = anc.id"
        )

    def link_new(self, child: str, referrer: str) -> None:
        db, t = self.db, self.t
        if isinstance(db, Sqlite):
            db.conn.execute("BEGIN IMMEDIATE")
            db.conn.execute(f"INSERT INTO {t} VALUES (?, ?, 0, 0)", (child, referrer))
            db.conn.execute(db.sql(self.link_sql()), (referrer, 0, 0))
            db.conn.execute("COMMIT")
        else:
            assert isinstance(db, Postgres)
            with db.conn.transaction():
                db.conn.execute(f"INSERT INTO {t} VALUES (%s, %s, 0, 0)", (child, referrer))
                db.conn.execute(self.link_sql(), (referrer, 0, 0))


class Closure(Model):
    name = "B closure"

    # SQLite: a rowid table's PRIMARY KEY(ancestor, descendant) is stored as a UNIQUE index on those
    # columns (sqlite_autoindex_*); creating that index after the load gives the same bytes, faster.
    def after_load(self) -> list[str]:
        t = self.t
        if isinstance(self.db, Sqlite):
            unique = f"CREATE UNIQUE INDEX {t}_pk ON {t} (ancestor, descendant)"
        else:
            unique = f"ALTER TABLE {t} ADD PRIMARY KEY (ancestor, descendant)"
        return [unique, f"CREATE INDEX {t}_descendant ON {t} (descendant, depth)"]

    def ddl(self) -> str:
        return f"CREATE TABLE {self.t} (ancestor TEXT NOT NULL, descendant TEXT NOT NULL, depth INTEGER NOT NULL)"

    def build(self, tree: Tree) -> None:
        if isinstance(self.db, Sqlite):
            self.db.bulk([self.ddl()], f"INSERT INTO {self.t} VALUES (?, ?, ?)", closure_rows(tree), self.after_load())
        else:
            assert isinstance(self.db, Postgres)
            self.db.bulk([self.ddl()], self.t, closure_copy_text(tree), self.after_load())

    def build_chain(self, levels: int) -> None:
        """levels * (levels + 1) / 2 rows, generated in the database."""
        t, db = self.t, self.db
        if isinstance(db, Sqlite):
            db.conn.execute("PRAGMA cache_size=-1000000")
            db.conn.execute("BEGIN")
            db.conn.execute(self.ddl())
            db.conn.execute(
                f"INSERT INTO {t} WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)"
                f" SELECT printf('k%06d', a.i), printf('k%06d', d.i), d.i - a.i FROM n a JOIN n d ON d.i >= a.i",
                (levels,),
            )
            for stmt in self.after_load():
                db.conn.execute(stmt)
            db.conn.execute("COMMIT")
            db.checkpoint()
            db.conn.close()
            db.conn = db.connect()
        else:
            assert isinstance(db, Postgres)
            db.conn.execute("SET maintenance_work_mem = '1GB'")
            with db.conn.transaction():
                db.conn.execute(self.ddl())
                db.conn.execute(
                    f"INSERT INTO {t} SELECT 'k' || lpad(a::text, 6, '0'), 'k' || lpad(d::text, 6, '0'), d - a"
                    f" FROM generate_series(0, %s - 1) a, generate_series(a, %s - 1) d",
                    (levels, levels),
                )
                for stmt in self.after_load():
                    db.conn.execute(stmt)
            db.conn.execute(f"VACUUM ANALYZE {t}")
            db.conn.execute("RESET maintenance_work_mem")

    def subtree(self, user: str) -> tuple[int, int]:
        row = self.db.execute(
            f"SELECT count(*), coalesce(max(depth), 0) FROM {self.t} WHERE ancestor = %s AND depth > 0", (user,)
        )[0]
        return int(row[0]), int(row[1])

    def path(self, user: str) -> list[str]:
        rows = self.db.execute(
            f"SELECT ancestor FROM {self.t} WHERE descendant = %s AND depth > 0 ORDER BY depth", (user,)
        )
        return [r[0] for r in rows]

    def link_new(self, child: str, referrer: str) -> None:
        t = self.t
        self.db.write(
            f"INSERT INTO {t} (ancestor, descendant, depth)"
            f" SELECT ancestor, %s, depth + 1 FROM {t} WHERE descendant = %s"
            f" UNION ALL SELECT %s, %s, 0",
            (child, referrer, child, child),
        )


# --- measuring -----------------------------------------------------------------------------------


def median_ms(call: Callable[[], object], runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def links_ms(model: Model, referrer: str, prefix: str, runs: int) -> float:
    """Median of `runs` new users added one by one under `referrer`, each committed."""
    times = []
    for k in range(runs):
        start = time.perf_counter()
        model.link_new(f"{prefix}{k:03d}", referrer)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@dataclass
class Result:
    model: str
    db: str
    users: int = 0
    build_s: float = 0.0
    rows: int = 0
    size: int = 0
    subtree_ms: float = 0.0
    path_ms: float = 0.0
    link_ms: float = 0.0
    chain_build_s: float = 0.0
    chain_rows: int = 0
    chain_size: int = 0
    chain_link_ms: float = 0.0
    chain_path_ms: float = 0.0


@dataclass
class Picks:
    big: int  # the node whose subtree is nearest SUBTREE_TARGET (not a root)
    leaf: int  # a leaf at the median leaf depth


def pick(tree: Tree) -> Picks:
    big = min(
        (i for i in range(len(tree)) if tree.parent[i] >= 0), key=lambda i: abs(tree.descendants[i] - SUBTREE_TARGET)
    )
    has_child = [False] * len(tree)
    for p in tree.parent:
        if p >= 0:
            has_child[p] = True
    leaves = [i for i in range(len(tree)) if not has_child[i]]
    typical = sorted(tree.depth[i] for i in leaves)[len(leaves) // 2]
    at_typical = [i for i in leaves if tree.depth[i] == typical]
    return Picks(big, at_typical[len(at_typical) // 2])


LOADS: list[float] = []  # the 1-minute load average at each log line: other work on the machine


def log(message: str) -> None:
    LOADS.append(os.getloadavg()[0])
    print(f"[{time.strftime('%H:%M:%S')}] {message} (load {LOADS[-1]:.2f})", file=sys.stderr, flush=True)


def measure_tree(model: Model, tree: Tree, picks: Picks, result: Result) -> None:
    start = time.perf_counter()
    model.build(tree)
    result.build_s = time.perf_counter() - start
    result.users = len(tree)
    result.rows = model.rows()
    result.size = model.db.size(model.tables)
    log(f"{result.model} on {result.db}: built in {result.build_s:.1f} s, {result.rows:,} rows, {mib(result.size)}")

    big, leaf = tree.ids[picks.big], tree.ids[picks.leaf]
    expected = (tree.descendants[picks.big], tree.height[picks.big])
    got = model.subtree(big)
    assert got == expected, (model.name, got, expected)
    want_path = []
    p = tree.parent[picks.leaf]
    while p >= 0:
        want_path.append(tree.ids[p])
        p = tree.parent[p]
    assert model.path(leaf) == want_path, model.name
    result.subtree_ms = median_ms(lambda: model.subtree(big), SUBTREE_RUNS)
    result.path_ms = median_ms(lambda: model.path(leaf), PATH_RUNS)
    result.link_ms = links_ms(model, leaf, "new", LINK_RUNS)
    d, h = model.subtree(leaf)
    assert (d, h) == (LINK_RUNS, 1), (model.name, d, h)
    above = tree.parent[picks.leaf]
    want = (tree.descendants[above] + LINK_RUNS, max(tree.height[above], 2))
    assert model.subtree(tree.ids[above]) == want, (model.name, want)


def measure_chain(model: Model, levels: int, result: Result) -> None:
    start = time.perf_counter()
    model.build_chain(levels)
    result.chain_build_s = time.perf_counter() - start
    result.chain_rows = model.rows()
    result.chain_size = model.db.size(model.tables)
    ids = chain_ids(levels)
    bottom = ids[-1]
    assert len(model.path(bottom)) == levels - 1
    assert model.subtree(ids[0]) == (levels - 1, levels - 1)
    result.chain_path_ms = median_ms(lambda: model.path(bottom), CHAIN_PATH_RUNS)
    # Each new link goes under the previous one, so the chain grows to levels + CHAIN_LINK_RUNS.
    times = []
    below = bottom
    for k in range(CHAIN_LINK_RUNS):
        child = f"k{levels + k:06d}"
        start = time.perf_counter()
        model.link_new(child, below)
        times.append(time.perf_counter() - start)
        below = child
    result.chain_link_ms = statistics.median(times) * 1000
    assert model.subtree(ids[0]) == (levels - 1 + CHAIN_LINK_RUNS, levels - 1 + CHAIN_LINK_RUNS)
    log(
        f"{result.model} on {result.db}: chain of {levels:,} built in {result.chain_build_s:.1f} s,"
        f" {result.chain_rows:,} rows, {mib(result.chain_size)}"
    )


# --- the run -------------------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 10 * 2**20 else f"{n / 2**10:,.0f} KiB"


def table(results: list[Result], levels: int) -> str:
    head = "| | " + " | ".join(f"{r.model}, {r.db}" for r in results) + " |"
    rule = "|---|" + "---:|" * len(results)
    lines = [head, rule]

    def row(label: str, cell: Callable[[Result], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")

    users = results[0].users
    row(f"build {users:,} users (s)", lambda r: f"{r.build_s:.1f}")
    row("rows", lambda r: f"{r.rows:,}")
    row("size on disk", lambda r: mib(r.size))
    row(
        f"subtree size + height, ~{SUBTREE_TARGET:,} below (ms, median of {SUBTREE_RUNS})",
        lambda r: f"{r.subtree_ms:.3f}",
    )
    row(f"path to root, leaf at typical depth (ms, median of {PATH_RUNS})", lambda r: f"{r.path_ms:.3f}")
    row(f"add a new user under that leaf, committed (ms, median of {LINK_RUNS})", lambda r: f"{r.link_ms:.3f}")
    row(f"chain of {levels:,}: rows", lambda r: f"{r.chain_rows:,}")
    row(f"chain of {levels:,}: size on disk", lambda r: mib(r.chain_size))
    row(f"chain of {levels:,}: build (s, in-database)", lambda r: f"{r.chain_build_s:.1f}")
    row(
        f"chain: add a link at the bottom, committed (ms, median of {CHAIN_LINK_RUNS})",
        lambda r: f"{r.chain_link_ms:.1f}",
    )
    row(f"chain: path to root from the bottom (ms, median of {CHAIN_PATH_RUNS})", lambda r: f"{r.chain_path_ms:.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--chain", type=int, default=10_000, help="levels of the chain")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/referral_alt"), help="for the SQLite files")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432", help="server URL, no database")
    parser.add_argument("--pg-db", default="referral_alt", help="scratch database, created and dropped")
    parser.add_argument("--only", choices=["sqlite", "postgres"], help="one database only")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite files and the PostgreSQL database")
    args = parser.parse_args()

    started = time.perf_counter()
    tree = referral_push(args.users)
    add_depths(tree)
    add_counters(tree)
    picks = pick(tree)
    roots = sum(1 for p in tree.parent if p < 0)
    mean_depth = sum(tree.depth) / len(tree)
    log(f"tree of {len(tree):,} in {time.perf_counter() - started:.1f} s")

    results: list[Result] = []
    pg_version = "not run"
    args.workdir.mkdir(parents=True, exist_ok=True)
    admin = f"{args.pg}/postgres"
    pg_url = f"{args.pg}/{args.pg_db}"
    if args.only != "sqlite":
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {args.pg_db}")
            conn.execute(f"CREATE DATABASE {args.pg_db}")
    try:
        for kind in ("sqlite", "postgres"):
            if args.only and args.only != kind:
                continue
            for model_class in (Counters, Closure):
                tag = "a" if model_class is Counters else "b"
                db: Db = Sqlite(args.workdir / f"tree_{tag}.db") if kind == "sqlite" else Postgres(pg_url)
                result = Result(model_class.name, db.name)
                table_name = "partner" if model_class is Counters else "closure"
                measure_tree(model_class(db, table_name), tree, picks, result)
                db.close()
                db = Sqlite(args.workdir / f"chain_{tag}.db") if kind == "sqlite" else Postgres(pg_url)
                measure_chain(model_class(db, f"chain_{table_name}"), args.chain, result)
                db.close()
                results.append(result)
        if args.only != "sqlite":
            with psycopg.connect(pg_url) as conn:
                settings = [
                    str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                    for name in ("server_version", "shared_buffers", "synchronous_commit")
                ]
                pg_version = "{} (shared_buffers {}, synchronous_commit {})".format(*settings)
    finally:
        if not args.keep:
            if args.only != "sqlite":
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {args.pg_db}")
            for name in ("tree_a.db", "tree_b.db", "chain_a.db", "chain_b.db"):
                for suffix in ("", "-wal", "-shm"):
                    (args.workdir / f"{name}{suffix}").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                args.workdir.rmdir()

    big, leaf = picks.big, picks.leaf
    print(
        f"Referral tree: {len(tree):,} users, {roots:,} roots, mean depth {mean_depth:.1f},"
        f" max depth {max(tree.depth)}; subtree node {tree.ids[big]} (depth {tree.depth[big]},"
        f" {tree.descendants[big]:,} below, height {tree.height[big]});"
        f" leaf {tree.ids[leaf]} at depth {tree.depth[leaf]} (the median leaf depth)."
    )
    print(
        f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL), PostgreSQL {pg_version};"
        f" {os.cpu_count()} CPUs, 1-minute load average {min(LOADS):.2f}-{max(LOADS):.2f} at the log lines;"
        f" total {time.perf_counter() - started:.0f} s.\n"
    )
    print(table(results, args.chain))


if __name__ == "__main__":
    main()
