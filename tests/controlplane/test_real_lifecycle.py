"""The reconciler driving REAL replicas: `python -m lorafleet.runtime` on the tiny Mistral fixture
with one adapter, launched by the process launcher of a live control plane (one per module and
database backend; every test makes its own endpoint and deletes it)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.controlplane.conftest import BACKENDS
from tests.controlplane.live import LiveControlPlane
from tests.controlplane.replicas import (
    ADAPTER_ID,
    api_key_of,
    endpoint,
    environ,
    gone,
    model_and_adapter,
    real_body,
    real_controlplane,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=BACKENDS)
def cp(request: pytest.FixtureRequest) -> Iterator[LiveControlPlane]:
    with real_controlplane(request.param) as live:
        yield live


def test_real_replica_starts_with_the_endpoint_env_and_answers_with_its_adapter(cp: LiveControlPlane) -> None:
    model_dir, adapter = model_and_adapter()
    body = real_body("ep-env")
    body["model"]["secrets"] = {"HF_TOKEN": "hf_secret_value"}  # type: ignore[index]
    with endpoint(cp, body) as ep:
        seen: set[str] = set()
        wait_for(lambda: seen.add(ep.state()) or ep.running(), 120, "running")
        raw = ep.wait_running()
        url = raw["status"]["url"]
        assert url == f"{cp.url}/endpoints/{cp.namespace}/ep-env"  # the gateway's URL, not a replica's
        assert "initializing" in seen
        assert raw["status"]["readyReplica"] == 1 and raw["status"]["targetReplica"] == 1
        ((replica_url),) = ep.replica_urls().values()
        replica_key = {"Authorization": f"Bearer {api_key_of(cp, replica_url)}"}
        info = httpx.get(f"{replica_url}/info", headers=replica_key).json()
        assert info["model_id"] == str(model_dir)  # MODEL_ID=/repository became the repository
        assert httpx.get(f"{url}/info", headers=cp.headers).json() == info  # the same through the gateway
        assert ep.generate(url)
        (pid,) = ep.pids().values()
        env = environ(pid)
        assert env["MODEL_ID"] == str(model_dir) and env["LORA_ADAPTERS"] == f"{ADAPTER_ID}={adapter}"
        assert env["HF_TOKEN"] == "hf_secret_value" and env["CUDA_VISIBLE_DEVICES"] == ""
        assert env["NUM_SHARD"] == "1"  # a CPU instance: one shard
        assert "hf_secret_value" not in str(ep.get())
        logs = httpx.get(f"{ep.path}/logs?tail=200", headers=cp.headers).json()
        assert len(logs["replicas"]) == 1
        assert any("model loaded and ready" in line for line in logs["lines"])
        # The secret reaches the replica's environment and nowhere else we can read.
        assert "hf_secret_value" not in str(logs) + str(ep.events())
        assert "hf_secret_value" not in cp.log_path.read_text(errors="replace")
        replica_logs = [p for p in cp.home.rglob("*.log") if p != cp.log_path]
        assert replica_logs
        assert all("hf_secret_value" not in p.read_text(errors="replace") for p in replica_logs)


def test_replica_killed_with_sigkill_is_restarted_and_serves_again(cp: LiveControlPlane) -> None:
    with endpoint(cp, real_body("ep-kill")) as ep:
        url = ep.wait_running()["status"]["url"]
        (pid,) = ep.pids().values()
        os.kill(pid, signal.SIGKILL)
        assert ep.wait_replaced({pid})["status"]["url"] == url  # the URL outlives the replica
        (new_pid,) = ep.pids().values()
        assert new_pid != pid and gone(pid)
        assert ep.generate(url)
        failures = [e["message"] for e in ep.events() if e["kind"] == "replica-failed"]
        assert len(failures) == 1 and "exited" in failures[0]


def test_pause_stops_the_replica_process_and_resume_serves_again(cp: LiveControlPlane) -> None:
    with endpoint(cp, real_body("ep-pause")) as ep:
        first = ep.wait_running()["status"]["url"]
        (pid,) = ep.pids().values()
        (replica_url,) = ep.replica_urls().values()
        paused = ep.post("pause")
        assert paused["status"]["state"] == "paused" and "url" not in paused["status"]
        # The process exits first (once drained); the reconciler forgets the replica right after.
        wait_for(lambda: gone(pid) and ep.pids() == {}, 60, "replica process stopped and forgotten")
        assert ep.state() == "paused"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{replica_url}/health", timeout=2)
        refused = httpx.post(f"{first}/generate", json={"inputs": "Hi"}, headers=cp.headers, timeout=30)
        assert refused.status_code == 503 and "paused" in refused.json()["error"]
        assert ep.post("resume")["status"]["state"] == "pending"
        assert ep.wait_running()["status"]["url"] == first  # the same URL after resume
        assert ep.generate(first)


def _broken_adapter(folder: Path) -> Path:
    _, adapter = model_and_adapter()
    broken = folder / "broken-adapter"
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(adapter, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    return broken


@pytest.mark.parametrize("case", ["bad-repository", "broken-adapter"])
def test_replica_that_cannot_start_ends_failed_with_its_last_log_lines(
    cp: LiveControlPlane, case: str
) -> None:
    if case == "bad-repository":  # under LOCAL_ROOTS, but not there
        missing = cp.local_models / "nonexistent-base-model"
        body = real_body(f"ep-{case}")
        body["model"]["repository"] = str(missing)  # type: ignore[index]
        expected = f"model '{missing}': no such directory"  # the runtime's own error
    else:
        body = real_body(f"ep-{case}", adapter=_broken_adapter(cp.local_models))
        expected = "adapter_model.safetensors: corrupt or unreadable safetensors file"
    with endpoint(cp, body) as ep:
        raw = wait_for(lambda: (r := ep.get())["status"]["state"] == "failed" and r, 120, "failed")
        message = raw["status"]["message"]
        assert expected in message and "exited with code 1" in message
        assert "url" not in raw["status"] and ep.pids() == {}
        attempts = [e for e in ep.events() if e["kind"] == "replica-started"]
        assert len(attempts) == 2  # LORAFLEET_MAX_RESTARTS=1: the first try and one restart


def test_update_rolls_to_a_new_replica_serving_the_new_adapter_set(cp: LiveControlPlane) -> None:
    _, adapter = model_and_adapter()
    with endpoint(cp, real_body("ep-update")) as ep:
        url = ep.wait_running()["status"]["url"]
        (old_pid,) = ep.pids().values()
        env = real_body("x")["model"]["image"]["custom"]["env"]  # type: ignore[index]
        env["LORA_ADAPTERS"] = f"{ADAPTER_ID}={adapter},second={adapter}"
        httpx.put(ep.path, json={"model": {"env": env}}, headers=cp.headers).raise_for_status()
        assert ep.wait_replaced({old_pid})["status"]["url"] == url
        wait_for(lambda: gone(old_pid), 60, "old replica stopped")
        assert ep.generate(url, adapter_id="second")


def _load(url: str, token: str, stop: threading.Event, answered: list[int]) -> None:
    """Back-to-back long requests through the endpoint's URL until `stop` (error answers are recorded)."""
    request = {"inputs": "Hello there", "parameters": {"max_new_tokens": 40, "adapter_id": ADAPTER_ID}}
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
        while not stop.is_set():
            try:
                response = client.post(f"{url}/generate", json=request)
                answered.append(response.status_code)
            except httpx.HTTPError:
                answered.append(0)


def test_gateway_load_scales_the_endpoint_up(cp: LiveControlPlane) -> None:
    # 12 clients keep 12 requests pending or in flight at the gateway, far above pendingRequests=2
    # per replica: the autoscaler (fed by the gateway's load reports) wants the maximum, 2.
    body = real_body("ep-scale", MAX_INPUT_LENGTH="16", MAX_TOTAL_TOKENS="64", NUM_KV_BLOCKS="4")
    body["compute"]["scaling"] = {"minReplica": 1, "maxReplica": 2, "measure": {"pendingRequests": 2}}  # type: ignore[index]
    with endpoint(cp, body) as ep:
        url = ep.wait_running()["status"]["url"]
        stop, answered = threading.Event(), []
        clients = [threading.Thread(target=_load, args=(url, cp.token, stop, answered)) for _ in range(12)]
        for thread in clients:
            thread.start()
        try:
            raw = wait_for(
                lambda: (r := ep.get())["status"]["readyReplica"] == 2 and r, 120, "a second ready replica"
            )
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=120)
        assert raw["status"]["targetReplica"] == 2 and raw["status"]["state"] == "running"
        assert len(ep.pids()) == 2
        assert answered and set(answered) == {200}
        started = [e for e in ep.events() if e["kind"] == "replica-started"]
        assert len(started) == 2
