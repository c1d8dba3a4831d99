"""All SQL about endpoints' adapter sets (`EndpointAdapter` rows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from lorafleet.controlplane.models import EndpointAdapter
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session


def adapters_of(session: Session, endpoint_id: int) -> Sequence[EndpointAdapter]:
    return session.scalars(
        select(EndpointAdapter)
        .where(EndpointAdapter.endpoint_id == endpoint_id)
        .order_by(EndpointAdapter.name)
    ).all()


def get_adapter(session: Session, endpoint_id: int, name: str) -> EndpointAdapter | None:
    return session.scalar(
        select(EndpointAdapter).where(
            EndpointAdapter.endpoint_id == endpoint_id, EndpointAdapter.name == name
        )
    )


def adapters_by_endpoint(session: Session) -> dict[int, list[EndpointAdapter]]:
    """Every endpoint's set, by endpoint id (the reconciler's and the gateway's snapshot)."""
    found: dict[int, list[EndpointAdapter]] = {}
    for row in session.scalars(select(EndpointAdapter).order_by(EndpointAdapter.name)):
        found.setdefault(row.endpoint_id, []).append(row)
    return found


def write_adapter_status(session: Session, *, adapter_id: int, version: int, values: dict[str, Any]) -> bool:
    """Writes sync-owned status columns unless the adapter changed (a PUT bumps `version`) since
    the sync read it; does not bump `version`. Returns whether the row was written."""
    result = session.execute(
        update(EndpointAdapter)
        .where(EndpointAdapter.id == adapter_id, EndpointAdapter.version == version)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(cast(CursorResult[Any], result).rowcount)
