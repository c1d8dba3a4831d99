"""SQLAlchemy 2.0 models. The schema only changes through Alembic revisions in `migrations/`.

Ownership: the endpoint service writes an endpoint's *spec* (`spec`, `desired_state`,
`secrets_encrypted`) under optimistic locking on `revision`; the reconciler writes its *status*
columns (`state`, `message`, `url`, replica counts) with a conditional UPDATE that does not bump
`revision`, so the two never clobber each other. Replicas belong to the reconciler.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lorafleet.controlplane.clock import utcnow
from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Namespace(Base):
    __tablename__ = "namespaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, plus a short prefix to recognise it by."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    namespace: Mapped[Namespace] = relationship(lazy="raise")


class Endpoint(Base):
    """An endpoint. Its id is never reused (SQLite AUTOINCREMENT; PostgreSQL sequences never go
    back), so state kept by id (the reconciler's backoff clocks) cannot pass to a later endpoint."""

    __tablename__ = "endpoints"
    __table_args__ = (
        UniqueConstraint("namespace_id", "name", name="uq_endpoints_namespace_name"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    secrets_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    desired_state: Mapped[str] = mapped_column(String(16), default="running")
    revision: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    message: Mapped[str] = mapped_column(Text, default="")
    url: Mapped[str | None] = mapped_column(String(512), nullable=True)
    ready_replicas: Mapped[int] = mapped_column(Integer, default=0)
    target_replicas: Mapped[int] = mapped_column(Integer, default=0)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    updated_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_active_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    namespace: Mapped[Namespace] = relationship(lazy="raise")

    __mapper_args__ = {"version_id_col": revision}


class Replica(Base):
    """One launched replica. `endpoint_id` is NULL once its endpoint is deleted: an orphan the
    reconciler stops and removes. `api_key_encrypted` is the replica's own API key, sealed with
    the secret key: the control plane's probes and proxies use it; no API answer shows it."""

    __tablename__ = "replicas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica_key: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("endpoints.id", ondelete="SET NULL"), index=True, nullable=True
    )
    launcher: Mapped[str] = mapped_column(String(32))
    spec_digest: Mapped[str] = mapped_column(String(32))
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="starting")
    url: Mapped[str | None] = mapped_column(String(512), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    queue_size: Mapped[float] = mapped_column(default=0.0)
    api_key_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set when the planner takes the replica out of routing; it is stopped once drained.
    drain_started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The replica's per-adapter token counters at the last probe (usage is metered by difference).
    usage_seen: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Adapter name → the `EndpointAdapter.version` this replica serves (set at launch for the set
    # rendered into its LORA_ADAPTERS, then by the adapter sync after each load or unload).
    adapter_versions: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    endpoint: Mapped[Endpoint | None] = relationship(lazy="raise")


class EndpointAdapter(Base):
    """One adapter of an endpoint's live set (`/v2/endpoint/{ns}/{name}/adapters`).

    The endpoint service writes the spec columns (`source`, `revision`, `digest` of a local folder,
    `version`, bumped whenever what the name serves changes); the reconciler's adapter sync writes
    the status columns (`state`, `message`, `ready_replicas`, `target_replicas`, and `digest` of a
    Hub source, as the replicas report it) with a conditional UPDATE on `version`, so a status
    computed for an older version never lands on a newer one.
    """

    __tablename__ = "endpoint_adapters"
    __table_args__ = (UniqueConstraint("endpoint_id", "name", name="uq_endpoint_adapters_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(1024))  # a seed's bare folder path is its own name
    source: Mapped[str] = mapped_column(String(1024))
    revision: Mapped[str | None] = mapped_column(String(256), nullable=True)
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    message: Mapped[str] = mapped_column(Text, default="")
    ready_replicas: Mapped[int] = mapped_column(Integer, default=0)
    target_replicas: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __mapper_args__ = {"version_id_col": version}


class EndpointEvent(Base):
    """Append-only log of what happened to an endpoint (created, replica started, crashed...)."""

    __tablename__ = "endpoint_events"
    __table_args__ = (Index("ix_endpoint_events_endpoint_id_id", "endpoint_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")


class EndpointUsage(Base):
    """Cumulative usage of one adapter of an endpoint, as counted by one `source`: a gateway
    process (requests, errors, latency histograms) or `replicas` (tokens, from the replicas' own
    counters, collected by the reconciler). One writer per row, so no write ever contends; the
    usage API sums the sources. `adapter` is '' for the base model."""

    __tablename__ = "endpoint_usage"
    __table_args__ = (UniqueConstraint("endpoint_id", "adapter", "source", name="uq_endpoint_usage_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    adapter: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(64))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    ttft_buckets: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    latency_buckets: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class EndpointUsageMinute(Base):
    """The same counters per minute (charts, tokens-per-minute limits); pruned after a day."""

    __tablename__ = "endpoint_usage_minutes"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "adapter", "source", "minute", name="uq_endpoint_usage_minute"),
        Index("ix_endpoint_usage_minutes_endpoint_minute", "endpoint_id", "minute"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    adapter: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(64))
    minute: Mapped[datetime] = mapped_column(DateTime)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class GatewayLoad(Base):
    """What one gateway process sees of one endpoint: requests waiting for a replica (`pending`)
    and being served (`in_flight`). The autoscaler sums the fresh rows of all gateways."""

    __tablename__ = "gateway_load"

    gateway_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True)
    pending: Mapped[int] = mapped_column(Integer, default=0)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
