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


def test_upgrade_to_live_adapters_seeds_existing_endpoints_sets(tmp_path: Path) -> None:
    """0004: endpoints created before live adapters get their spec's LORA_ADAPTERS as their set,
    so their next replicas start with the same adapters."""
    from alembic import command
    from lorafleet.controlplane.db import alembic_config
    from lorafleet.controlplane.models import Endpoint, EndpointAdapter, Namespace
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0003")
    engine = create_engine(url)
    spec = {"model": {"repository": "org/base", "env": {"LORA_ADAPTERS": "a=org/a@v1,org/b"}}}
    with Session(engine) as session:
        namespace = Namespace(name="alice")
        session.add(namespace)
        session.flush()
        session.add(Endpoint(namespace_id=namespace.id, name="old", spec=spec))
        session.add(Endpoint(namespace_id=namespace.id, name="bare", spec={"model": {"repository": "x"}}))
        session.commit()
    command.upgrade(alembic_config(url), "head")
    with Session(engine) as session:
        rows = session.scalars(select(EndpointAdapter).order_by(EndpointAdapter.name)).all()
        assert [(r.name, r.source, r.revision, r.state) for r in rows] == [
            ("a", "org/a", "v1", "pending"),
            ("org/b", "org/b", None, "pending"),
        ]
    engine.dispose()
