"""Error mapping and retries on real sockets: each status code to its error, network failures."""

from __future__ import annotations

import json

import httpx
import lorafleet
import pytest
from lorafleet import Client, RetryPolicy

from tests.sdk.scripted_server import Reply, endpoint_json

NO_WAIT = RetryPolicy(max_attempts=3, backoff=0.0)
EP = "/v2/endpoint/alice/ep"


@pytest.fixture
def client(server):
    with Client(server.url, token="tok", retry=NO_WAIT) as c:
        yield c


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, lorafleet.ValidationError),
        (401, lorafleet.AuthenticationError),
        (403, lorafleet.AuthenticationError),
        (404, lorafleet.EndpointNotFound),
        (409, lorafleet.Conflict),
        (422, lorafleet.ValidationError),
        (429, lorafleet.LorafleetError),
        (500, lorafleet.LorafleetError),
        (503, lorafleet.LorafleetError),
    ],
)
def test_each_error_status_maps_to_its_error_with_the_server_message(server, client, status, error_class):
    server.script("GET", EP, Reply(status, {"error": f"boom {status}"}, {"x-request-id": "req-7"}))
    with pytest.raises(error_class) as info:
        lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)
    error = info.value
    assert type(error) is error_class
    assert error.message == f"boom {status}"
    assert error.status_code == status
    assert error.request_id == "req-7"
    assert f"boom {status}" in str(error) and "req-7" in str(error)


def test_fastapi_validation_detail_becomes_a_readable_message(server, client):
    detail = [{"loc": ["body", "compute", "instanceType"], "msg": "Field required", "type": "missing"}]
    server.script("POST", "/v2/endpoint/alice", Reply(422, {"detail": detail}))
    with pytest.raises(lorafleet.ValidationError, match=r"compute\.instanceType: Field required"):
        lorafleet.create_inference_endpoint(
            "ep", repository="r", framework="pytorch", accelerator="cpu", instance_size="x1",
            instance_type="cpu", region="local", vendor="local", namespace="alice", client=client,
        )  # fmt: skip


def test_html_error_pages_are_not_used_as_the_message(server, client):
    page = "<html><body>Bad gateway</body></html>"
    server.script("GET", EP, Reply(502, page, {"content-type": "text/html"}))
    with pytest.raises(lorafleet.LorafleetError, match=r"Bad Gateway for GET http://127\.0\.0\.1:\d+/v2/endpoint"):
        lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)


def test_plain_text_error_bodies_are_the_message(server, client):
    server.script("DELETE", EP, Reply(409, "endpoint is being deleted"))
    with pytest.raises(lorafleet.Conflict, match="endpoint is being deleted"):
        lorafleet.delete_inference_endpoint("ep", namespace="alice", client=client)


def test_idempotent_calls_are_retried_after_a_dropped_connection(server, client):
    server.script("GET", EP, Reply(drop=True), Reply(drop=True), Reply(200, endpoint_json()))
    endpoint = lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)
    assert endpoint.name == "ep"
    assert [r.method for r in server.requests] == ["GET", "GET", "GET"]


def test_idempotent_calls_give_up_after_max_attempts_with_a_network_error(server, client):
    server.script("PUT", EP, Reply(drop=True))
    with pytest.raises(lorafleet.NetworkError, match="after 3 attempts"):
        lorafleet.update_inference_endpoint("ep", min_replica=0, namespace="alice", client=client)
    assert len(server.requests) == 3


def test_non_idempotent_calls_are_never_sent_twice(server, client):
    server.script("POST", f"{EP}/pause", Reply(drop=True), Reply(200, endpoint_json(state="paused")))
    with pytest.raises(lorafleet.NetworkError):
        lorafleet.pause_inference_endpoint("ep", namespace="alice", client=client)
    assert len(server.requests) == 1


def test_unreachable_server_raises_a_network_error_naming_the_url():
    with Client("http://127.0.0.1:9", retry=RetryPolicy(max_attempts=2, backoff=0.0)) as client:
        with pytest.raises(lorafleet.NetworkError, match=r"127\.0\.0\.1:9.*LORAFLEET_URL"):
            lorafleet.list_inference_endpoints("alice", client=client)


def test_requests_carry_the_bearer_token_and_user_agent(server, client):
    server.script("GET", "/v2/endpoint/alice", Reply(200, {"items": [endpoint_json()]}))
    lorafleet.list_inference_endpoints("alice", client=client)
    lorafleet.list_inference_endpoints("alice", token="other", client=client)
    lorafleet.list_inference_endpoints("alice", token=False, client=client)
    auths = [r.headers.get("authorization") for r in server.requests]
    assert auths == ["Bearer tok", "Bearer other", None]
    assert server.requests[0].headers["user-agent"].startswith("lorafleet/")


def test_action_posts_send_no_body(server, client):
    server.script("POST", f"{EP}/scale-to-zero", Reply(200, endpoint_json(state="scaledToZero")))
    assert lorafleet.scale_to_zero_inference_endpoint("ep", namespace="alice", client=client).status == (
        "scaledToZero"
    )
    assert server.requests[0].body == b""
    assert "content-type" not in server.requests[0].headers


def test_malformed_endpoint_description_raises_a_clear_error(server, client):
    broken = endpoint_json()
    del broken["status"]["state"]
    server.script("GET", EP, Reply(200, broken))
    with pytest.raises(lorafleet.LorafleetError, match="Unexpected endpoint description.*state"):
        lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)


def test_whoami_that_is_not_a_user_asks_for_an_explicit_namespace(server, client):
    server.script("GET", "/api/whoami-v2", Reply(200, {"type": "org", "name": "acme"}))
    with pytest.raises(ValueError, match="namespace"):
        lorafleet.list_inference_endpoints(client=client)


def test_whoami_is_asked_once_per_token(server, client):
    server.script("GET", "/api/whoami-v2", Reply(200, {"type": "user", "name": "alice"}))
    server.script("GET", EP, Reply(200, endpoint_json()))
    for _ in range(3):
        lorafleet.get_inference_endpoint("ep", client=client)
    assert [r.path for r in server.requests].count("/api/whoami-v2") == 1


def test_create_sends_huggingface_hub_shaped_body(server, client):
    server.script("POST", "/v2/endpoint/alice", Reply(200, endpoint_json()))
    lorafleet.create_inference_endpoint(
        "ep", repository="/models/m", framework="pytorch", accelerator="cpu", instance_size="x1",
        instance_type="cpu", region="local", vendor="local", task="text-generation",
        custom_image={"health_route": "/health", "url": "tgi", "env": {"MODEL_ID": "/repository"}},
        env={"LORA_ADAPTERS": "a=/x"}, tags=["dev"], namespace="alice", client=client,
    )  # fmt: skip
    body = json.loads(server.requests[0].body)
    assert body["model"]["image"] == {"custom": {"health_route": "/health", "url": "tgi",
                                                 "env": {"MODEL_ID": "/repository"}}}  # fmt: skip
    assert body["model"]["env"] == {"LORA_ADAPTERS": "a=/x"}
    assert body["compute"]["scaling"] == {"maxReplica": 1, "minReplica": 1, "scaleToZeroTimeout": None}
    assert body["type"] == "protected" and body["tags"] == ["dev"] and "route" not in body


def test_update_sends_only_the_given_fields(server, client):
    server.script("PUT", EP, Reply(200, endpoint_json(state="updating")))
    lorafleet.update_inference_endpoint(
        "ep", max_replica=3, env={"A": "b"}, domain="d", namespace="alice", client=client
    )
    assert json.loads(server.requests[0].body) == {
        "compute": {"scaling": {"maxReplica": 3}}, "model": {"env": {"A": "b"}}, "route": {"domain": "d"}
    }  # fmt: skip


def test_update_without_fields_is_refused_before_any_request(server, client):
    with pytest.raises(ValueError, match="at least one field"):
        lorafleet.update_inference_endpoint("ep", namespace="alice", client=client)
    assert server.requests == []


def test_names_with_a_slash_are_refused(client):
    with pytest.raises(ValueError, match="without '/'"):
        lorafleet.get_inference_endpoint("a/b", namespace="alice", client=client)


def test_resume_of_a_running_endpoint_returns_it_when_running_ok(server, client):
    server.script("POST", f"{EP}/resume", Reply(400, {"error": "Endpoint is already running"}))
    server.script("GET", EP, Reply(200, endpoint_json(state="running", url="http://127.0.0.1:1")))
    assert lorafleet.resume_inference_endpoint("ep", namespace="alice", client=client).status == "running"
    with pytest.raises(lorafleet.ValidationError, match="already running"):
        lorafleet.resume_inference_endpoint("ep", namespace="alice", running_ok=False, client=client)


def test_timestamps_keep_microseconds_and_utc(server, client):
    server.script("GET", EP, Reply(200, endpoint_json()))
    endpoint = lorafleet.get_inference_endpoint("ep", namespace="alice", client=client)
    assert endpoint.created_at.microsecond == 263078 and endpoint.created_at.utcoffset().total_seconds() == 0
    assert endpoint.updated_at.microsecond == 500000


def test_a_given_httpx_client_is_used_and_left_open(server):
    http = httpx.Client(headers={"x-custom": "1"})
    server.script("GET", "/v2/endpoint/alice", Reply(200, {"items": []}))
    with Client(server.url, http_client=http) as client:
        assert lorafleet.list_inference_endpoints("alice", client=client) == []
    assert server.requests[0].headers["x-custom"] == "1"
    assert not http.is_closed
    http.close()
