"""`Gateway`: the gateway's parts, their background loops, and what it writes to the database.

Stateless between processes: everything shared with other gateways and with the reconciler goes
through the database in small periodic writes (never per request or per token):

* read every `GATEWAY_REFRESH_S`: endpoints and ready replicas (`registry.py`), and the recent
  per-minute token counts when some endpoint limits tokens;
* written every `GATEWAY_FLUSH_S`: this gateway's usage rows (requests, errors, latency
  histograms), the endpoints it served (their idle timer is reset) and its load per endpoint
  (pending + in-flight requests, which the autoscaler sums over the gateways that reported lately);
* written at once: waking a scaled-to-zero endpoint (a conditional UPDATE, once per endpoint per
  refresh interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Collection
from datetime import datetime

import httpx
from lorafleet.controlplane.auth.service import Principal
from lorafleet.controlplane.clock import utcnow
from lorafleet.controlplane.db import Database
from lorafleet.controlplane.endpoints import repository as endpoints_repository
from lorafleet.controlplane.gateway.asgi import GatewayApp
from lorafleet.controlplane.gateway.auth import Authenticator, bearer
from lorafleet.controlplane.gateway.errors import GatewayError
from lorafleet.controlplane.gateway.holdings import Holdings
from lorafleet.controlplane.gateway.limits import RateLimiter
from lorafleet.controlplane.gateway.meter import Meter, Snapshot
from lorafleet.controlplane.gateway.registry import EndpointRoute, Registry
from lorafleet.controlplane.gateway.routing import RoundRobin, choose
from lorafleet.controlplane.gateway.upstream import Upstream
from lorafleet.controlplane.secretbox import SecretBox
from lorafleet.controlplane.settings import Settings
from lorafleet.controlplane.usage import repository as usage
from lorafleet.controlplane.usage.report import prometheus

log = logging.getLogger("lorafleet.controlplane.gateway")
ON_DEMAND_REFRESH_S = 0.25


class Gateway:
    """One gateway process's state. `app` is the ASGI app to mount at `/endpoints`.

    Args:
        wake_reconciler: called after this gateway woke an endpoint (the control plane passes its
            reconciler's `wake`; a gateway alone leaves it to the reconciler's next pass).
    """

    def __init__(self, settings: Settings, database: Database, secret_box: SecretBox, *,
                 wake_reconciler: Callable[[], None] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.database = database
        self.gateway_id = f"gw-{uuid.uuid4().hex[:12]}"
        self.registry = Registry(database, secret_box)
        self.auth = Authenticator(database, settings.gateway_auth_cache_s)
        self.meter = Meter()
        self.limiter = RateLimiter()
        self.holdings = Holdings()
        self.upstream = Upstream(settings.gateway_connect_timeout_s, settings.gateway_read_timeout_s)
        self.http: httpx.AsyncClient | None = None  # off the request path: replicas' adapter reports
        self.app = GatewayApp(self)
        self.now = clock
        self._wake_reconciler = wake_reconciler
        self._woken_at: dict[int, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._round_robin = RoundRobin() if settings.gateway_routing == "round_robin" else None
        self._refreshed_at = 0.0  # monotonic time of the last registry refresh
        self._refreshing: asyncio.Future[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.registry.bind(asyncio.get_running_loop())
        s = self.settings
        self.http = httpx.AsyncClient(timeout=s.gateway_connect_timeout_s)
        try:
            await asyncio.to_thread(self._refresh)
        except Exception:
            log.exception("the gateway's first look at the database failed; retrying in the background")
        self._tasks = [asyncio.create_task(self._every(s.gateway_refresh_s, self._refresh_async)),
                       asyncio.create_task(self._every(s.gateway_adapters_refresh_s, self._ask_replicas)),
                       asyncio.create_task(self._every(s.gateway_flush_s, self.flush))]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.flush()
        self.upstream.close()
        if self.http is not None:
            await self.http.aclose()

    async def _every(self, interval_s: float, step: Callable[[], object]) -> None:
        while True:
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("gateway background step %s failed", getattr(step, "__name__", step))
            await asyncio.sleep(interval_s)

    def pick(self, replicas: list[str], adapter: str, holders: Collection[str], tried: Collection[str]
             ) -> str | None:
        """The replica for one request, by `GATEWAY_ROUTING` (see `routing.py`)."""
        if self._round_robin is not None:
            return self._round_robin.choose(replicas, tried)
        load_factor = self.settings.gateway_load_factor
        return choose(replicas, adapter, self.meter.outstanding, holders, tried, load_factor)

    # --- reading --------------------------------------------------------------------------

    async def _refresh_async(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(asyncio.to_thread(self._refresh))
        await asyncio.shield(self._refreshing)

    async def route(self, namespace: str, name: str) -> EndpointRoute | None:
        """The endpoint's route; when it has no ready replica in the snapshot, the snapshot is
        reloaded first (at most every `ON_DEMAND_REFRESH_S`), so that a replica the reconciler just
        found ready serves at once rather than up to a refresh interval later."""
        route = self.registry.get(namespace, name)
        stale = time.monotonic() - self._refreshed_at > ON_DEMAND_REFRESH_S
        if (route is None or not route.serving) and stale:
            await self._refresh_async()
            route = self.registry.get(namespace, name)
        return route

    def _refresh(self) -> None:
        self._refreshed_at = time.monotonic()
        self.registry.refresh()
        if any(route.limits.limits_tokens for route in self.registry.routes()):
            with self.database.session() as session:
                self.limiter.tokens.replace(usage.recent_tokens(session, usage.window_start(self.now(), 1)))
        self.registry.notify()

    async def _ask_replicas(self) -> None:
        assert self.http is not None
        replicas = [r for route in self.registry.routes() for r in route.replicas]
        await self.holdings.refresh(self.http, replicas)

    # --- writing --------------------------------------------------------------------------

    async def flush(self) -> None:
        """Writes what this gateway counted since the last flush (given back if the write fails)."""
        snapshot = self.meter.take()
        if not (snapshot.deltas or snapshot.touched or snapshot.loads or self._had_load):
            return
        try:
            await asyncio.to_thread(self._write, snapshot)
        except Exception:
            self.meter.give_back(snapshot)
            raise
        self._had_load = bool(snapshot.loads)

    _had_load = False  # whether the last flush wrote load rows (then the next one clears them)

    def _write(self, snapshot: Snapshot) -> None:
        moment = self.now()
        with self.database.session() as session:
            ids = {eid for eid, _ in snapshot.deltas} | snapshot.touched | set(snapshot.loads)
            alive = usage.existing_endpoints(session, ids)  # an endpoint may have been deleted meanwhile
            for (endpoint_id, adapter), delta in snapshot.deltas.items():
                if endpoint_id in alive:
                    usage.add(session, endpoint_id=endpoint_id, adapter=adapter, source=self.gateway_id,
                              moment=moment, delta=delta)
            usage.touch_active(session, snapshot.touched & alive, moment)
            usage.write_load(session, gateway_id=self.gateway_id, moment=moment,
                             loads={k: v for k, v in snapshot.loads.items() if k in alive})

    async def wake(self, endpoint: EndpointRoute) -> None:
        """Turns a scaled-to-zero endpoint back to `running` (once per refresh interval)."""
        now = time.monotonic()
        if now - self._woken_at.get(endpoint.id, -1e9) < self.settings.gateway_refresh_s:
            return
        self._woken_at[endpoint.id] = now
        woke = await asyncio.to_thread(self._wake, endpoint.id)
        if woke:
            log.info("woke %s/%s from zero", endpoint.namespace, endpoint.name)
            if self._wake_reconciler is not None:
                self._wake_reconciler()

    def _wake(self, endpoint_id: int) -> bool:
        with self.database.session() as session:
            return endpoints_repository.wake_from_zero(session, endpoint_id=endpoint_id, moment=self.now())

    # --- /metrics -------------------------------------------------------------------------

    async def metrics(self, authorization: str | None) -> str:
        """Prometheus text: every namespace for the operator's `METRICS_TOKEN`, a tenant's own
        namespace for its token; 401 otherwise (names of endpoints and adapters are tenants' data)."""
        namespace = await self._metrics_scope(bearer(authorization))
        routes = [r for r in self.registry.routes() if namespace is None or r.namespace == namespace]
        totals = await asyncio.to_thread(self._totals, [r.id for r in routes])
        rows = [(r.namespace, r.name, totals.get(r.id, {})) for r in routes]
        gauges = [(r.namespace, r.name, self.meter.pending.get(r.id, 0), self.meter.in_flight.get(r.id, 0))
                  for r in routes]
        return prometheus(rows, gauges)

    def _totals(self, endpoint_ids: list[int]) -> dict[int, dict[str, usage.AdapterTotals]]:
        with self.database.session() as session:
            return usage.totals(session, endpoint_ids)

    async def _metrics_scope(self, token: str | None) -> str | None:
        operator = self.settings.metrics_token
        if token is not None and operator is not None and hmac.compare_digest(
            token.encode(), operator.get_secret_value().encode()
        ):
            return None
        principal: Principal | None = await self.auth.principal(token) if token else None
        if principal is None:
            raise GatewayError(401, "unauthorized", "/metrics needs `Authorization: Bearer <token>`: "
                               "LORAFLEET_METRICS_TOKEN, or a namespace's token (its own endpoints)",
                               headers={"WWW-Authenticate": "Bearer"})
        return principal.namespace
