"""What the gateway routes to: endpoints and their ready replicas, reloaded from the database.

One `Registry` per gateway process. `refresh()` (a worker thread, every `GATEWAY_REFRESH_S`)
reads every endpoint and every `ready` replica in two queries and swaps in a new immutable
snapshot; requests read the snapshot without a lock or a query. Replicas the planner is draining
(state `draining`) are not in it: a gateway stops routing to a replica within one refresh of the
planner's decision, which is what the planner waits for before it stops the replica. Replica keys
are opened once per replica (`SecretBox`) and never leave the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lorafleet.controlplane.db import Database
from lorafleet.controlplane.endpoints import adapter_rows
from lorafleet.controlplane.endpoints.spec_view import EndpointSpec
from lorafleet.controlplane.errors import ControlPlaneError
from lorafleet.controlplane.gateway.limits import RateLimits
from lorafleet.controlplane.models import Endpoint, Namespace, Replica
from lorafleet.controlplane.secretbox import SecretBox
from sqlalchemy import select

log = logging.getLogger("lorafleet.controlplane.gateway")


@dataclass(frozen=True)
class ReplicaRoute:
    key: str
    url: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class EndpointRoute:
    """One endpoint as the gateway sees it."""

    id: int
    namespace: str
    name: str
    is_public: bool
    health_route: str
    desired_state: str
    state: str
    message: str
    adapter_ids: frozenset[str]
    limits: RateLimits
    replicas: tuple[ReplicaRoute, ...] = ()

    @property
    def serving(self) -> bool:
        return self.desired_state == "running" and bool(self.replicas)


class Registry:
    """The latest snapshot of endpoints and ready replicas, keyed by (namespace, name)."""

    def __init__(self, database: Database, secret_box: SecretBox) -> None:
        self._database = database
        self._secret_box = secret_box
        self._routes: Mapping[tuple[str, str], EndpointRoute] = {}
        self._keys: dict[str, str] = {}  # replica key → its opened API key
        self._changed: asyncio.Event | None = None
        self.loaded = False  # a first snapshot exists
        self.on_refresh: list[Callable[[Registry], None]] = []  # called in the refreshing thread

    def get(self, namespace: str, name: str) -> EndpointRoute | None:
        return self._routes.get((namespace, name))

    def routes(self) -> list[EndpointRoute]:
        return list(self._routes.values())

    def refresh(self) -> None:
        """Reloads the snapshot (blocking: run it in a worker thread)."""
        with self._database.session() as session:
            endpoints = session.execute(
                select(Endpoint, Namespace.name).join(Namespace, Namespace.id == Endpoint.namespace_id)
            ).all()
            replicas = session.scalars(
                select(Replica).where(Replica.state == "ready", Replica.endpoint_id.is_not(None),
                                      Replica.url.is_not(None)).order_by(Replica.id)
            ).all()
            by_endpoint: dict[int, list[ReplicaRoute]] = {}
            for replica in replicas:
                api_key = self._api_key(replica)
                if api_key is not None and replica.endpoint_id is not None and replica.url:
                    by_endpoint.setdefault(replica.endpoint_id, []).append(
                        ReplicaRoute(replica.replica_key, replica.url.rstrip("/"), api_key))
            sets = adapter_rows.adapters_by_endpoint(session)
            routes = {}
            for endpoint, namespace in endpoints:
                names = frozenset(a.name for a in sets.get(endpoint.id, ()))
                spec = EndpointSpec.from_stored(endpoint.spec)
                routes[(namespace, endpoint.name)] = EndpointRoute(
                    endpoint.id, namespace, endpoint.name, spec.is_public, spec.health_route,
                    endpoint.desired_state, endpoint.state, endpoint.message, names,
                    RateLimits.from_stored(spec.rate_limits), tuple(by_endpoint.get(endpoint.id, ())))
        live = {r.replica_key for r in replicas}
        self._keys = {k: v for k, v in self._keys.items() if k in live}
        self._routes, self.loaded = routes, True
        for callback in self.on_refresh:
            callback(self)

    def _api_key(self, replica: Replica) -> str | None:
        key = self._keys.get(replica.replica_key)
        if key is None and replica.api_key_encrypted:
            try:
                key = self._secret_box.open(replica.api_key_encrypted)["api_key"]
                self._keys[replica.replica_key] = key
            except ControlPlaneError as e:  # another SECRET_KEY: this replica cannot be reached
                log.warning("cannot open the key of replica %s: %s", replica.replica_key, e.message)
        return key

    # --- waiting for a change (requests held while an endpoint wakes up) -----------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._changed = loop, asyncio.Event()

    def notify(self) -> None:
        """Thread-safe: wakes the requests waiting for a new snapshot."""
        if self._changed is not None:
            self._loop.call_soon_threadsafe(self._swap)

    def _swap(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        assert event is not None
        event.set()

    async def changed(self, timeout_s: float) -> None:
        """Returns at the next refresh, or after `timeout_s`."""
        assert self._changed is not None, "bind() the registry to the event loop first"
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
