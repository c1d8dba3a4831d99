"""Writing a `Plan` (the one place the planner's decisions touch the database).

Called inside the reconciler's short per-endpoint transaction; makes no launcher call. Status
columns go through a conditional UPDATE that never bumps `revision` (the user's optimistic lock),
and the loaded endpoint row is kept in step without an ORM flush.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lorafleet.controlplane.endpoints import repository
from lorafleet.controlplane.endpoints.plan import Launch, Plan
from lorafleet.controlplane.models import Endpoint, Replica
from lorafleet.controlplane.usage import repository as usage
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value


def apply(
    session: Session,
    plan: Plan,
    endpoint: Endpoint,
    rows: Mapping[str, Replica],
    new_launch: Callable[[], Launch],
) -> tuple[list[Replica], list[Launch]]:
    """Writes `plan` for `endpoint` (whose replica rows are `rows`, by key).

    Returns the rows marked `stopping` (to stop once committed) and the launches, whose rows
    `new_launch` adds in state `starting` without a handle (committed before the launch, so
    `adopt()` can always match the replica).
    """
    for key, values in plan.replica_changes.items():
        for column, value in values.items():
            setattr(rows[key], column, value)
    stopping = []
    for key in plan.stops:
        row = rows[key]
        if row.handle:
            row.state = "stopping"
            stopping.append(row)
        else:
            session.delete(row)
    for kind, message in plan.events:
        repository.add_event(session, endpoint_id=endpoint.id, kind=kind, message=message)
    for adapter, (prompt, generated) in plan.usage.items():
        assert plan.moment is not None
        usage.add(session, endpoint_id=endpoint.id, adapter=adapter, source=usage.REPLICAS_SOURCE,
                  moment=plan.moment, delta=usage.UsageDelta(input_tokens=prompt, output_tokens=generated))
    write_status(session, endpoint, plan.status)
    return stopping, [new_launch() for _ in range(plan.launches)]


def write_status(session: Session, endpoint: Endpoint, values: Mapping[str, Any]) -> None:
    """Writes the status columns that differ from the row, unless the spec changed meanwhile."""
    changed = {k: v for k, v in values.items() if getattr(endpoint, k) != v}
    if changed:
        repository.write_status(session, endpoint_id=endpoint.id, revision=endpoint.revision, values=changed)
        for key, value in changed.items():  # keep the loaded row in step, without an ORM flush
            set_committed_value(endpoint, key, value)
