"""The reconciler driving real replica processes (the fake runtime: a tiny HTTP server)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.controlplane.conftest import Server, endpoint_body, make_settings, serve_app


@pytest.fixture
def cp(tmp_path: Path, database_url: str) -> Iterator[Server]:
    """API + reconciler in-process; replicas are real child processes of the fake runtime."""
    settings = make_settings(tmp_path, database_url, max_restarts=2)
    for url, app in serve_app(settings):
        server = Server(url, app, settings, "", "alice")
        server.token = server.new_token("alice")
        yield server
        launcher = app.state.launcher  # type: ignore[attr-defined]
        for handle in launcher.adopt():
            launcher.stop(handle)


def wait_for(check: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def state_of(client: httpx.Client, name: str = "ep-one") -> dict[str, Any]:
    return client.get(f"/v2/endpoint/alice/{name}").json()


def running(client: httpx.Client, name: str = "ep-one") -> dict[str, Any] | None:
    raw = state_of(client, name)
    return raw if raw["status"]["state"] == "running" else None


def test_endpoint_goes_pending_initializing_running_with_the_replica_url(cp: Server, tmp_path: Path) -> None:
    dump = tmp_path / "env.json"
    body = endpoint_body(
        env={
            "FAKE_LOAD_S": "1.5",
            "FAKE_ENV_DUMP": str(dump),
            "MODEL_ID": "/repository",
            "LORA_ADAPTERS": "a=/x,b=/y",
        },
        secrets={"HF_TOKEN": "hf_secret"},
    )
    with cp.client() as client:
        client.post("/v2/endpoint/alice", json=body).raise_for_status()
        seen = set()
        raw = wait_for(
            lambda: seen.add(state_of(client)["status"]["state"]) or running(client), what="running"
        )
    assert "initializing" in seen
    url = raw["status"]["url"]
    assert httpx.get(url + raw["healthRoute"]).status_code == 200
    env = json.loads(dump.read_text())
    assert env["MODEL_ID"] == "org/base-model" and env["LORA_ADAPTERS"] == "a=/x,b=/y"
    assert env["HF_TOKEN"] == "hf_secret" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert raw["status"]["readyReplica"] == 1 and raw["status"]["targetReplica"] == 1


def test_pause_stops_the_replica_and_resume_starts_a_new_one(cp: Server) -> None:
    with cp.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
        first = wait_for(lambda: running(client), what="running")["status"]["url"]
        port = int(first.rsplit(":", 1)[1])
        client.post("/v2/endpoint/alice/ep-one/pause").raise_for_status()
        wait_for(lambda: not _listening(port), what="replica stopped")
        assert state_of(client)["status"]["state"] == "paused"
        client.post("/v2/endpoint/alice/ep-one/resume").raise_for_status()
        second = wait_for(lambda: running(client), what="running again")["status"]["url"]
    assert second != first


def test_crashed_replica_is_restarted(cp: Server) -> None:
    with cp.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
        url = wait_for(lambda: running(client), what="running")["status"]["url"]
        pid = next(c.pid for c in psutil.Process().children() if _serves(c, url))
        os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: (r := running(client)) and r["status"]["url"] != url and r, what="restart")
        kinds = [e["kind"] for e in client.get("/v2/endpoint/alice/ep-one/events").json()["items"]]
    assert httpx.get(new["status"]["url"] + "/health").status_code == 200
    assert "replica-failed" in kinds


def test_repeated_failure_marks_failed_with_the_last_log_lines(cp: Server) -> None:
    with cp.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body(env={"FAKE_FAIL_START": "1"})).raise_for_status()
        raw = wait_for(lambda: (r := state_of(client))["status"]["state"] == "failed" and r, what="failed")
        logs = client.get("/v2/endpoint/alice/ep-one/logs").json()
    assert "cannot load weights from /nowhere" in raw["status"]["message"]
    assert "url" not in raw["status"]
    assert logs["replicas"] == []  # failed replicas are gone; their lines live on in the message


def test_update_replaces_replicas_and_delete_stops_them(cp: Server) -> None:
    with cp.client() as client:
        client.post("/v2/endpoint/alice", json=endpoint_body()).raise_for_status()
        url = wait_for(lambda: running(client), what="running")["status"]["url"]
        client.put(
            "/v2/endpoint/alice/ep-one", json={"model": {"env": {"LORA_ADAPTERS": "c=/z"}}}
        ).raise_for_status()
        new = wait_for(lambda: (r := running(client)) and r["status"]["url"] != url and r, what="new replica")
        wait_for(lambda: not _listening(int(url.rsplit(":", 1)[1])), what="old replica stopped")
        client.delete("/v2/endpoint/alice/ep-one").raise_for_status()
        wait_for(lambda: not _listening(int(new["status"]["url"].rsplit(":", 1)[1])), what="replica stopped")


def test_logs_return_the_replicas_recent_lines(cp: Server) -> None:
    with cp.client() as client:
        client.post(
            "/v2/endpoint/alice", json=endpoint_body(env={"LORA_ADAPTERS": "x=/y"})
        ).raise_for_status()
        wait_for(lambda: running(client), what="running")
        logs = client.get("/v2/endpoint/alice/ep-one/logs?tail=50").json()
    assert len(logs["replicas"]) == 1
    assert any("adapters=x=/y" in line for line in logs["lines"])


def test_autoscaling_follows_the_queue_gauge(cp: Server, tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    queue.write_text("0")
    body = endpoint_body(env={"FAKE_QUEUE_FILE": str(queue)})
    body["compute"]["scaling"] = {"minReplica": 1, "maxReplica": 2, "measure": {"pendingRequests": 2}}  # type: ignore[index]
    with cp.client() as client:
        client.post("/v2/endpoint/alice", json=body).raise_for_status()
        wait_for(lambda: running(client), what="running")
        queue.write_text("5")
        wait_for(lambda: state_of(client)["status"]["readyReplica"] == 2, what="scale up")


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5)
        return True
    except httpx.HTTPError:
        return False


def _serves(process: psutil.Process, url: str) -> bool:
    try:
        return any(str(c.laddr.port) == url.rsplit(":", 1)[1] for c in process.net_connections())
    except psutil.Error:
        return False
