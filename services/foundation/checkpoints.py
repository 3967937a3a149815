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
   transaction start the WAL from its beginning; should writers never leave it so, past `limit`
   bytes a RESTART checkpoint waits for a gap between their transactions.
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
        self._thread = threading.Thread(target=self._run, name="db-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """A writer committed: its pages are due in the database file."""
        self._committed.set()

    def checkpoint(self) -> tuple[int, int]:
        """Copy the WAL back now: (frames in the WAL, frames copied)."""
        with self._lock:
            _busy, frames, copied = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames * self._page_size > self.limit:
                # Writers kept appending while the passive checkpoints ran, so the WAL never
                # emptied; wait for a gap between transactions and let the next one start it over.
                _busy, frames, copied = self._connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
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
