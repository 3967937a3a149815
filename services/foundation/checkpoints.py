"""SQLite's WAL checkpoints, moved off the writer onto a thread of their own.

By default SQLite checkpoints inside the commit that pushes the WAL past 1,000 pages: that commit
copies the pages back into the database file and syncs both files, and the single writer (and
every call queued behind it) waits. Measured on the 1M-user referral tree, that was a fifth of
Register's time. SQLite's advice for such a writer is what this does: turn the automatic
checkpoint off and run checkpoints on another thread.

Invariants (each has a test in tests/integration/test_foundation_checkpoints.py):
1. Connections configured by `Database` never checkpoint on commit (`wal_autocheckpoint=0`).
2. After a commit, its pages reach the database file within about `delay` seconds: a PASSIVE
   checkpoint, which waits for no one (writers and readers go on).
3. The WAL stays bounded under a steady writer: a checkpoint that copied everything lets the next
   transaction start the WAL from its beginning. A steady writer never leaves it so (it appends
   while each passive checkpoint copies), so once the WAL is past `limit` bytes the writer's own
   thread runs a RESTART checkpoint right after its next commit, between its transactions.
   Run from the checkpoint thread, a RESTART waited for a gap between transactions and then held
   the next one off, and the writer waited in SQLite's busy handler, whose sleeps back off to
   tens of milliseconds: up to 180 ms per restart, 8-13% of a busy writer's time.
4. `close` copies back what is left and stops the thread.
With `synchronous=NORMAL` a commit is on disk once a checkpoint has synced the WAL, so (2) also
bounds what a power cut can take: `delay`, where before it was "until 1,000 pages".
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("alliance.db")

DELAY = 0.2  # seconds from a commit to its checkpoint; commits within it share one
LIMIT = 64 << 20  # bytes of WAL that make the checkpointer wait for the writer


class Checkpointer:
    def __init__(self, path: str, *, delay: float = DELAY, limit: int = LIMIT) -> None:
        self.delay, self.limit = delay, limit
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA busy_timeout=10000")
        self._page_size = int(self._connection.execute("PRAGMA page_size").fetchone()[0])
        self._committed = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one checkpoint at a time on the connection
        self._restart_due = False  # the WAL is past `limit`: the writer restarts it after a commit
        self._thread = threading.Thread(target=self._run, name="db-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """A writer committed: its pages are due in the database file. Called on the writer's
        thread between its transactions, where a RESTART checkpoint waits for no writer (nor for
        a passive checkpoint under way: then it is the next commit's turn)."""
        if self._restart_due and self._lock.acquire(blocking=False):
            try:
                self._restart_due = False
                self._connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                self._lock.release()
        self._committed.set()

    def checkpoint(self) -> tuple[int, int]:
        """Copy the WAL back now, waiting for no one: (frames in the WAL, frames copied)."""
        with self._lock:
            _busy, frames, copied = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames * self._page_size > self.limit:
                self._restart_due = True
        return int(frames), int(copied)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._committed.wait()
            # Let the commits of the next moment join this checkpoint (each one syncs twice).
            self._stop.wait(self.delay)
            self._committed.clear()
            try:
                self.checkpoint()
            except sqlite3.Error:
                log.exception("a WAL checkpoint failed; the next commit tries again")

    def close(self) -> None:
        self._stop.set()
        self._committed.set()
        self._thread.join()
        try:
            self.checkpoint()  # commits the thread's last checkpoint began before
        except sqlite3.Error:
            log.exception("the last WAL checkpoint failed; SQLite replays the WAL on the next open")
        self._connection.close()
