"""Which control-plane process runs the reconciler: the one holding the lease.

Several API processes may share one database; only one may reconcile, or two would start
replicas for the same endpoint. PostgreSQL: a session-level advisory lock held on a dedicated
connection (released by the server if the process dies). SQLite: an exclusive `flock` on a file
next to the database (released by the kernel if the process dies).
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

    @property
    def held(self) -> bool:
        return self._fd is not None or self._connection is not None

    def try_acquire(self) -> bool:
        """Takes the lease if free; True if this process holds it (now or already)."""
        if self.held:
            return True
        if self._engine.url.get_backend_name() == "postgresql":
            connection = self._engine.connect()
            if connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar():
                connection.commit()
                self._connection = connection
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
        return True

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
