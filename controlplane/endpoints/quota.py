"""Per-namespace quotas: endpoints, replicas and accelerators (operator settings `QUOTA_*`), and
adapters per endpoint (checked by `endpoints/adapters.py` when one is added).

Checked where a tenant asks for capacity, so that one tenant cannot fill the host:

* create, update and resume (`check_claims`): the namespace's endpoints, the replicas they always
  run (the sum of `minReplica` over running endpoints) and the accelerators those use must fit,
  and no endpoint may ask for more (`maxReplica`) than the whole namespace may run. A refusal is
  HTTP 403 naming the limit, its value and the setting.
* autoscaling (`QuotaTally`): the reconciler starts a replica only while the namespace's live
  replicas and accelerators stay within the limits; past them the endpoint keeps what it runs
  and its target stops at the quota. (During a rolling update the new replicas count, the old
  ones they replace do not, so an update never waits for quota it already holds.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lorafleet.controlplane.catalog.types import Catalog
from lorafleet.controlplane.endpoints.spec_view import EndpointSpec
from lorafleet.controlplane.errors import ControlPlaneError
from lorafleet.controlplane.models import Endpoint, Replica


class QuotaExceededError(ControlPlaneError):
    status_code = 403


@dataclass(frozen=True)
class Quota:
    """Limits per namespace (defaults suit one host; the operator raises them)."""

    endpoints: int = 20
    replicas: int = 8
    accelerators: int = 8
    adapters: int = 64  # per endpoint (its live adapter set, `endpoints/adapters.py`)

    @classmethod
    def from_settings(cls, settings: Any) -> Quota:
        return cls(settings.quota_endpoints, settings.quota_replicas, settings.quota_accelerators,
                   settings.quota_adapters)


@dataclass(frozen=True)
class Claim:
    """What one endpoint asks for: replicas it always runs, at most, and accelerators per replica."""

    min_replicas: int
    max_replicas: int
    accelerators: int

    @classmethod
    def of(cls, spec: EndpointSpec, catalog: Catalog) -> Claim:
        scaling = spec.compute.scaling
        return cls(scaling.min_replica, scaling.max_replica, accelerators_per_replica(spec, catalog))


def accelerators_per_replica(spec: EndpointSpec, catalog: Catalog) -> int:
    wanted = (spec.provider.vendor, spec.provider.region, spec.compute.instance_type,
              spec.compute.instance_size)
    for instance in catalog.instances():
        if (instance.vendor, instance.region, instance.instance_type, instance.instance_size) == wanted:
            return instance.num_accelerators if instance.accelerator == "gpu" else 0
    return 0


def check_claims(quota: Quota, namespace: str, claim: Claim, others: Sequence[Claim], *,
                 endpoints: int) -> None:
    """Raises `QuotaExceededError` (403) if `claim`, beside the namespace's `others` (running
    endpoints) and its `endpoints` count (this one included), exceeds a limit."""
    if endpoints > quota.endpoints:
        _refuse("endpoints", quota.endpoints, endpoints, f"namespace {namespace!r} would have {endpoints} "
                "endpoints", "name")
    if claim.max_replicas > quota.replicas:
        _refuse("replicas", quota.replicas, claim.max_replicas,
                f"compute.scaling.maxReplica ({claim.max_replicas}) exceeds what namespace "
                f"{namespace!r} may run", "compute.scaling.maxReplica")
    always = claim.min_replicas + sum(o.min_replicas for o in others)
    if always > quota.replicas:
        _refuse("replicas", quota.replicas, always, f"namespace {namespace!r} would always run {always} "
                "replicas (the sum of minReplica over its running endpoints)", "compute.scaling.minReplica")
    if claim.max_replicas * claim.accelerators > quota.accelerators:
        _refuse("accelerators", quota.accelerators, claim.max_replicas * claim.accelerators,
                f"{claim.max_replicas} replicas of {claim.accelerators} accelerators exceed what namespace "
                f"{namespace!r} may use", "compute.scaling.maxReplica")
    used = sum(o.min_replicas * o.accelerators for o in (claim, *others))
    if used > quota.accelerators:
        _refuse("accelerators", quota.accelerators, used, f"namespace {namespace!r} would always use {used} "
                "accelerators", "compute.scaling.minReplica")


def _refuse(limit: str, allowed: int, requested: int, what: str, field: str) -> None:
    setting = f"LORAFLEET_QUOTA_{limit.upper()}"
    raise QuotaExceededError(
        f"quota exceeded: {what}; the limit is {allowed} {limit} per namespace ({setting})",
        limit=limit, max=allowed, requested=requested, setting=setting, field=field,
    )


@dataclass(frozen=True)
class QuotaRoom:
    """How many replicas of its current spec an endpoint may run now, and why not more."""

    capacity: int
    reason: str = ""


class QuotaTally:
    """Replicas and accelerators each namespace runs, kept current through one reconciler pass."""

    def __init__(self, quota: Quota, catalog: Catalog, endpoints: Iterable[tuple[Endpoint, str]],
                 replicas: Mapping[int, Sequence[Replica]]) -> None:
        self._quota = quota
        self._per_replica: dict[int, int] = {}
        self._own: dict[int, int] = {}
        self._replicas: dict[str, int] = {}
        self._accelerators: dict[str, int] = {}
        for endpoint, namespace in endpoints:
            count = len(replicas.get(endpoint.id, ()))
            accelerators = accelerators_per_replica(EndpointSpec.from_stored(endpoint.spec), catalog)
            self._per_replica[endpoint.id], self._own[endpoint.id] = accelerators, count
            self._replicas[namespace] = self._replicas.get(namespace, 0) + count
            self._accelerators[namespace] = self._accelerators.get(namespace, 0) + count * accelerators

    def room(self, endpoint: Endpoint, namespace: str) -> QuotaRoom:
        own, per_replica = self._own.get(endpoint.id, 0), self._per_replica.get(endpoint.id, 0)
        others = self._replicas.get(namespace, 0) - own
        capacity, reason = self._quota.replicas - others, (
            f"waiting for quota: namespace {namespace!r} runs {others} replicas of other endpoints; the "
            f"limit is {self._quota.replicas} (LORAFLEET_QUOTA_REPLICAS)")
        if per_replica:
            free = self._quota.accelerators - (self._accelerators.get(namespace, 0) - own * per_replica)
            if free // per_replica < capacity:
                capacity, reason = free // per_replica, (
                    f"waiting for quota: namespace {namespace!r} uses {self._quota.accelerators - free} "
                    f"accelerators elsewhere; the limit is {self._quota.accelerators} "
                    "(LORAFLEET_QUOTA_ACCELERATORS)")
        return QuotaRoom(max(0, capacity), reason)

    def launched(self, endpoint: Endpoint, namespace: str, count: int) -> None:
        self._own[endpoint.id] = self._own.get(endpoint.id, 0) + count
        self._replicas[namespace] = self._replicas.get(namespace, 0) + count
        per_replica = self._per_replica.get(endpoint.id, 0)
        self._accelerators[namespace] = self._accelerators.get(namespace, 0) + count * per_replica
