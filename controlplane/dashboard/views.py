"""What the templates show, built from the same JSON the REST API returns.

Pages read the rendered HF v2 `Endpoint` dict (never ORM rows), so the dashboard shows exactly
what `huggingface_hub` users see, and changes to the database schema do not reach templates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

STATE_CLASSES = {
    "running": "ok",
    "ready": "ok",
    "pending": "busy",
    "initializing": "busy",
    "updating": "busy",
    "starting": "busy",
    "stopping": "busy",
    "paused": "idle",
    "scaledToZero": "idle",
    "exited": "idle",
    "failed": "bad",
    "updateFailed": "bad",
}
EVENT_CLASSES = {"created": "busy", "ready": "ok", "running": "ok", "failed": "bad", "paused": "idle",
                 "replica-started": "busy", "replica-ready": "ok", "replica-failed": "bad",
                 "scaled-to-zero": "idle", "resumed": "busy", "updated": "busy", "woken": "busy"}


def state_class(state: str) -> str:
    """CSS colour family of a state: ok (green), busy (amber), idle (grey), bad (red)."""
    return STATE_CLASSES.get(state, "idle")


@dataclass(frozen=True)
class AdapterView:
    """An adapter: from the live set (`GET .../adapters`, with readiness and usage) or, for the
    seed's `LORA_ADAPTERS`, just its id and source."""

    id: str
    source: str
    revision: str | None = None
    digest: str | None = None
    ready_replicas: int = 0
    target_replicas: int = 0
    state: str = ""
    message: str = ""
    requests: int | None = None  # through the gateway, since the endpoint's creation
    output_tokens: int | None = None

    @property
    def state_class(self) -> str:
        return state_class(self.state)


def live_adapters(
    items: Iterable[Mapping[str, Any]], usage: Mapping[str, Any] | None = None
) -> list[AdapterView]:
    """The live set's items (the API's JSON) with each adapter's usage figures when it has any."""
    used = {u.get("adapter"): u for u in (usage or {}).get("adapters", [])}
    views = []
    for item in items:
        figures = used.get(item["name"]) or {}
        views.append(AdapterView(
            id=item["name"], source=item["source"], revision=item.get("revision"), digest=item.get("digest"),
            ready_replicas=int(item.get("readyReplicas") or 0),
            target_replicas=int(item.get("targetReplicas") or 0),
            state=item.get("state") or "", message=item.get("message") or "",
            requests=figures.get("requests"), output_tokens=figures.get("outputTokens")))
    return views


def parse_lora_adapters(value: str | None) -> list[AdapterView]:
    """`LORA_ADAPTERS` as the runtime reads it: comma list, `id=path` maps an id to a path."""
    adapters = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, path = item.partition("=")
        adapters.append(AdapterView(id=name.strip(), source=path.strip()) if sep
                        else AdapterView(id=item, source=item))
    return adapters


def _short_time(wire: str) -> str:
    try:
        moment = datetime.strptime(wire, "%Y-%m-%dT%H:%M:%S.%fZ")
    except (TypeError, ValueError):
        return str(wire)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class EndpointView:
    """One endpoint as a row of the list and the head of its page."""

    name: str
    repository: str
    adapters: list[AdapterView]
    instance: str
    accelerator: str
    min_replica: int
    max_replica: int
    ready_replicas: int
    target_replicas: int
    state: str
    message: str
    url: str | None
    type: str
    created_at: str
    env: list[tuple[str, str]]
    secret_names: list[str]

    @property
    def state_class(self) -> str:
        return state_class(self.state)

    @property
    def created_at_text(self) -> str:
        return _short_time(self.created_at)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any], adapters: list[AdapterView] | None = None) -> EndpointView:
        """`adapters`: the live set (else the spec's `LORA_ADAPTERS`, what the endpoint was created with)."""
        model, compute, provider, status = raw["model"], raw["compute"], raw["provider"], raw["status"]
        env = dict(model.get("env") or {})
        scaling = compute.get("scaling") or {}
        return cls(
            name=raw["name"],
            repository=model["repository"],
            adapters=adapters if adapters is not None else parse_lora_adapters(env.get("LORA_ADAPTERS")),
            instance=(f"{provider['vendor']} · {provider['region']} · "
                      f"{compute['instanceType']} {compute['instanceSize']}"),
            accelerator=compute.get("accelerator", ""),
            min_replica=int(scaling.get("minReplica") or 0),
            max_replica=int(scaling.get("maxReplica") or 0),
            ready_replicas=int(status.get("readyReplica") or 0),
            target_replicas=int(status.get("targetReplica") or 0),
            state=status["state"],
            message=status.get("message") or "",
            url=status.get("url"),
            type=raw.get("type") or "",
            created_at=status.get("createdAt") or "",
            env=sorted((k, str(v)) for k, v in env.items() if k != "LORA_ADAPTERS"),
            secret_names=sorted(model.get("secrets") or {}),
        )


@dataclass(frozen=True)
class EventView:
    at: str
    kind: str
    message: str

    @property
    def at_text(self) -> str:
        return _short_time(self.at)

    @property
    def state_class(self) -> str:
        return EVENT_CLASSES.get(self.kind, state_class(self.kind))


def event_views(events: Iterable[Mapping[str, Any]]) -> list[EventView]:
    """The event log, newest first (the timeline reads top-down from now)."""
    views = [EventView(at=e.get("createdAt", ""), kind=e.get("kind", ""), message=e.get("message", ""))
             for e in events]
    return list(reversed(views))


class ReplicaLogsLike(Protocol):
    replica: str
    state: str
    lines: list[str]


@dataclass(frozen=True)
class ReplicaView:
    key: str
    state: str
    url: str | None = None
    message: str = ""

    @property
    def state_class(self) -> str:
        return state_class(self.state)


def replica_views(logs: Sequence[ReplicaLogsLike]) -> list[ReplicaView]:
    return [ReplicaView(key=item.replica, state=item.state) for item in logs]


# Access lines of successful probes (the reconciler's health and /metrics checks, the gateways'
# adapter reports): a replica answers several a second, and they drown its own log.
PROBE_ACCESS_LINE = re.compile(
    r'"(?:GET|HEAD) /(?:health|ping|metrics|v1/models)?(?:\?\S*)? HTTP/[\d.]+" 200\b')


def is_probe_line(line: str) -> bool:
    return "uvicorn.access" in line and PROBE_ACCESS_LINE.search(line) is not None


def logs_text(logs: Sequence[ReplicaLogsLike], *, tail: int) -> str:
    """The last `tail` lines of each replica (without successful probes' access lines), under a
    `== replica (state) ==` header."""
    blocks = []
    for item in logs:
        lines = [line for line in item.lines if not is_probe_line(line)][-tail:]
        blocks.append("\n".join([f"== {item.replica} ({item.state}) ==", *lines]))
    return "\n\n".join(blocks)


@dataclass(frozen=True)
class RegionChoice:
    vendor: str
    name: str
    label: str


@dataclass(frozen=True)
class InstanceChoice:
    vendor: str
    region: str
    instance_type: str
    label: str


@dataclass(frozen=True)
class HardwareChoices:
    """The catalog as the create form's selects need it (vendor → region → instance type)."""

    vendors: list[str]
    regions: list[RegionChoice]
    instance_types: list[InstanceChoice]
    sizes: list[str]
    accelerators: dict[tuple[str, str, str, str], str]

    @classmethod
    def from_provider(cls, provider: Mapping[str, Any]) -> HardwareChoices:
        """Builds the choices from the `GET /v2/provider` JSON."""
        vendors, regions, types, sizes, accelerators = [], [], [], [], {}
        for vendor in provider.get("vendors", []):
            vendors.append(vendor["name"])
            for region in vendor.get("regions", []):
                label = region.get("label") or region["name"]
                regions.append(RegionChoice(vendor["name"], region["name"], label))
                seen: dict[str, dict[str, Any]] = {}
                for compute in region.get("computes", []):
                    key = (vendor["name"], region["name"], compute["instanceType"], compute["instanceSize"])
                    accelerators[key] = compute.get("accelerator", "")
                    seen.setdefault(compute["instanceType"], compute)
                    if compute["instanceSize"] not in sizes:
                        sizes.append(compute["instanceSize"])
                for name, compute in seen.items():
                    label = f"{name} ({compute.get('architecture') or compute.get('accelerator', '')})"
                    types.append(InstanceChoice(vendor["name"], region["name"], name, label))
        return cls(vendors, regions, types, sizes, accelerators)

    def has_region(self, vendor: str, region: str) -> bool:
        return any(r.vendor == vendor and r.name == region for r in self.regions)

    def has_instance_type(self, vendor: str, region: str, instance_type: str) -> bool:
        return any(c.vendor == vendor and c.region == region and c.instance_type == instance_type
                   for c in self.instance_types)

    def accelerator_for(self, vendor: str, region: str, instance_type: str, instance_size: str) -> str:
        """The accelerator of the chosen compute. For a compute missing from the catalog any value
        will do: the endpoint service rejects it (naming what exists) before it looks at this."""
        exact = self.accelerators.get((vendor, region, instance_type, instance_size))
        if exact:
            return exact
        same_type = [a for (v, r, t, _), a in self.accelerators.items() if t == instance_type and a]
        return same_type[0] if same_type else "cpu"
