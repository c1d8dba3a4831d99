"""Per-namespace quotas (issue 12): a tenant asking for more endpoints, replicas or accelerators
than the operator allows is refused with a 403 naming the limit, at create, update and resume;
the reconciler never starts replicas past them when autoscaling; other namespaces are unaffected."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lorafleet.controlplane.catalog.loader import load_catalog
from lorafleet.controlplane.catalog.service import Hardware
from lorafleet.controlplane.db import Database
from lorafleet.controlplane.launchers.process import ProcessLauncher
from lorafleet.controlplane.models import Replica
from lorafleet.controlplane.reconciler import Reconciler
from lorafleet.controlplane.secretbox import SecretBox
from sqlalchemy import select

from tests.controlplane.conftest import Server, endpoint_body, make_settings, serve_app

LIMITS = {"quota_endpoints": 2, "quota_replicas": 3, "quota_accelerators": 2}
SLEEPER = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(300)'"


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Server]:
    settings = make_settings(tmp_path, database_url, reconciler_enabled=False, runtime_command=SLEEPER,
                             **LIMITS)
    for url, app in serve_app(settings):
        server = Server(url, app, settings, "", "alice")
        server.token = server.new_token("alice")
        yield server


def _body(name: str, low: int = 1, high: int = 1, **compute: str) -> dict[str, Any]:
    body = endpoint_body(name)
    body["compute"].update(compute)  # type: ignore[attr-defined]
    body["compute"]["scaling"] = {"minReplica": low, "maxReplica": high}  # type: ignore[index]
    return body


def _post(server: Server, body: dict[str, Any], token: str | None = None) -> tuple[int, dict[str, Any]]:
    with server.client(token) as client:
        response = client.post(f"/v2/endpoint/{body.pop('namespace', 'alice')}", json=body)
    return response.status_code, response.json()


def test_endpoints_past_the_quota_are_refused_and_other_namespaces_unaffected(api: Server) -> None:
    assert _post(api, _body("ep-1"))[0] == 200 and _post(api, _body("ep-2"))[0] == 200
    status, error = _post(api, _body("ep-3"))
    assert status == 403 and (error["limit"], error["max"], error["requested"]) == ("endpoints", 2, 3)
    assert error["setting"] == "LORAFLEET_QUOTA_ENDPOINTS" and "quota exceeded" in error["error"]
    bob = api.new_token("bob")
    assert _post(api, {**_body("ep-3"), "namespace": "bob"}, bob)[0] == 200


def test_an_endpoint_asking_for_more_replicas_than_the_namespace_may_run(api: Server) -> None:
    status, error = _post(api, _body("ep-big", 1, 4))
    assert status == 403 and error["limit"] == "replicas" and error["field"] == "compute.scaling.maxReplica"
    assert (error["max"], error["requested"]) == (3, 4)


def test_replicas_always_running_add_up_across_the_namespace(api: Server) -> None:
    assert _post(api, _body("ep-1", 2, 2))[0] == 200
    status, error = _post(api, _body("ep-2", 2, 2))
    assert status == 403 and error["limit"] == "replicas" and error["field"] == "compute.scaling.minReplica"
    assert _post(api, _body("ep-2", 1, 3))[0] == 200  # autoscaling room is not reserved


def test_an_update_past_the_quota_is_refused_and_changes_nothing(api: Server) -> None:
    assert _post(api, _body("ep-1", 1, 1))[0] == 200 and _post(api, _body("ep-2", 1, 1))[0] == 200
    with api.client() as client:
        refused = client.put("/v2/endpoint/alice/ep-2", json={"compute": {"scaling": {"minReplica": 3,
                                                                                       "maxReplica": 3}}})
        after = client.get("/v2/endpoint/alice/ep-2").json()
    assert refused.status_code == 403 and refused.json()["limit"] == "replicas"
    assert after["revision"] == 1 and after["compute"]["scaling"]["minReplica"] == 1


def test_a_paused_endpoint_frees_its_replicas_until_it_is_resumed(api: Server) -> None:
    assert _post(api, _body("ep-1", 2, 2))[0] == 200
    with api.client() as client:
        assert client.post("/v2/endpoint/alice/ep-1/pause").status_code == 200
        assert _post(api, _body("ep-2", 2, 2))[0] == 200
        resumed = client.post("/v2/endpoint/alice/ep-1/resume")
        state = client.get("/v2/endpoint/alice/ep-1").json()["status"]["state"]
    assert resumed.status_code == 403 and resumed.json()["limit"] == "replicas" and state == "paused"


def test_accelerators_are_counted_per_replica(api: Server) -> None:
    gpu = {"accelerator": "gpu", "instanceType": "nvidia-l4", "instanceSize": "x1"}  # 1 accelerator
    status, error = _post(api, _body("ep-gpu", 1, 3, **gpu))
    assert status == 403 and (error["limit"], error["max"], error["requested"]) == ("accelerators", 2, 3)
    assert _post(api, _body("ep-gpu", 1, 2, **gpu))[0] == 200


def test_the_reconciler_starts_no_replica_past_the_quota(
    api: Server, tmp_path: Path, database_url: str
) -> None:
    """An operator lowered the quota below what an endpoint was accepted with: the endpoint keeps
    running what fits and says why it runs no more."""
    assert _post(api, _body("ep-1", 2, 2))[0] == 200
    limits = {**LIMITS, "quota_replicas": 1}
    lowered = make_settings(tmp_path, database_url, runtime_command=SLEEPER, **limits)
    launcher = ProcessLauncher.from_settings(lowered)
    database = Database(database_url)
    reconciler = Reconciler(lowered, database, launcher, Hardware(load_catalog(lowered.catalog), launcher),
                            SecretBox("test-secret-key"))
    try:
        for _ in range(2):
            report = reconciler.tick()
            assert report is not None and not report.errors, report
        with database.session() as session:
            handles = [r.handle for r in session.scalars(select(Replica))]
        with api.client() as client:
            status = client.get("/v2/endpoint/alice/ep-1").json()["status"]
    finally:
        reconciler.close()
        database.dispose()
        for handle in launcher.adopt():
            launcher.stop(handle)
    assert len(handles) == 1 and status["targetReplica"] == 1
    assert "LORAFLEET_QUOTA_REPLICAS" in status["message"], status
