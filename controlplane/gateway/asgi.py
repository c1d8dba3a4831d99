"""The gateway's ASGI app, mounted at `/endpoints`: one endpoint URL in front of its replicas.

A request goes: header limits and request id → the endpoint (registry snapshot) → auth by type →
route allowlist → state (paused, failed) → body (bounded) → the adapter it asks for → rate limits →
a ready replica (waking a scaled-to-zero endpoint, holding the request with `X-Scale-Up-Timeout`)
→ replica chosen by `routing.choose` → forwarded with the replica's key, retried on another
replica if the connection fails → the answer relayed as it streams. A client that disconnects at
any point after its body cancels what is under way: the connection to the replica closes and the
replica cancels the request (freeing its KV blocks).

Auth: a `public` endpoint needs no token. Any other endpoint (and a name that does not exist)
needs a token: 401 without a valid one, so an anonymous caller cannot tell a protected endpoint
from a missing one; a token of another namespace gets 404, as the REST API answers, so it cannot
either.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from lorafleet.controlplane.gateway import requests as req
from lorafleet.controlplane.gateway.auth import bearer
from lorafleet.controlplane.gateway.errors import GatewayError, Send, send_error, send_json
from lorafleet.controlplane.gateway.forward import Relayed, relay, request_headers
from lorafleet.controlplane.gateway.registry import EndpointRoute, ReplicaRoute
from lorafleet.controlplane.gateway.upstream import Connection, ReplicaTimeout, Unavailable, UpstreamError

if TYPE_CHECKING:
    from lorafleet.controlplane.gateway.service import Gateway

MOUNT = "/endpoints"
RETRY_AFTER_S = "5"
UNKNOWN_ADAPTER = "?"  # usage label of refused requests naming an adapter the endpoint does not have
MAX_ADAPTER_LABEL = 256


class EndpointsFirst:
    """ASGI middleware: `/endpoints/...` goes straight to the gateway, past the API's router and
    exception handlers (a route match per request that the data plane does not need)."""

    def __init__(self, app: Any, gateway_app: GatewayApp) -> None:
        self.app, self.gateway_app = app, gateway_app

    async def __call__(self, scope: req.Scope, receive: req.Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(MOUNT + "/"):
            await self.gateway_app({**scope, "root_path": scope.get("root_path", "") + MOUNT}, receive, send)
        else:
            await self.app(scope, receive, send)


class GatewayApp:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: req.Scope, receive: req.Receive, send: Send) -> None:
        if scope["type"] != "http":  # websockets are not part of the runtime's API
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        request_id = None
        try:
            request_id = req.request_id(scope)
            await self._handle(scope, receive, send, request_id)
        except GatewayError as e:
            await send_error(send, e, request_id)
        except req.ClientGone:
            return

    async def _handle(self, scope: req.Scope, receive: req.Receive, send: Send, request_id: str) -> None:
        started = time.perf_counter()
        settings = self.gateway.settings
        req.check_headers(scope, settings.gateway_max_header_bytes)
        namespace, name, route = req.split_path(req.route_path(scope))
        endpoint = await self.gateway.route(namespace, name)
        if endpoint is None or not endpoint.is_public:
            await self._authorize(scope, namespace, name, endpoint)
        assert endpoint is not None
        method = scope["method"]
        body = await req.read_body(scope, receive, settings.gateway_max_body_bytes)
        if method == "GET" and (route in req.HEALTH_ROUTES or route in ("/", endpoint.health_route)):
            await self._health(send, endpoint, request_id)
            return
        req.check_route(route, method)
        _check_state(endpoint)
        adapter, model = req.requested_adapter(route, body)
        if model is not None:
            adapter = self.gateway.holdings.adapter_of_model(model, (r.key for r in endpoint.replicas))
        self._rate_limit(endpoint, adapter)
        self.gateway.meter.touch(endpoint.id)
        tracked = _TrackedSend(send)
        work = self._serve(scope, tracked, endpoint, route, body, adapter, request_id, started)
        await _until_disconnect(work, receive, tracked)

    async def _authorize(self, scope: req.Scope, namespace: str, name: str,
                         endpoint: EndpointRoute | None) -> None:
        token = bearer(req.header(scope, b"authorization"))
        if token is None:
            raise GatewayError(401, "unauthorized", "this endpoint needs `Authorization: Bearer <token>` "
                               "(a token of its namespace)", headers={"WWW-Authenticate": "Bearer"})
        principal = await self.gateway.auth.principal(token)
        if principal is None:
            raise GatewayError(401, "unauthorized", "invalid or revoked token",
                               headers={"WWW-Authenticate": "Bearer"})
        if endpoint is None or principal.namespace != namespace:
            raise GatewayError(404, "not_found", f"Endpoint {name!r} not found in namespace {namespace!r}")

    async def _health(self, send: Send, endpoint: EndpointRoute, request_id: str) -> None:
        """200 only while a replica is ready to serve (what `wait()` probes); a probe wakes nothing."""
        if endpoint.serving:
            await send_json(send, 200, {}, {"x-request-id": request_id})
            return
        await send_error(send, _unavailable(endpoint), request_id)

    def _rate_limit(self, endpoint: EndpointRoute, adapter: str) -> None:
        refusal = self.gateway.limiter.check(endpoint.id, adapter, endpoint.limits,
                                             monotonic=time.monotonic(), now=self.gateway.now())
        if refusal is not None:
            raise GatewayError(429, "rate_limited", refusal.message, limit=refusal.limit,
                               headers={"Retry-After": str(refusal.retry_after_s)})

    async def _serve(self, scope: req.Scope, send: Send, endpoint: EndpointRoute, route: str, body: bytes,
                     adapter: str, request_id: str, started: float) -> None:
        """Waits for a replica, forwards, relays; meters generation requests however they end."""
        outcome: Relayed | None = None
        error = True
        try:
            endpoint = await self._ready(scope, endpoint)
            outcome = await self._forward(scope, send, endpoint, route, body, adapter, request_id)
            error = outcome.status >= 400 or outcome.broken
        except asyncio.CancelledError:
            error = False  # the client left: a request, not an error
            raise
        finally:
            if route in req.GENERATION_ROUTES:
                self._record(endpoint, adapter, outcome, error, started)

    def _record(self, endpoint: EndpointRoute, adapter: str, outcome: Relayed | None, error: bool,
                started: float) -> None:
        ok = outcome is not None and outcome.status < 400
        known = not adapter or adapter in endpoint.adapter_ids or bool(self.gateway.holdings.holders(adapter))
        label = adapter[:MAX_ADAPTER_LABEL] if known or ok else UNKNOWN_ADAPTER
        ttft = None
        if outcome is not None and outcome.streamed and outcome.first_byte_at is not None:
            ttft = outcome.first_byte_at - started
        self.gateway.meter.record(endpoint.id, label, error=error, latency_s=time.perf_counter() - started,
                                  ttft_s=ttft)

    async def _ready(self, scope: req.Scope, endpoint: EndpointRoute) -> EndpointRoute:
        """The endpoint with a ready replica: at once, after waking it and holding the request for
        `X-Scale-Up-Timeout` seconds, or a 503 with `Retry-After`."""
        if endpoint.serving:
            return endpoint
        timeout = req.scale_up_timeout(scope, self.gateway.settings.scale_up_timeout_max_s)
        if endpoint.desired_state == "scaledToZero":
            await self.gateway.wake(endpoint)
        if not timeout:
            raise _unavailable(endpoint, woken=endpoint.desired_state == "scaledToZero")
        meter, deadline = self.gateway.meter, time.monotonic() + timeout
        meter.pending[endpoint.id] += 1  # the autoscaler counts held requests
        try:
            while time.monotonic() < deadline:
                await self.gateway.registry.changed(deadline - time.monotonic())
                current = self.gateway.registry.get(endpoint.namespace, endpoint.name)
                if current is None:
                    raise GatewayError(404, "not_found", f"Endpoint {endpoint.name!r} was deleted")
                _check_state(current)
                if current.serving:
                    return current
                endpoint = current
        finally:
            meter.pending[endpoint.id] -= 1
        raise _unavailable(endpoint, woken=True, waited=timeout)

    async def _forward(self, scope: req.Scope, send: Send, endpoint: EndpointRoute, route: str, body: bytes,
                       adapter: str, request_id: str) -> Relayed:
        gateway, meter = self.gateway, self.gateway.meter
        replicas = {r.key: r for r in endpoint.replicas}
        holders = gateway.holdings.holders(adapter) if adapter else set()
        tried: set[str] = set()
        meter.in_flight[endpoint.id] += 1
        try:
            for _ in range(1 + gateway.settings.gateway_connect_retries):
                key = gateway.pick(list(replicas), adapter, holders, tried)
                if key is None:
                    break
                meter.outstanding[key] += 1
                try:
                    connection = await _open(gateway, replicas[key], scope["method"], route, body, scope,
                                             request_id)
                    if connection is None:
                        tried.add(key)
                        continue
                    try:
                        if connection.status == 401:
                            raise GatewayError(502, "bad_gateway", "the replica refused the gateway's key")
                        outcome = await relay(connection, send, request_id)
                    finally:
                        gateway.upstream.release(connection)
                    if outcome.status < 400 and adapter:
                        gateway.holdings.learn(key, adapter)
                    return outcome
                finally:
                    meter.outstanding[key] -= 1
        finally:
            meter.in_flight[endpoint.id] -= 1
        raise GatewayError(502, "bad_gateway", f"no replica of {endpoint.namespace}/{endpoint.name} took the "
                           f"request ({len(tried)} refused the connection)", headers={"Retry-After": "1"})


async def _open(gateway: Gateway, replica: ReplicaRoute, method: str, route: str, body: bytes,
                scope: req.Scope, request_id: str) -> Connection | None:
    """The replica's response (begun), or None when it could not take the request (try another)."""
    headers = request_headers(scope.get("headers", ()), replica.api_key, request_id)
    try:
        return await gateway.upstream.open(replica.url, method, route, headers, body)
    except Unavailable:
        return None
    except ReplicaTimeout as e:
        raise GatewayError(504, "timeout", f"the replica did not answer in time: {e}") from e
    except UpstreamError as e:
        raise GatewayError(502, "bad_gateway", f"the replica failed: {e}") from e


class _TrackedSend:
    """`send`, noting when the response is complete (after that, a disconnect is no news)."""

    def __init__(self, send: Send) -> None:
        self._send, self.complete = send, False

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True  # before: the server may report the disconnect while this is sent
        await self._send(message)


async def _until_disconnect(work: Any, receive: req.Receive, sent: _TrackedSend) -> None:
    """Runs `work` in this task; a watcher cancels it if the client disconnects first (its body
    was read already). Servers also report a disconnect once the response is complete: then
    `work` just finishes. One extra task per request, no polling."""
    task = asyncio.current_task()
    assert task is not None
    left = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not sent.complete:
            left.set()
            task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await work
    except asyncio.CancelledError:
        if not left.is_set():
            raise  # cancelled from outside (server shutdown), not by the client leaving
        uncancel = getattr(task, "uncancel", None)  # Python >= 3.11 counts cancellations
        if uncancel is not None:
            uncancel()
    finally:
        watcher.cancel()


def _check_state(endpoint: EndpointRoute) -> None:
    what = f"Endpoint {endpoint.namespace}/{endpoint.name}"
    if endpoint.desired_state == "paused":
        raise GatewayError(503, "unavailable", f"{what} is paused: resume it to serve requests")
    if endpoint.state == "failed":
        raise GatewayError(503, "unavailable", f"{what} failed: {endpoint.message}")


def _unavailable(
    endpoint: EndpointRoute, *, woken: bool = False, waited: float | None = None
) -> GatewayError:
    what = f"Endpoint {endpoint.namespace}/{endpoint.name}"
    if woken:
        message = f"{what} is scaled to zero or starting: it is waking up" + (
            f"; no replica was ready within {waited:g} s" if waited else
            "; retry later, or send `X-Scale-Up-Timeout: <seconds>` to wait for it")
    else:
        message = f"{what} has no ready replica (state {endpoint.state})"
    return GatewayError(503, "unavailable", message, headers={"Retry-After": RETRY_AFTER_S})
