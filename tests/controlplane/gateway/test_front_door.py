"""What the gateway refuses before any replica is involved, written as the abuse: tokens of nobody
or of another namespace, routes that are not the runtime's public API, oversized headers and
bodies, hostile request ids and scale-up timeouts, malformed rate limits; and how an endpoint
without a ready replica answers (503 + Retry-After, woken from zero, held, paused).

A real control plane over HTTP with its reconciler off: endpoints stay as the API leaves them, so
no replica ever runs here (the live tests in this folder have real replicas).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from lorafleet.controlplane.clock import utcnow
from lorafleet.controlplane.models import Endpoint
from lorafleet.controlplane.usage.repository import fresh_loads, load_since
from sqlalchemy import select

from tests.controlplane.conftest import Server, endpoint_body
from tests.controlplane.replicas import wait_for


def gateway_url(api: Server, name: str = "ep-gw", namespace: str | None = None) -> str:
    return f"{api.url}/endpoints/{namespace or api.namespace}/{name}"


def create(api: Server, name: str = "ep-gw", **fields: Any) -> dict[str, Any]:
    """Creates the endpoint and waits until the gateway knows it (it reloads endpoints every
    `GATEWAY_REFRESH_S`, and at most every 0.25 s on demand)."""
    body = {**endpoint_body(name), **fields}
    with api.client() as client:
        response = client.post(f"/v2/endpoint/{api.namespace}", json=body)
    assert response.status_code == 200, response.text
    url = f"{gateway_url(api, name)}/health"
    wait_for(lambda: httpx.get(url, headers=api.headers).status_code != 404, 30, f"the gateway seeing {name}")
    return response.json()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] and body["error_type"]
    return body


def test_a_protected_endpoint_wants_a_token_of_its_namespace_and_hides_from_others(api: Server) -> None:
    create(api)
    url = gateway_url(api)
    missing = gateway_url(api, "no-such-endpoint")
    for target in (url, missing):  # anonymous callers cannot tell a protected endpoint from none
        refused = httpx.post(f"{target}/generate", json={"inputs": "Hi"})
        assert error_of(refused, 401)["error_type"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
        bad = httpx.post(f"{target}/generate", json={}, headers={"Authorization": "Bearer lf_nope"})
        assert "invalid or revoked" in error_of(bad, 401)["error"]
    mallory = {"Authorization": f"Bearer {api.new_token('mallory')}"}
    for target in (url, missing):  # another namespace's token: the same 404 for both
        assert error_of(httpx.post(f"{target}/generate", json={}, headers=mallory), 404)["error"]
    assert error_of(httpx.post(f"{missing}/generate", json={}, headers=api.headers), 404)
    assert error_of(httpx.post(f"{url}/generate", json={}, headers=api.headers), 503)  # hers: no replica yet


def test_a_public_endpoint_needs_no_token(api: Server) -> None:
    create(api, "ep-public", type="public")
    refused = httpx.post(f"{gateway_url(api, 'ep-public')}/generate", json={"inputs": "Hi"})
    assert error_of(refused, 503)["error_type"] == "unavailable"  # past auth: only no replica is missing
    assert refused.headers["retry-after"] == "5"


@pytest.mark.parametrize("method,route", [
    ("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter"), ("GET", "/v1/lora_adapters"),
    ("GET", "/metrics"),
    ("GET", "/v1/../metrics"), ("GET", "/docs"), ("GET", "/v1/models/../../admin"), ("POST", "/generate/x"),
])
def test_only_the_runtimes_public_routes_are_forwarded(api: Server, method: str, route: str) -> None:
    create(api, "ep-routes")
    response = httpx.request(method, f"{gateway_url(api, 'ep-routes')}{route}", headers=api.headers)
    assert error_of(response, 404)["error_type"] == "not_found"


def test_a_wrong_method_is_405_with_allow(api: Server) -> None:
    create(api, "ep-methods")
    response = httpx.get(f"{gateway_url(api, 'ep-methods')}/generate", headers=api.headers)
    assert error_of(response, 405)["error_type"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


def test_oversized_headers_are_refused_with_431(api: Server) -> None:
    create(api, "ep-headers")
    url = f"{gateway_url(api, 'ep-headers')}/generate"
    many = {f"x-filler-{i}": "1" for i in range(120)}
    assert error_of(httpx.post(url, json={}, headers={**api.headers, **many}), 431)
    big = {**api.headers, "x-filler": "a" * 20_000}
    refused = httpx.post(url, json={}, headers=big)
    assert "LORAFLEET_GATEWAY_MAX_HEADER_BYTES" in error_of(refused, 431)["error"]


def test_oversized_bodies_are_refused_with_413_declared_or_streamed(api: Server) -> None:
    create(api, "ep-body")
    url = f"{gateway_url(api, 'ep-body')}/generate"
    limit = api.settings.gateway_max_body_bytes
    declared = httpx.post(url, content=b"x" * (limit + 1), headers=api.headers)
    assert "Content-Length" in error_of(declared, 413)["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b"y" * 65536

    streamed = httpx.post(url, content=chunks(), headers=api.headers)
    assert error_of(streamed, 413)["error_type"] == "payload_too_large"


def test_request_ids_pass_through_are_generated_or_refused(api: Server) -> None:
    create(api, "ep-ids")
    url = f"{gateway_url(api, 'ep-ids')}/generate"
    given = httpx.post(url, json={}, headers={**api.headers, "X-Request-Id": "trace-42.a_b:c"})
    assert given.headers["x-request-id"] == "trace-42.a_b:c"
    made = httpx.post(url, json={}, headers=api.headers).headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    for hostile in ("a b", "x" * 129, "ü".encode("latin-1"), "id;drop", ""):
        refused = httpx.post(url, json={}, headers={**api.headers, "X-Request-Id": hostile})
        assert error_of(refused, 400)["field"] == "X-Request-Id", hostile


@pytest.mark.parametrize("value", ["-1", "nan", "NaN", "inf", "abc", "1e9", "601", ""])
def test_a_hostile_scale_up_timeout_is_refused(api: Server, value: str) -> None:
    create(api, "ep-timeout")
    response = httpx.post(f"{gateway_url(api, 'ep-timeout')}/generate", json={},
                          headers={**api.headers, "X-Scale-Up-Timeout": value})
    assert error_of(response, 400)["field"] == "X-Scale-Up-Timeout"


def test_a_request_wakes_a_scaled_to_zero_endpoint_and_a_held_one_waits_its_timeout(api: Server) -> None:
    create(api, "ep-zero")
    with api.client() as client:
        assert client.post(f"/v2/endpoint/{api.namespace}/ep-zero/scale-to-zero").status_code == 200
    url = gateway_url(api, "ep-zero")

    def wake() -> httpx.Response | None:  # the gateway sees the scale-to-zero at its next reload
        response = httpx.post(f"{url}/generate", json={"inputs": "Hi"}, headers=api.headers)
        return response if "waking up" in response.text else None

    woke = wait_for(wake, 30, "a request waking the endpoint")
    assert error_of(woke, 503)["error_type"] == "unavailable" and woke.headers["retry-after"] == "5"
    with api.client() as client:
        raw = client.get(f"/v2/endpoint/{api.namespace}/ep-zero").json()
        events = client.get(f"/v2/endpoint/{api.namespace}/ep-zero/events").json()["items"]
    assert raw["status"]["state"] == "pending" and "waking up" in raw["status"]["message"]
    assert [e["kind"] for e in events][-1] == "woken"
    started = time.monotonic()  # no reconciler here: the held request gives up after its timeout
    held = httpx.post(f"{url}/generate", json={"inputs": "Hi"}, timeout=30,
                      headers={**api.headers, "X-Scale-Up-Timeout": "1.5"})
    assert "within 1.5 s" in error_of(held, 503)["error"] and time.monotonic() - started >= 1.5


def test_a_paused_endpoint_answers_503_and_stays_paused(api: Server) -> None:
    create(api, "ep-paused")
    with api.client() as client:
        assert client.post(f"/v2/endpoint/{api.namespace}/ep-paused/pause").status_code == 200
    refused = httpx.post(f"{gateway_url(api, 'ep-paused')}/generate", json={}, headers=api.headers)
    assert "paused" in error_of(refused, 503)["error"]
    with api.client() as client:
        assert client.get(f"/v2/endpoint/{api.namespace}/ep-paused").json()["status"]["state"] == "paused"


@pytest.mark.parametrize("limits,field", [
    ({"requestsPerSecond": -1}, "rateLimits.requestsPerSecond"),
    ({"requestsPerSecond": 0}, "rateLimits.requestsPerSecond"),
    ({"requestsPerSecond": 1e12}, "rateLimits.requestsPerSecond"),
    ({"requestsPerSecond": "fast"}, "rateLimits.requestsPerSecond"),
    ({"requestsPerSecond": True}, "rateLimits.requestsPerSecond"),
    ({"tokensPerMinute": 1.5}, "rateLimits.tokensPerMinute"),
    ({"tokensPerMinute": 10**13}, "rateLimits.tokensPerMinute"),
    ({"tokensPerMinute": "100"}, "rateLimits.tokensPerMinute"),
    ({"perAdapter": {"requestsPerSecond": -5}}, "rateLimits.perAdapter.requestsPerSecond"),
    ({"perAdapter": []}, "rateLimits.perAdapter"),
    ({"burst": 10}, "rateLimits.burst"),
    ([1, 2], "rateLimits"),
])
def test_malformed_rate_limits_are_refused_naming_the_field(api: Server, limits: Any, field: str) -> None:
    with api.client() as client:
        body = {**endpoint_body("ep-rl"), "rateLimits": limits}
        response = client.post(f"/v2/endpoint/{api.namespace}", json=body)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]], response.json()


def test_nan_and_infinity_rate_limits_are_refused(api: Server) -> None:
    raw = b'{"rateLimits": {"requestsPerSecond": NaN}, "name": "ep-nan"}'
    for payload in (raw, raw.replace(b"NaN", b"Infinity")):
        with api.client() as client:
            body = client.post(f"/v2/endpoint/{api.namespace}", content=payload,
                               headers={"content-type": "application/json"})
        assert body.status_code == 422 and "rateLimits.requestsPerSecond" in body.text


def test_rate_limits_are_stored_replaced_as_a_whole_and_removed_with_an_empty_object(api: Server) -> None:
    limits = {"requestsPerSecond": 5, "perAdapter": {"tokensPerMinute": 9}}
    created = create(api, "ep-limits", rateLimits=limits)
    assert created["rateLimits"] == {"requestsPerSecond": 5.0, "perAdapter": {"tokensPerMinute": 9}}
    with api.client() as client:
        path = f"/v2/endpoint/{api.namespace}/ep-limits"
        assert client.put(path, json={"rateLimits": {"tokensPerMinute": 100}}).json()["rateLimits"] == {
            "tokensPerMinute": 100}
        assert client.put(path, json={"type": "public"}).json()["rateLimits"] == {"tokensPerMinute": 100}
        assert client.put(path, json={"rateLimits": {}}).json()["rateLimits"] == {}


def test_usage_of_a_new_endpoint_is_empty_and_hidden_from_other_namespaces(api: Server) -> None:
    created = create(api, "ep-usage")
    with api.client() as client:
        usage = client.get(f"/v2/endpoint/{api.namespace}/ep-usage/usage").json()
    assert usage == {"adapters": [], "since": created["status"]["createdAt"]}
    with api.client(api.new_token("mallory")) as client:
        assert client.get(f"/v2/endpoint/{api.namespace}/ep-usage/usage").status_code == 404


def test_metrics_need_a_token_and_show_only_its_namespace(api: Server) -> None:
    create(api, "ep-mine")
    assert error_of(httpx.get(f"{api.url}/metrics"), 401)
    assert error_of(httpx.get(f"{api.url}/metrics", headers={"Authorization": "Bearer lf_nope"}), 401)
    mine = httpx.get(f"{api.url}/metrics", headers=api.headers)
    assert mine.status_code == 200 and 'endpoint="ep-mine"' in mine.text
    assert mine.headers["content-type"].startswith("text/plain")
    theirs = httpx.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {api.new_token('bob')}"})
    assert theirs.status_code == 200 and "ep-mine" not in theirs.text


def test_gateway_traffic_resets_the_idle_timer_and_held_requests_are_reported_as_load(
    api: Server,
) -> None:
    created = create(api, "ep-activity")
    with api.database.session() as session:
        endpoint = session.scalar(select(Endpoint).where(Endpoint.name == "ep-activity"))
        assert endpoint is not None
        endpoint_id, before = endpoint.id, endpoint.last_active_at
    assert created["status"]["state"] == "pending"  # no reconciler here: no replica ever comes
    url = f"{gateway_url(api, 'ep-activity')}/generate"
    held: list[int] = []
    waiter = threading.Thread(target=lambda: held.append(httpx.post(
        url, json={}, timeout=60, headers={**api.headers, "X-Scale-Up-Timeout": "5"}).status_code))
    waiter.start()

    def reported() -> int:  # what the autoscaler reads: the gateways' fresh load rows
        with api.database.session() as session:
            loads = fresh_loads(session, load_since(api.settings.gateway_flush_s, utcnow()))
        return loads.get(endpoint_id, 0)

    try:
        assert wait_for(reported, 30, "the held request reported as pending load") == 1
        with api.database.session() as session:
            moved = session.get(Endpoint, endpoint_id)
            assert moved is not None and moved.last_active_at > before
    finally:
        waiter.join(timeout=60)
    assert held == [503]
    wait_for(lambda: reported() == 0, 30, "the load gone with the request")
