"""Engine, sessions and the migration gate.

One `Database` per process. Requests get one session each (committed or rolled back by the
`session` dependency in `app.py`); the reconciler opens its own per pass. SQLite runs in WAL
mode with a busy timeout so API threads and the reconciler can share the file; its file is only
the control plane's to read (0600, folder 0700 when created here), since replicas run tenants' code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lorafleet.migrations
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from lorafleet.controlplane.errors import NotMigratedError
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(busy_timeout_s: float):  # type: ignore[no-untyped-def]
    def apply(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return apply


def private_file(path: Path) -> None:
    """Creates `path` (and missing folders, 0700) readable by this user only; narrows an existing
    file of ours to 0600. SQLite gives its -wal and -shm files the database file's mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    if path.stat().st_uid == os.getuid():
        path.chmod(0o600)


def make_engine(url: str, busy_timeout_s: float = 10.0) -> Engine:
    """Creates an engine; for SQLite, creates the file (0600) and turns on WAL + foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            private_file(Path(parsed.database).expanduser())
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s})
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_s))
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(url: str) -> Config:
    """Alembic config built in code (no alembic.ini): scripts live in `lorafleet.migrations`."""
    config = Config()
    config.set_main_option("script_location", str(Path(lorafleet.migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrades the database at `url` to `revision` (creating the SQLite file if needed)."""
    make_engine(url).dispose()  # creates the SQLite folder
    command.upgrade(alembic_config(url), revision)


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_migrated(engine: Engine) -> None:
    """Raises `NotMigratedError` with the fix in the message unless the schema is at head."""
    url = engine.url.render_as_string(hide_password=False)
    current, head = current_revision(engine), head_revision(url)
    if current != head:
        shown = engine.url.render_as_string(hide_password=True)
        raise NotMigratedError(
            f"the database {shown} is at schema revision {current or 'none (empty)'}, "
            f"but this control plane needs {head}: run `lorafleet controlplane migrate` "
            "(or `python -m lorafleet.controlplane migrate`) first"
        )


class Database:
    """Owns the engine and the session factory of one process."""

    def __init__(self, url: str, busy_timeout_s: float = 10.0) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout_s)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.url.get_backend_name() == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any exception."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
