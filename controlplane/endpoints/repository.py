"""All SQL about endpoints, their replicas and events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from lorafleet.controlplane.models import (
    Endpoint,
    EndpointAdapter,
    EndpointEvent,
    EndpointUsage,
    EndpointUsageMinute,
    GatewayLoad,
    Namespace,
    Replica,
)
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session


def get_endpoint(session: Session, *, namespace_id: int, name: str) -> Endpoint | None:
    return session.scalar(
        select(Endpoint).where(Endpoint.namespace_id == namespace_id, Endpoint.name == name)
    )


def list_endpoints(session: Session, *, namespace_id: int) -> Sequence[Endpoint]:
    return session.scalars(
        select(Endpoint).where(Endpoint.namespace_id == namespace_id).order_by(Endpoint.name)
    ).all()


def add_endpoint(session: Session, endpoint: Endpoint) -> Endpoint:
    session.add(endpoint)
    session.flush()
    return endpoint


def delete_endpoint(session: Session, endpoint: Endpoint) -> None:
    """Deletes the row; its replicas become orphans (endpoint_id NULL) for the reconciler to stop."""
    session.execute(update(Replica).where(Replica.endpoint_id == endpoint.id).values(endpoint_id=None))
    session.execute(delete(EndpointEvent).where(EndpointEvent.endpoint_id == endpoint.id))
    for model in (EndpointUsage, EndpointUsageMinute, GatewayLoad, EndpointAdapter):
        session.execute(delete(model).where(model.endpoint_id == endpoint.id))  # type: ignore[attr-defined]
    session.delete(endpoint)
    session.flush()


def add_event(session: Session, *, endpoint_id: int, kind: str, message: str) -> None:
    session.add(EndpointEvent(endpoint_id=endpoint_id, kind=kind, message=message[:4000]))


def list_events(session: Session, *, endpoint_id: int, limit: int) -> Sequence[EndpointEvent]:
    rows = session.scalars(
        select(EndpointEvent)
        .where(EndpointEvent.endpoint_id == endpoint_id)
        .order_by(EndpointEvent.id.desc())
        .limit(limit)
    ).all()
    return list(reversed(rows))


def replicas_of(session: Session, *, endpoint_id: int) -> Sequence[Replica]:
    return session.scalars(
        select(Replica).where(Replica.endpoint_id == endpoint_id).order_by(Replica.id)
    ).all()


# --- reconciler queries ---------------------------------------------------------------------


def all_endpoints_with_namespace(session: Session) -> list[tuple[Endpoint, str]]:
    rows = session.execute(
        select(Endpoint, Namespace.name)
        .join(Namespace, Namespace.id == Endpoint.namespace_id)
        .order_by(Endpoint.id)
    ).all()
    return [(row[0], row[1]) for row in rows]


def all_replicas(session: Session) -> Sequence[Replica]:
    return session.scalars(select(Replica).order_by(Replica.id)).all()


def delete_replicas(session: Session, replica_keys: list[str]) -> None:
    """Deletes replica rows by key (their loaded objects leave the session too)."""
    session.execute(delete(Replica).where(Replica.replica_key.in_(replica_keys)))


def write_status(session: Session, *, endpoint_id: int, revision: int, values: dict[str, Any]) -> bool:
    """Writes reconciler-owned status columns unless the spec changed since it was read.

    Does not bump `revision` (that is the user's optimistic lock), and does not overwrite a
    state the API set meanwhile (pause, resume...): then the row's revision differs and the
    next pass sees the new spec. Returns whether the row was written.
    """
    result = session.execute(
        update(Endpoint)
        .where(Endpoint.id == endpoint_id, Endpoint.revision == revision)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(cast(CursorResult[Any], result).rowcount)


def wake_from_zero(session: Session, *, endpoint_id: int, moment: datetime) -> bool:
    """A request reached a scaled-to-zero endpoint: it is to run again (the reconciler starts its
    replicas). A no-op unless the endpoint is `scaledToZero` (a paused endpoint stays paused).
    Bumps `revision`, as a resume does. Returns whether it woke the endpoint."""
    result = session.execute(
        update(Endpoint)
        .where(Endpoint.id == endpoint_id, Endpoint.desired_state == "scaledToZero")
        .values(desired_state="running", state="pending", failure_count=0, last_active_at=moment,
                updated_at=moment, message="Endpoint waking up: a request arrived",
                revision=Endpoint.revision + 1)
        .execution_options(synchronize_session=False)
    )
    woke = bool(cast(CursorResult[Any], result).rowcount)
    if woke:
        add_event(session, endpoint_id=endpoint_id, kind="woken", message="a request woke it up")
    return woke
