"""SQLite's WAL checkpoints on their own thread: the invariants at the top of
services/foundation/checkpoints.py, on real SQLite files.

What reached the database file (not just the WAL) is read through an `immutable=1` connection,
which opens the main file alone.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, text

from services.foundation.checkpoints import Checkpointer
from services.foundation.db import Database
from tests.support import database_with, eventually

metadata = MetaData()
note = Table("kit_test_note", metadata, Column("key", String(64), primary_key=True), Column("n", Integer))


def in_database_file(path: Path) -> set[str]:
    """Keys in the database file itself, ignoring the WAL."""
    connection = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return {key for (key,) in connection.execute("SELECT key FROM kit_test_note")}
    except sqlite3.OperationalError:  # the table itself is still in the WAL
        return set()
    finally:
        connection.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "test.db"


async def test_connections_of_a_database_never_checkpoint_on_commit(path: Path) -> None:
    with database_with(f"sqlite:///{path}", metadata) as db:
        writer = await db.run(lambda s: s.execute(text("PRAGMA wal_autocheckpoint")).scalar())
        reader = await db.read(lambda s: s.execute(text("PRAGMA wal_autocheckpoint")).scalar())
        assert (writer, reader) == (0, 0)


async def test_a_commit_reaches_the_database_file_soon_after(path: Path) -> None:
    # SQLite's own checkpoint would leave one small commit in the WAL until 1,000 pages piled up.
    with database_with(f"sqlite:///{path}", metadata) as db:
        await db.run(lambda s: s.execute(insert(note).values(key="soon", n=1)))

        async def copied() -> bool:
            return "soon" in in_database_file(path)

        await eventually(copied, timeout=5)


async def test_close_copies_back_what_is_left(path: Path) -> None:
    db = Database(f"sqlite:///{path}")
    metadata.create_all(db.engine)
    await db.run(lambda s: s.execute(insert(note).values(key="last", n=1)))
    db.close()  # at once: well inside the checkpointer's delay
    assert in_database_file(path) == {"last"}


def test_the_wal_stays_bounded_under_a_steady_writer(path: Path) -> None:
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE kit_test_note (key TEXT PRIMARY KEY, n BLOB)")
    checkpointer = Checkpointer(str(path), delay=0.01, limit=256 << 10)
    try:
        for i in range(1_500):  # 12 MB of rows, a commit every half millisecond or so
            writer.execute("INSERT INTO kit_test_note VALUES (?, ?)", (f"k{i}", b"x" * 8000))
            checkpointer.committed()
            threading.Event().wait(0.0005)
        wal = Path(f"{path}-wal").stat().st_size  # the file grows to the most the WAL ever held
    finally:
        checkpointer.close()
        writer.close()
    # Each checkpoint lets the next commit begin the WAL again; without them it holds every row.
    assert wal < 4 << 20, wal
    assert len(in_database_file(path)) == 1_500


def test_past_the_limit_the_writers_next_commit_restarts_the_wal(path: Path) -> None:
    """The checkpoint thread never waits for a writer, even with the WAL past the limit; the
    restart runs on the writer's thread, between its transactions: when `committed` returns, the
    WAL is copied back whole and the next transaction writes it from the start."""
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE kit_test_note (key TEXT PRIMARY KEY, n BLOB)")
    checkpointer = Checkpointer(str(path), delay=60, limit=256 << 10)  # its thread stays out of it
    observer = sqlite3.connect(path, isolation_level=None)
    try:
        for i in range(100):  # about 800 KB of WAL
            writer.execute("INSERT INTO kit_test_note VALUES (?, ?)", (f"k{i}", b"x" * 8000))
        writer.execute("BEGIN IMMEDIATE")  # a transaction under way
        writer.execute("INSERT INTO kit_test_note VALUES ('after', x'00')")
        passive = threading.Thread(target=checkpointer.checkpoint)
        passive.start()
        passive.join(timeout=5)
        waited = passive.is_alive()  # a RESTART here would wait out the transaction
        writer.execute("COMMIT")
        passive.join()
        checkpointer.committed()
        writer.execute("INSERT INTO kit_test_note VALUES ('next', x'00')")
        _busy, frames, _copied = observer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        observer.close()
        checkpointer.close()
        writer.close()
    assert not waited
    assert frames < 10, frames  # without the restart: the 100 rows' frames and more
