"""Which control-plane process runs the reconciler: the one holding the lease.

Several API processes may share one database; only one may reconcile, or two would start
replicas for the same endpoint. PostgreSQL: a session-level advisory lock held on a dedicated
connection (released by the server if the process dies; a holder whose connection broke notices at
its next `try_acquire` and competes again). SQLite: an exclusive `flock` on a file next to the
database (released by the kernel if the process dies).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import Connection, Engine, text

LOCK_KEY = 0x6C6F7261  # "lora"


class ReconcilerLease:
    def __init__(self, engine: Engine, lock_file: Path) -> None:
        self._engine = engine
        self._lock_file = lock_file
        self._fd: int | None = None
        self._connection: Connection | None = None
        self.generation = 0  # bumped at each acquisition: the holder re-adopts after a loss

    @property
    def held(self) -> bool:
        return self._fd is not None or self._connection is not None

    def try_acquire(self) -> bool:
        """Takes the lease if free; True if this process holds it (now or already)."""
        if self._connection is not None and not self._still_held(self._connection):
            self._connection = None  # the server dropped the lock with the connection
        if self.held:
            return True
        if self._engine.url.get_backend_name() == "postgresql":
            connection = self._engine.connect()
            if connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar():
                connection.commit()
                self._connection = connection
                self.generation += 1
                return True
            connection.close()
            return False
        self._lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        self.generation += 1
        return True

    @staticmethod
    def _still_held(connection: Connection) -> bool:
        """Whether the advisory lock is still ours (False when its connection broke)."""
        try:
            held = connection.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = pg_backend_pid() AND objid = :k"
                ),
                {"k": LOCK_KEY},
            ).scalar()
            connection.commit()
            return bool(held)
        except Exception:
            try:
                connection.close()
            except Exception:
                pass
            return False

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                self._connection.commit()
            finally:
                self._connection.close()
                self._connection = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
