"""Fuzz the API with schemathesis against our own OpenAPI document: no input may cause a 5xx."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.controlplane.conftest import Server, endpoint_body, make_settings, serve_app


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path):  # type: ignore[no-untyped-def]
    import shutil

    tmp = tmp_path_factory.mktemp("fuzz")
    shutil.copy(sqlite_template, tmp / "cp.db")
    settings_ = make_settings(tmp, f"sqlite:///{tmp / 'cp.db'}", reconciler_enabled=False)
    for url, app in serve_app(settings_):
        server = Server(url, app, settings_, "", "alice")
        server.token = server.new_token("alice")
        httpx.post(
            f"{url}/v2/endpoint/alice", json=endpoint_body(), headers=server.headers
        ).raise_for_status()
        yield server


@pytest.mark.slow
def test_no_request_makes_the_server_fail(fuzz_server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    failures = []
    for operation in schema.get_all_operations():
        op = operation.ok()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case) -> None:  # type: ignore[no-untyped-def]
            if "namespace" in (case.path_parameters or {}):
                case.path_parameters["namespace"] = "alice"  # reach past the 404 of other namespaces
            response = case.call(base_url=fuzz_server.url, headers=fuzz_server.headers)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
                )
            assert response.status_code < 500

        try:
            check()
        except AssertionError:
            pass
    assert failures == []
