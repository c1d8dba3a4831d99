"""Every 5xx carries a JSON body (an unexpected error, a busy SQLite database), and endpoint ids
are never reused, so nothing kept by id (the reconciler's backoff) passes to a later endpoint."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lorafleet.controlplane.models import Endpoint
from sqlalchemy import select, update

from tests.controlplane.conftest import Server, endpoint_body, make_settings, serve_app


def test_an_unexpected_error_answers_json_500_with_a_reference_and_no_details(api: Server) -> None:
    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
        with api.database.session() as session:  # a row no code path could write: a broken spec
            session.execute(update(Endpoint).values(spec={"model": None}))
        response = client.get("/v2/endpoint/alice/ep-one")
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error_type"] == "internal" and body["reference"] in body["error"]
    assert "Traceback" not in response.text and "TypeError" not in response.text


@pytest.fixture
def sqlite_api(tmp_path: Path, sqlite_template: Path) -> Iterator[Server]:
    path = tmp_path / "controlplane.db"
    shutil.copy(sqlite_template, path)
    settings = make_settings(tmp_path, f"sqlite:///{path}", reconciler_enabled=False,
                             sqlite_busy_timeout_s=0.3)
    for url, app in serve_app(settings):
        server = Server(url, app, settings, "", "alice")
        server.token = server.new_token("alice")
        yield server


def test_a_locked_sqlite_database_answers_503_json_with_retry_after(sqlite_api: Server) -> None:
    path = sqlite_api.settings.resolved_database_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None, timeout=5)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's single write lock
    try:
        started = time.monotonic()
        with sqlite_api.client() as client:
            response = client.post("/v2/endpoint/alice", json=endpoint_body())
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
    assert response.json()["error_type"] == "database_busy" and "retry" in response.json()["error"]
    assert waited < 30
    with sqlite_api.client() as client:  # and once the lock is gone, the same request works
        assert client.post("/v2/endpoint/alice", json=endpoint_body()).status_code == 200


def test_endpoint_ids_are_never_reused(api: Server) -> None:
    def current_id() -> int:
        with api.database.session() as session:
            return session.scalars(select(Endpoint.id)).one()

    with api.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
        first = current_id()
        client.delete("/v2/endpoint/alice/ep-one").raise_for_status()
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
    assert current_id() > first
