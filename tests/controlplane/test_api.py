"""The REST API over real HTTP, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import re
import threading

from lorafleet.controlplane.models import Endpoint
from sqlalchemy import select

from tests.controlplane.conftest import Server, endpoint_body

WIRE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_create_returns_every_key_huggingface_hub_requires(api: Server) -> None:
    with api.client() as client:
        response = client.post("/v2/endpoint/alice", json=endpoint_body())
    assert response.status_code == 200, response.text
    raw = response.json()
    for key in ("name", "type", "healthRoute"):
        assert key in raw
    for key in ("repository", "framework", "revision", "task"):
        assert key in raw["model"]
    assert raw["status"]["state"] == "pending"
    assert WIRE_TIME.match(raw["status"]["createdAt"]) and WIRE_TIME.match(raw["status"]["updatedAt"])
    assert "url" not in raw["status"]
    assert raw["healthRoute"] == "/health"


def test_list_get_and_delete_round_trip(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body("ep-a")).raise_for_status()
        client.post("/v2/endpoint/alice", json=endpoint_body("ep-b")).raise_for_status()
        names = [e["name"] for e in client.get("/v2/endpoint/alice").json()["items"]]
        assert names == ["ep-a", "ep-b"]
        assert client.get("/v2/endpoint/alice/ep-b").json()["name"] == "ep-b"
        assert client.delete("/v2/endpoint/alice/ep-a").status_code == 200
        assert client.get("/v2/endpoint/alice/ep-a").status_code == 404
        # the name is free again at once
        assert client.post("/v2/endpoint/alice", json=endpoint_body("ep-a")).status_code == 200


def test_duplicate_name_is_409(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
        response = client.post("/v2/endpoint/alice", json=endpoint_body())
    assert response.status_code == 409
    assert "already exists" in response.json()["error"]


def test_validation_errors_name_the_field(api: Server) -> None:
    body = endpoint_body()
    del body["compute"]["instanceType"]  # type: ignore[attr-defined]
    bad_name = endpoint_body("Not_Valid!")
    with api.client() as client:
        missing = client.post("/v2/endpoint/alice", json=body)
        invalid = client.post("/v2/endpoint/alice", json=bad_name)
        not_json = client.post(
            "/v2/endpoint/alice", content=b"{nope", headers={"content-type": "application/json"}
        )
    assert missing.status_code == 422 and "compute.instanceType" in missing.json()["error"]
    assert invalid.status_code == 422 and "name" in invalid.json()["error"]
    assert not_json.status_code == 422 and "error" in not_json.json()


def test_min_replica_above_max_is_rejected(api: Server) -> None:
    body = endpoint_body()
    body["compute"]["scaling"] = {"minReplica": 3, "maxReplica": 2}  # type: ignore[index]
    with api.client() as client:
        response = client.post("/v2/endpoint/alice", json=body)
    assert response.status_code == 422
    assert "minReplica" in response.json()["error"]


def test_unknown_hardware_is_400_listing_what_exists(api: Server) -> None:
    cases = [
        ({"provider": {"vendor": "gcp", "region": "x"}}, "vendor", "aws"),
        ({"provider": {"vendor": "aws", "region": "eu-west-9"}}, "region", "us-east-1"),
        (
            {"compute": {"accelerator": "gpu", "instanceType": "nvidia-b300", "instanceSize": "x1"}},
            "instance type",
            "nvidia-l4",
        ),
        (
            {"compute": {"accelerator": "gpu", "instanceType": "nvidia-l4", "instanceSize": "x8"}},
            "instance size",
            "x1",
        ),
    ]
    with api.client() as client:
        for override, word, listed in cases:
            response = client.post("/v2/endpoint/alice", json={**endpoint_body(), **override})
            assert response.status_code == 400, response.text
            assert word in response.json()["error"] and listed in response.json()["available"]


def test_missing_or_invalid_token_is_401_json(api: Server) -> None:
    with api.client(token="lf_not-a-real-token") as client:
        invalid = client.get("/v2/endpoint/alice")
    import httpx

    missing = httpx.get(f"{api.url}/v2/endpoint/alice")
    assert invalid.status_code == 401 and "invalid" in invalid.json()["error"]
    assert missing.status_code == 401 and "missing bearer token" in missing.json()["error"]
    assert httpx.get(f"{api.url}/health").status_code == 200


def test_one_namespace_cannot_read_update_or_delete_anothers_endpoints(api: Server) -> None:
    bob = api.new_token("bob")
    with api.client() as alice_client, api.client(token=bob) as bob_client:
        alice_client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
        assert bob_client.get("/v2/endpoint/alice").status_code == 404
        assert bob_client.get("/v2/endpoint/alice/ep-one").status_code == 404
        assert bob_client.put("/v2/endpoint/alice/ep-one", json={"tags": ["x"]}).status_code == 404
        assert bob_client.delete("/v2/endpoint/alice/ep-one").status_code == 404
        assert bob_client.post("/v2/endpoint/alice/ep-one/pause").status_code == 404
        assert bob_client.post("/v2/endpoint/alice", json=endpoint_body("mine")).status_code == 404
        assert bob_client.get("/v2/endpoint/bob").json() == {"items": []}
        assert bob_client.get("/v2/endpoint/bob/ep-one").status_code == 404
        assert alice_client.get("/v2/endpoint/alice/ep-one").json()["tags"] == []


def test_update_is_a_deep_partial_merge_and_null_means_unchanged(api: Server) -> None:
    body = endpoint_body(
        image={
            "custom": {
                "url": "ghcr.io/tgi:2",
                "health_route": "/ready",
                "env": {"LORA_ADAPTERS": "a,b", "MODEL_ID": "/repository"},
            }
        }
    )
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=body).raise_for_status()
        # huggingface_hub 0.24 sends whole sub-objects with nulls and an implicit default image
        response = client.put(
            "/v2/endpoint/alice/ep-one",
            json={
                "compute": {
                    "accelerator": None,
                    "instanceSize": None,
                    "instanceType": None,
                    "scaling": {"maxReplica": 3, "minReplica": None},
                },
                "model": {
                    "framework": None,
                    "repository": "org/other",
                    "revision": None,
                    "task": None,
                    "image": {"huggingface": {}},
                },
            },
        )
    assert response.status_code == 200, response.text
    raw = response.json()
    assert raw["compute"]["scaling"] == {"minReplica": 1, "maxReplica": 3, "scaleToZeroTimeout": None}
    assert raw["compute"]["instanceType"] == "intel-icl"
    assert raw["model"]["repository"] == "org/other"
    assert raw["model"]["image"] == {"custom": {"url": "ghcr.io/tgi:2"}}
    assert raw["model"]["env"] == {"LORA_ADAPTERS": "a,b", "MODEL_ID": "/repository"}
    assert raw["healthRoute"] == "/ready"
    assert raw["revision"] == 2


def test_update_with_a_stale_if_match_is_409(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
        assert (
            client.put(
                "/v2/endpoint/alice/ep-one", json={"tags": ["a"]}, headers={"if-match": "1"}
            ).status_code
            == 200
        )
        stale = client.put("/v2/endpoint/alice/ep-one", json={"tags": ["b"]}, headers={"if-match": "1"})
    assert stale.status_code == 409 and stale.json()["revision"] == 2


def test_concurrent_updates_are_never_lost_silently(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
    results: dict[str, int] = {}

    def update(key: str, value: str) -> None:
        with api.client() as client:
            response = client.put(
                "/v2/endpoint/alice/ep-one", json={"model": {"env": {key: value}}, "tags": [key]}
            )
            results[key] = response.status_code

    names = ["MAX_INPUT_LENGTH", "MAX_TOTAL_TOKENS", "DTYPE", "BLOCK_SIZE", "NUM_KV_BLOCKS", "LOG_LEVEL"]
    threads = [threading.Thread(target=update, args=(name, str(i))) for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(results.values()) <= {200, 409}
    with api.client() as client:
        final = client.get("/v2/endpoint/alice/ep-one").json()
    applied = [k for k, code in results.items() if code == 200]
    # every acknowledged update bumped the revision exactly once; the last one is what we see
    assert final["revision"] == 1 + len(applied)
    assert final["tags"][0] in applied and list(final["model"]["env"]) == final["tags"]


def test_secrets_are_encrypted_at_rest_and_never_returned(api: Server) -> None:
    with api.client() as client:
        created = client.post("/v2/endpoint/alice", json=endpoint_body(secrets={"HF_TOKEN": "hf_sekrit"}))
        listed = client.get("/v2/endpoint/alice")
        updated = client.put(
            "/v2/endpoint/alice/ep-one", json={"model": {"secrets": {"HF_TOKEN": "hf_other"}}}
        )
    for response in (created, listed, updated):
        assert (
            response.status_code == 200 and "sekrit" not in response.text and "hf_other" not in response.text
        )
    with api.database.session() as session:
        row = session.scalar(select(Endpoint))
        assert row is not None and row.secrets_encrypted and "hf_other" not in row.secrets_encrypted
        assert "sekrit" not in str(row.spec)
        box = api.app.state.endpoint_service.secret_box  # type: ignore[attr-defined]
        assert box.open(row.secrets_encrypted) == {"HF_TOKEN": "hf_other"}


def test_pause_resume_and_scale_to_zero_answer_at_once(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
        paused = client.post("/v2/endpoint/alice/ep-one/pause").json()
        assert paused["status"]["state"] == "paused" and "url" not in paused["status"]
        resumed = client.post("/v2/endpoint/alice/ep-one/resume").json()
        assert resumed["status"]["state"] == "pending"
        zero = client.post("/v2/endpoint/alice/ep-one/scale-to-zero").json()
        assert zero["status"]["state"] == "scaledToZero"
        kinds = [e["kind"] for e in client.get("/v2/endpoint/alice/ep-one/events").json()["items"]]
    assert kinds == ["created", "paused", "resumed", "scaled-to-zero"]


def test_resume_of_a_running_endpoint_says_already_running(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
    with api.database.session() as session:
        row = session.scalar(select(Endpoint))
        assert row is not None
        row.state = "running"
    with api.client() as client:
        response = client.post("/v2/endpoint/alice/ep-one/resume")
    assert response.status_code == 400 and "already running" in response.text


def test_reserved_env_is_rejected(api: Server) -> None:
    with api.client() as client:
        response = client.post("/v2/endpoint/alice", json=endpoint_body(env={"PORT": "80"}))
    assert response.status_code == 400 and "PORT" in response.json()["error"]


def test_provider_and_whoami_follow_the_hf_shapes(api: Server) -> None:
    with api.client() as client:
        provider = client.get("/v2/provider").json()
        also = client.get("/v2/provider/alice").json()
        me = client.get("/api/whoami-v2").json()
    assert provider == also
    aws = next(v for v in provider["vendors"] if v["name"] == "aws")
    compute = aws["regions"][0]["computes"][0]
    assert {"id", "accelerator", "instanceType", "instanceSize", "quota"} <= set(compute)
    assert me == {**me, "type": "user", "name": "alice"}


def test_logs_of_an_endpoint_without_replicas_are_empty(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
        logs = client.get("/v2/endpoint/alice/ep-one/logs").json()
        bad_tail = client.get("/v2/endpoint/alice/ep-one/logs?tail=0")
    assert logs == {"replicas": [], "lines": []}
    assert bad_tail.status_code == 422 and "tail" in bad_tail.json()["error"]
