"""Replica authentication with the REAL runtime (issue 12): the control plane gives each replica its
own random key (`API_KEY`), and the replica answers every route but `/health` only to a bearer of
that key, with a 401 JSON otherwise; the control plane's own probes and Try it keep working.

Needs the runtime side of issue 12 (the runtime reading `--api-key`/`API_KEY`): until it lands
the replica serves without a key and these tests fail, by design. The rest of the control plane's
use of the key is tested without it (test_isolation.py, against a replica speaking the contract).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.controlplane.dashboard.conftest import signed_in_client
from tests.controlplane.live import LiveControlPlane
from tests.controlplane.replicas import ADAPTER_ID, api_key_of, endpoint, real_body, real_controlplane

pytestmark = pytest.mark.slow

ROUTES = [
    ("GET", "/info", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/models", None),
    ("POST", "/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 2, "adapter_id": ADAPTER_ID}}),
    ("POST", "/tokenize", {"inputs": "Hello"}),
]


@pytest.fixture(scope="module")
def cp() -> Iterator[LiveControlPlane]:
    with real_controlplane() as live:
        yield live


def test_replica_answers_only_the_bearer_of_its_own_key(cp: LiveControlPlane) -> None:
    with endpoint(cp, real_body("ep-auth")) as ep:
        ep.wait_running()
        (url,) = ep.replica_urls().values()
        key = api_key_of(cp, url)
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # probes need no key
        wrong = ({}, {"Authorization": f"Bearer {cp.token}"}, {"Authorization": "Bearer " + "x" * 43})
        for method, route, body in ROUTES:
            for headers in wrong:
                refused = httpx.request(method, f"{url}{route}", json=body, headers=headers, timeout=60)
                assert refused.status_code == 401, (route, headers, refused.text)
                assert refused.json()["error_type"] == "unauthorized" and refused.json()["error"]
            served = httpx.request(method, f"{url}{route}", json=body, timeout=60,
                                   headers={"Authorization": f"Bearer {key}"})
            assert served.status_code == 200, (route, served.text)


def test_control_plane_probes_and_try_it_reach_an_authenticating_replica(cp: LiveControlPlane) -> None:
    body = real_body("ep-auth-managed")
    body["compute"]["scaling"] = {"minReplica": 1, "maxReplica": 2}  # type: ignore[index]  # probes /metrics
    with endpoint(cp, body) as ep:
        url = ep.wait_running()["status"]["url"]
        for replica_url in ep.replica_urls().values():
            assert httpx.get(f"{replica_url}/metrics", timeout=30).status_code == 401
        client, csrf = signed_in_client(cp)
        try:
            tried = client.post(f"/dashboard/endpoints/{ep.name}/try", headers={"accept": "application/json"},
                                data={"csrf_token": csrf, "prompt": "Hello", "adapter_id": ADAPTER_ID})
        finally:
            client.close()
        assert tried.status_code == 200 and isinstance(tried.json()["generated_text"], str), tried.text
        assert ep.generate(url)  # through the gateway, which sends the replica's key
