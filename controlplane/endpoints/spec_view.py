"""A typed, read-only view of a stored endpoint spec (`endpoints.spec`, camelCase JSON).

`spec.py` builds and merges the JSON a client sends; everything that only *reads* a stored spec
(the planner, quotas, the reconciler's probes, the gateway) reads it through `EndpointSpec`, so the
defaults (`minReplica` 1, `scaleToZeroTimeout` 15 min, `pendingRequests` 4, health route
`/health`, type `protected`) live here once, and a missing key fails in one place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorafleet.controlplane.endpoints.local_paths import lora_adapter_entries

DEFAULT_HEALTH_ROUTE = "/health"
DEFAULT_SCALE_TO_ZERO_MINUTES = 15
DEFAULT_PENDING_REQUESTS = 4.0
PUBLIC_TYPES = frozenset({"public"})


@dataclass(frozen=True)
class Scaling:
    min_replica: int
    max_replica: int
    scale_to_zero_minutes: int
    pending_requests: float  # load per replica above which one more replica is wanted

    @property
    def can_scale_to_zero(self) -> bool:
        return self.min_replica == 0


@dataclass(frozen=True)
class Compute:
    accelerator: str
    instance_type: str
    instance_size: str
    scaling: Scaling


@dataclass(frozen=True)
class Provider:
    vendor: str
    region: str


@dataclass(frozen=True)
class EndpointSpec:
    """The stored spec, typed. `raw` is the JSON itself (for the env/path rules in `spec.py`).

    Example:
        >>> spec = EndpointSpec.from_stored(endpoint.spec)
        >>> spec.compute.scaling.max_replica, spec.is_public
    """

    type: str
    health_route: str
    provider: Provider
    compute: Compute
    repository: str
    args: tuple[str, ...]
    adapter_ids: tuple[str, ...]  # the ids of `LORA_ADAPTERS` (`id=path`, or a Hub id as its own id)
    rate_limits: Mapping[str, Any]  # `rateLimits` as stored (`gateway/limits.py` reads it)
    raw: Mapping[str, Any]

    @classmethod
    def from_stored(cls, spec: Mapping[str, Any]) -> EndpointSpec:
        compute, provider, model = spec["compute"], spec["provider"], spec["model"]
        scaling = compute["scaling"]
        measure = scaling.get("measure") or {}
        idle_minutes = scaling.get("scaleToZeroTimeout") or DEFAULT_SCALE_TO_ZERO_MINUTES
        return cls(
            type=spec.get("type") or "protected",
            health_route=spec.get("healthRoute") or DEFAULT_HEALTH_ROUTE,
            provider=Provider(provider["vendor"], provider["region"]),
            compute=Compute(
                accelerator=compute["accelerator"],
                instance_type=compute["instanceType"],
                instance_size=compute["instanceSize"],
                scaling=Scaling(
                    min_replica=int(scaling["minReplica"]),
                    max_replica=int(scaling["maxReplica"]),
                    scale_to_zero_minutes=int(idle_minutes),
                    pending_requests=float(measure.get("pendingRequests") or DEFAULT_PENDING_REQUESTS),
                ),
            ),
            repository=model["repository"],
            args=tuple(model.get("args") or ()),
            adapter_ids=adapter_ids((model.get("env") or {}).get("LORA_ADAPTERS")),
            rate_limits=spec.get("rateLimits") or {},
            raw=spec,
        )

    @property
    def is_public(self) -> bool:
        """`public`: anyone may call the endpoint's URL; every other type needs a namespace token."""
        return self.type in PUBLIC_TYPES

    @property
    def instance_label(self) -> str:
        return (f"{self.provider.vendor}/{self.provider.region} "
                f"{self.compute.instance_type} {self.compute.instance_size}")

    def launch_fields(self) -> dict[str, Any]:
        """The parts of the spec that, when changed, need new replicas."""
        return launch_digest_fields(self.raw)

    def replica_digest(self, secrets: Mapping[str, str]) -> str:
        """The one fingerprint of what a replica runs (spec launch fields and the secrets' hash):
        stored on each replica row, handed to the launcher in `ReplicaSpec.digest`. Replicas with
        the endpoint's current digest are current; others belong to an older spec (rolling update)."""
        payload = {
            "spec": self.launch_fields(),
            "secrets": hashlib.sha256(json.dumps(dict(secrets), sort_keys=True).encode()).hexdigest(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def launch_digest_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a stored spec that, when changed, need new replicas."""
    return {
        "provider": spec["provider"],
        "compute": {k: v for k, v in spec["compute"].items() if k != "scaling"},
        "model": spec["model"],
        "healthRoute": spec["healthRoute"],
    }


def adapter_ids(lora_adapters: str | None) -> tuple[str, ...]:
    """The adapter ids of a `LORA_ADAPTERS` value, as the runtime reads it (comma list; `id=path`
    maps an id to a path, a bare Hub id is its own id)."""
    entries = lora_adapter_entries(lora_adapters or "")
    return tuple(name if name is not None else target for name, target in entries if name != "")
