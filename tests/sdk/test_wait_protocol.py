"""wait()'s protocol on a scripted server: state polling, the health probe, failure and timeout.

The live control plane tests cover the same on real replicas; these pin the edge cases that a
real deployment cannot produce on demand (a health route that answers 503 while `running`).
"""

from __future__ import annotations

import lorafleet
import pytest
from huggingface_hub.errors import InferenceEndpointError, InferenceEndpointTimeoutError
from lorafleet import AsyncClient, Client, RetryPolicy, aio

from tests.sdk.scripted_server import Reply, ScriptedServer, endpoint_json

EP = "/v2/endpoint/alice/ep"


@pytest.fixture
def client(server):
    with Client(server.url, token="tok", retry=RetryPolicy(max_attempts=1)) as c:
        yield c


def _script_rollout(server: ScriptedServer) -> None:
    running = endpoint_json(state="running", url=server.url)
    server.script("GET", EP, Reply(200, endpoint_json(state="initializing")), Reply(200, running))
    server.script("GET", "/health", Reply(503, {"error": "loading"}), Reply(200, ""))


def test_wait_returns_once_running_and_the_health_route_answers_200(server, client):
    server.script("POST", "/v2/endpoint/alice", Reply(200, endpoint_json(state="pending")))
    _script_rollout(server)
    endpoint = lorafleet.create_inference_endpoint(
        "ep", repository="/m", framework="pytorch", accelerator="cpu", instance_size="x1",
        instance_type="cpu", region="local", vendor="local", namespace="alice", client=client,
    )  # fmt: skip
    seen: list[str] = []
    result = endpoint.wait(timeout=30, refresh_every=0.01, on_update=lambda e: seen.append(e.status))
    assert result is endpoint
    assert endpoint.status == "running" and endpoint.url == server.url
    assert seen == ["pending", "initializing", "running", "running"]
    probes = [r for r in server.requests if r.path == "/health"]
    assert len(probes) == 2 and probes[0].headers["authorization"] == "Bearer tok"


def test_wait_raises_endpoint_failed_with_the_server_message(server, client):
    failed = endpoint_json(state="failed", message="replica exited: no such model dir /m")
    server.script("GET", EP, Reply(200, endpoint_json(state="initializing")), Reply(200, failed))
    endpoint = lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)
    with pytest.raises(lorafleet.EndpointFailed, match="failed to deploy: replica exited: no such") as info:
        endpoint.wait(timeout=30, refresh_every=0.01)
    assert isinstance(info.value, InferenceEndpointError)


def test_wait_raises_endpoint_failed_on_update_failed(server, client):
    server.script("GET", EP, Reply(200, endpoint_json(state="updateFailed", message="bad adapter")))
    endpoint = lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)
    with pytest.raises(lorafleet.EndpointFailed, match="failed to update: bad adapter"):
        endpoint.wait(timeout=30, refresh_every=0.01)


def test_wait_times_out_with_the_current_state_in_the_message(server, client):
    server.script("GET", EP, Reply(200, endpoint_json(state="initializing", message="loading weights")))
    endpoint = lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)
    with pytest.raises(lorafleet.Timeout, match="'initializing' \\(loading weights\\)") as info:
        endpoint.wait(timeout=0.05, refresh_every=0.01)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, InferenceEndpointTimeoutError)


def test_wait_keeps_polling_while_the_replica_refuses_connections(server, client):
    dead_url = "http://127.0.0.1:9"  # nothing listens on the discard port
    running = endpoint_json(state="running", url=dead_url)
    server.script("GET", EP, Reply(200, running), Reply(200, endpoint_json(state="running", url=server.url)))
    server.script("GET", "/health", Reply(200, ""))
    endpoint = lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)
    assert endpoint.wait(timeout=30, refresh_every=0.01).url == server.url


@pytest.mark.parametrize(("timeout", "refresh_every"), [(-1, 5), (None, 0)])
def test_wait_rejects_bad_arguments(server, client, timeout, refresh_every):
    server.script("GET", EP, Reply(200, endpoint_json()))
    endpoint = lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)
    with pytest.raises(ValueError):
        endpoint.wait(timeout=timeout, refresh_every=refresh_every)


def test_client_property_needs_a_url(server, client):
    server.script("GET", EP, Reply(200, endpoint_json(state="pending")))
    endpoint = lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)
    with pytest.raises(lorafleet.EndpointFailed, match="no URL yet"):
        endpoint.client  # noqa: B018


async def test_async_wait_follows_the_same_protocol(server):
    _script_rollout(server)
    async with AsyncClient(server.url, token="tok") as client:
        endpoint = await aio.get_inference_endpoint("ep", namespace="alice", client=client)
        assert isinstance(endpoint, lorafleet.AsyncInferenceEndpoint)
        await endpoint.wait(timeout=30, refresh_every=0.01)
        assert endpoint.status == "running"
        server.script("GET", EP, Reply(200, endpoint_json(state="failed", message="oom")))
        await endpoint.fetch()
        with pytest.raises(lorafleet.EndpointFailed, match="oom"):
            await endpoint.wait(timeout=1, refresh_every=0.01)
        server.script("GET", EP, Reply(200, endpoint_json(state="pending")))
        await endpoint.fetch()
        with pytest.raises(lorafleet.Timeout):
            await endpoint.wait(timeout=0.05, refresh_every=0.01)
