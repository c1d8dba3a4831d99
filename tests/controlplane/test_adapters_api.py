"""The live adapter set's REST API (`/v2/endpoint/{ns}/{name}/adapters`) over real HTTP, on SQLite
and (when configured) PostgreSQL: seeding from the HF payload, add/replace/remove, and every field
abused. Convergence on real replicas: test_adapters_live.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from lorafleet.adapter_digest import adapter_digest

from tests.controlplane.conftest import Server, endpoint_body, make_settings, serve_app
from tests.fixtures import fixtures_dir

BASE = "/v2/endpoint/alice/ep"


def write_adapter(folder: Path, weights: bytes = b"w1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    root.mkdir()
    return root


@pytest.fixture
def api(tmp_path: Path, database_url: str, roots: Path) -> Iterator[Server]:
    settings = make_settings(
        tmp_path,
        database_url,
        reconciler_enabled=False,
        quota_adapters=3,
        local_roots=os.pathsep.join([str(fixtures_dir()), str(roots)]),
    )
    for url, app in serve_app(settings):
        server = Server(url, app, settings, "", "alice")
        server.token = server.new_token("alice")
        yield server


def items(client, path: str = BASE) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    response = client.get(f"{path}/adapters")
    assert response.status_code == 200, response.text
    return {item["name"]: item for item in response.json()["items"]}


def test_the_seed_payloads_lora_adapters_become_the_first_items(api: Server, roots: Path) -> None:
    support = write_adapter(roots / "support")
    env = {"LORA_ADAPTERS": f"support={support},org/coder@v2,plain-id"}
    with api.client() as client:
        client.post("/v2/endpoint/alice", json={**endpoint_body("ep", env=env)}).raise_for_status()
        found = items(client)
    assert set(found) == {"support", "org/coder", "plain-id"}
    assert found["support"]["source"] == str(support)
    assert found["support"]["digest"] == adapter_digest(support)
    assert (found["org/coder"]["source"], found["org/coder"]["revision"]) == ("org/coder", "v2")
    assert found["org/coder"]["digest"] is None  # a Hub source: the replicas report it
    assert found["plain-id"]["state"] == "pending" and found["plain-id"]["readyReplicas"] == 0
    assert set(found["support"]) >= {
        "name",
        "source",
        "revision",
        "digest",
        "readyReplicas",
        "targetReplicas",
        "state",
        "message",
    }


def test_lora_adapters_in_args_win_and_an_update_of_the_value_replaces_the_set(api: Server) -> None:
    body = endpoint_body("ep", env={"LORA_ADAPTERS": "org/env-one"}, args=["--lora-adapters", "org/arg-one"])
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=body).raise_for_status()
        assert set(items(client)) == {"org/arg-one"}
        update = {"model": {"args": ["--lora-adapters", "a=org/a,b=org/b"]}}
        client.put(BASE, json=update).raise_for_status()
        assert set(items(client)) == {"a", "b"}


def test_seed_names_follow_the_runtimes_rules(api: Server, roots: Path) -> None:
    folder = write_adapter(roots / "bare")
    with api.client() as client:
        for bad in ("-dash=org/x", "a..b=org/x", "a=org/x@" + "r" * 300):
            refused = client.post("/v2/endpoint/alice", json=endpoint_body("ep", env={"LORA_ADAPTERS": bad}))
            assert refused.status_code == 400, (bad, refused.text)
            assert refused.json()["field"] == "model.env.LORA_ADAPTERS"
            assert client.get(BASE).status_code == 404  # nothing half-created
        # A bare folder is its own name, as the runtime reads LORA_ADAPTERS.
        env = {"LORA_ADAPTERS": f"{folder},named={folder}"}
        client.post("/v2/endpoint/alice", json=endpoint_body("ep", env=env)).raise_for_status()
        found = items(client)
        assert set(found) == {str(folder), "named"}
        assert found[str(folder)]["digest"] == found["named"]["digest"] == adapter_digest(folder)


def test_add_replace_remove_without_touching_the_spec(api: Server, roots: Path) -> None:
    folder = write_adapter(roots / "one")
    with api.client() as client:
        created = client.post("/v2/endpoint/alice", json=endpoint_body("ep")).json()
        added = client.put(f"{BASE}/adapters/one", json={"source": str(folder)})
        assert added.status_code == 200, added.text
        first = added.json()["digest"]
        assert first == adapter_digest(folder)
        # The same PUT again changes nothing (no new version, no reload).
        again = client.put(f"{BASE}/adapters/one", json={"source": str(folder)}).json()
        assert again["digest"] == first and again["updatedAt"] == added.json()["updatedAt"]
        # New files under the same source: a new version with a new digest.
        write_adapter(folder, b"w2")
        replaced = client.put(f"{BASE}/adapters/one", json={"source": str(folder)}).json()
        assert replaced["digest"] == adapter_digest(folder) != first
        hub = client.put(f"{BASE}/adapters/org/two", json={"source": "org/two", "revision": "main"})
        assert hub.status_code == 200 and hub.json()["name"] == "org/two"
        assert set(items(client)) == {"one", "org/two"}
        assert client.delete(f"{BASE}/adapters/org/two").status_code == 200
        assert client.delete(f"{BASE}/adapters/org/two").status_code == 404
        assert set(items(client)) == {"one"}
        after = client.get(BASE).json()
        kinds = [e["kind"] for e in client.get(f"{BASE}/events").json()["items"]]
    # The adapter set is not the spec: no new revision, no rolling update.
    assert after["revision"] == created["revision"] and after["status"]["state"] == created["status"]["state"]
    assert kinds.count("adapter-set") == 3 and kinds.count("adapter-removed") == 1


def test_deleting_the_endpoint_deletes_its_adapters(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body("ep")).raise_for_status()
        client.put(f"{BASE}/adapters/x", json={"source": "org/x"}).raise_for_status()
        client.delete(BASE).raise_for_status()
        assert client.get(f"{BASE}/adapters").status_code == 404
        client.post("/v2/endpoint/alice", json=endpoint_body("ep")).raise_for_status()
        assert items(client) == {}


@pytest.mark.parametrize(
    "name",
    ["..", "a/../b", "-lead", ".hidden", "x" * 129, "with space", "semi;colon", "a=b", "a,b", "ü"],
)
def test_hostile_adapter_names_are_refused(api: Server, name: str) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body("ep")).raise_for_status()
        # Percent-encoded, so that `..` reaches the server (httpx would resolve the segments itself).
        encoded = quote(name, safe="").replace(".", "%2E")
        response = client.put(f"{BASE}/adapters/{encoded}", json={"source": "org/x"})
        assert response.status_code == 400, response.text
        assert items(client) == {}


def test_hostile_sources_and_revisions_are_refused(api: Server, roots: Path, tmp_path: Path) -> None:
    outside = write_adapter(tmp_path / "outside")
    (roots / "escape").symlink_to(outside)
    empty = roots / "empty"
    empty.mkdir()
    bad = [
        ({"source": "/etc"}, 400),
        ({"source": str(outside)}, 400),
        ({"source": f"{roots}/../outside"}, 400),
        ({"source": str(roots / "escape")}, 400),  # a symlink out of the roots
        ({"source": "relative/../../etc"}, 400),
        ({"source": "org/x,other=/etc"}, 400),  # would smuggle a second LORA_ADAPTERS entry
        ({"source": "org/x\n"}, 400),
        ({"source": str(empty)}, 400),  # not a PEFT adapter
        ({"source": "org/x", "revision": "../main"}, 400),
        ({"source": str(write_adapter(roots / "ok")), "revision": "main"}, 400),  # folders have no revisions
        ({"source": "o/" + "x" * 2000}, 422),
        ({"source": "org/x", "revision": "r" * 300}, 422),
        ({"source": ""}, 422),
        ({"source": "org/x", "extra": 1}, 422),
        ({}, 422),
    ]
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body("ep")).raise_for_status()
        for body, status in bad:
            response = client.put(f"{BASE}/adapters/a", json=body)
            assert response.status_code == status, (body, response.text)
            assert "/etc" not in response.json().get("error", "").replace(str(body.get("source")), "")
        assert items(client) == {}
        too_big = client.put(
            f"{BASE}/adapters/a",
            content=b'{"source": "' + b"x" * 3_000_000 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert too_big.status_code in (413, 422)


def test_adapters_per_endpoint_are_bounded(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body("ep")).raise_for_status()
        for name in ("a", "b", "c"):
            client.put(f"{BASE}/adapters/{name}", json={"source": f"org/{name}"}).raise_for_status()
        refused = client.put(f"{BASE}/adapters/d", json={"source": "org/d"})
        assert refused.status_code == 403 and "QUOTA_ADAPTERS" in refused.json()["error"]
        # Replacing one of the three is not a new adapter.
        assert client.put(f"{BASE}/adapters/a", json={"source": "org/a2"}).status_code == 200


def test_a_namespace_sees_and_changes_only_its_own_adapters(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body("ep")).raise_for_status()
        client.put(f"{BASE}/adapters/a", json={"source": "org/a"}).raise_for_status()
    with api.client(api.new_token("mallory")) as mallory:
        for path in (f"{BASE}/adapters", "/v2/endpoint/mallory/ep/adapters"):
            assert mallory.get(path).status_code == 404
        assert mallory.put(f"{BASE}/adapters/b", json={"source": "org/b"}).status_code == 404
        assert mallory.delete(f"{BASE}/adapters/a").status_code == 404
    with api.client("not-a-token") as anonymous:
        assert anonymous.get(f"{BASE}/adapters").status_code == 401
        assert anonymous.put(f"{BASE}/adapters/b", json={"source": "org/b"}).status_code == 401
    with api.client() as client:
        assert set(items(client)) == {"a"}
