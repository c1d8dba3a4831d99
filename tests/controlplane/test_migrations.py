"""Alembic revisions are the schema: they must match the models exactly, and the app must
refuse a database that is not at head."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from lorafleet.controlplane.app import create_app
from lorafleet.controlplane.db import migrate
from lorafleet.controlplane.errors import NotMigratedError
from lorafleet.controlplane.models import Base
from lorafleet.controlplane.settings import Settings
from sqlalchemy import create_engine


def test_migrations_at_head_match_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    engine.dispose()
    assert diff == [], f"models and migrations disagree; add a revision: {diff}"


def test_app_refuses_an_unmigrated_database_and_says_how_to_fix_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(NotMigratedError, match="lorafleet controlplane migrate"):
        create_app(settings)


def test_downgrade_to_base_and_upgrade_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    migrate(url)
    from alembic import command
    from lorafleet.controlplane.db import alembic_config

    command.downgrade(alembic_config(url), "base")
    migrate(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()
