"""All SQL about usage and gateway load.

Every usage row has one writer: a gateway process writes the rows of its own `source` (its id),
the reconciler those of `replicas` (tokens). So a read-modify-write of a row never races, and
several gateways on one database never contend for a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from lorafleet.controlplane.models import Endpoint, EndpointUsage, EndpointUsageMinute, GatewayLoad
from lorafleet.controlplane.usage import histogram
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

COUNTERS = ("requests", "errors", "input_tokens", "output_tokens")
REPLICAS_SOURCE = "replicas"  # tokens, from the replicas' own counters (collected by the reconciler)


@dataclass
class UsageDelta:
    """Counts to add to one (endpoint, adapter) row; histograms as bucket counts or None."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ttft: list[int] | None = None
    latency: list[int] | None = None

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


@dataclass
class AdapterTotals:
    """One adapter's usage summed over every source."""

    adapter: str
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ttft: list[int] = field(default_factory=histogram.empty)
    latency: list[int] = field(default_factory=histogram.empty)


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def existing_endpoints(session: Session, endpoint_ids: Iterable[int]) -> set[int]:
    ids = list(set(endpoint_ids))
    return set(session.scalars(select(Endpoint.id).where(Endpoint.id.in_(ids)))) if ids else set()


def add(session: Session, *, endpoint_id: int, adapter: str, source: str, moment: datetime,
        delta: UsageDelta) -> None:
    """Adds `delta` to the source's cumulative row and to its row of `moment`'s minute."""
    total = session.scalar(select(EndpointUsage).where(
        EndpointUsage.endpoint_id == endpoint_id, EndpointUsage.adapter == adapter,
        EndpointUsage.source == source))
    if total is None:
        total = EndpointUsage(endpoint_id=endpoint_id, adapter=adapter, source=source,
                              **dict.fromkeys(COUNTERS, 0))
        session.add(total)
    _add_counters(total, delta)
    if delta.ttft is not None:
        total.ttft_buckets = histogram.merge(list(total.ttft_buckets or histogram.empty()), delta.ttft)
    if delta.latency is not None:
        latency = list(total.latency_buckets or histogram.empty())
        total.latency_buckets = histogram.merge(latency, delta.latency)
    total.updated_at = moment
    minute = minute_of(moment)
    row = session.scalar(select(EndpointUsageMinute).where(
        EndpointUsageMinute.endpoint_id == endpoint_id, EndpointUsageMinute.adapter == adapter,
        EndpointUsageMinute.source == source, EndpointUsageMinute.minute == minute))
    if row is None:
        row = EndpointUsageMinute(endpoint_id=endpoint_id, adapter=adapter, source=source, minute=minute,
                                  **dict.fromkeys(COUNTERS, 0))
        session.add(row)
    _add_counters(row, delta)


def _add_counters(row: Any, delta: UsageDelta) -> None:
    for name, value in delta.counters().items():
        setattr(row, name, (getattr(row, name) or 0) + value)


def totals(session: Session, endpoint_ids: Iterable[int]) -> dict[int, dict[str, AdapterTotals]]:
    """endpoint id → adapter → usage summed over sources ('' is the base model)."""
    ids = list(endpoint_ids)
    out: dict[int, dict[str, AdapterTotals]] = {}
    if not ids:
        return out
    for row in session.scalars(select(EndpointUsage).where(EndpointUsage.endpoint_id.in_(ids))):
        entry = out.setdefault(row.endpoint_id, {}).setdefault(row.adapter, AdapterTotals(row.adapter))
        for name in COUNTERS:
            setattr(entry, name, getattr(entry, name) + getattr(row, name))
        histogram.merge(entry.ttft, row.ttft_buckets)
        histogram.merge(entry.latency, row.latency_buckets)
    return out


def per_minute(
    session: Session, endpoint_id: int, since: datetime
) -> list[tuple[str, datetime, dict[str, int]]]:
    """(adapter, minute, counters summed over sources) of one endpoint since `since`, oldest first."""
    rows = session.execute(
        select(EndpointUsageMinute.adapter, EndpointUsageMinute.minute,
               *(func.sum(getattr(EndpointUsageMinute, name)) for name in COUNTERS))
        .where(EndpointUsageMinute.endpoint_id == endpoint_id, EndpointUsageMinute.minute >= since)
        .group_by(EndpointUsageMinute.adapter, EndpointUsageMinute.minute)
        .order_by(EndpointUsageMinute.minute)
    ).all()
    return [(r[0], r[1], {name: int(r[2 + i] or 0) for i, name in enumerate(COUNTERS)}) for r in rows]


def recent_tokens(session: Session, since: datetime) -> list[tuple[int, str, datetime, int]]:
    """(endpoint id, adapter, minute, input + output tokens) of every minute since `since`."""
    rows = session.execute(
        select(EndpointUsageMinute.endpoint_id, EndpointUsageMinute.adapter, EndpointUsageMinute.minute,
               func.sum(EndpointUsageMinute.input_tokens + EndpointUsageMinute.output_tokens))
        .where(EndpointUsageMinute.minute >= since)
        .group_by(EndpointUsageMinute.endpoint_id, EndpointUsageMinute.adapter, EndpointUsageMinute.minute)
    ).all()
    return [(r[0], r[1], r[2], int(r[3] or 0)) for r in rows]


def prune(session: Session, *, minutes_before: datetime, loads_before: datetime) -> None:
    """Drops per-minute rows and gateway load rows older than the given times."""
    session.execute(delete(EndpointUsageMinute).where(EndpointUsageMinute.minute < minutes_before))
    session.execute(delete(GatewayLoad).where(GatewayLoad.updated_at < loads_before))


# --- gateway load ------------------------------------------------------------------------------


def write_load(session: Session, *, gateway_id: str, loads: Mapping[int, tuple[int, int]],
               moment: datetime) -> None:
    """Replaces this gateway's rows: endpoint id → (pending, in flight); endpoints at zero lose theirs."""
    mine = session.scalars(select(GatewayLoad).where(GatewayLoad.gateway_id == gateway_id))
    rows = {r.endpoint_id: r for r in mine}
    for endpoint_id, (pending, in_flight) in loads.items():
        row = rows.pop(endpoint_id, None)
        if row is None:
            session.add(GatewayLoad(gateway_id=gateway_id, endpoint_id=endpoint_id, pending=pending,
                                    in_flight=in_flight, updated_at=moment))
        else:
            row.pending, row.in_flight, row.updated_at = pending, in_flight, moment
    for row in rows.values():
        session.delete(row)


def load_since(flush_s: float, now: datetime) -> datetime:
    """Load rows older than three flush intervals are from gateways that stopped reporting."""
    return now - timedelta(seconds=3 * flush_s)


def fresh_loads(session: Session, since: datetime) -> dict[int, int]:
    """endpoint id → pending + in-flight requests over the gateways that reported since `since`."""
    rows = session.execute(
        select(GatewayLoad.endpoint_id, func.sum(GatewayLoad.pending + GatewayLoad.in_flight))
        .where(GatewayLoad.updated_at >= since).group_by(GatewayLoad.endpoint_id)
    ).all()
    return {r[0]: int(r[1] or 0) for r in rows}


def touch_active(session: Session, endpoint_ids: Iterable[int], moment: datetime) -> None:
    """Gateway traffic resets the idle timer (a plain UPDATE: `revision` is the user's lock)."""
    ids = list(endpoint_ids)
    if ids:
        session.execute(update(Endpoint).where(Endpoint.id.in_(ids)).values(last_active_at=moment)
                        .execution_options(synchronize_session=False))


def window_start(now: datetime, minutes: int) -> datetime:
    return minute_of(now) - timedelta(minutes=minutes)
