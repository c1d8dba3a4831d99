"""The gateway while replicas come and go, with REAL replicas under a live control plane: a replica
SIGKILLed under load, a rolling update under continuous traffic, and an endpoint scaled to zero
that a request wakes up."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.controlplane.live import LiveControlPlane
from tests.controlplane.replicas import (
    ADAPTER_ID,
    endpoint,
    gone,
    model_and_adapter,
    real_body,
    real_controlplane,
    wait_for,
)

pytestmark = pytest.mark.slow
BODY = {"inputs": "Hello there", "parameters": {"max_new_tokens": 6, "adapter_id": ADAPTER_ID}}


@pytest.fixture(scope="module")
def cp() -> Iterator[LiveControlPlane]:
    with real_controlplane() as live:
        yield live


class Traffic:
    """`clients` threads sending requests back to back through the endpoint's URL until stopped;
    every answer is kept as (monotonic time sent, status code; 0 for a transport error)."""

    def __init__(self, url: str, headers: dict[str, str], clients: int) -> None:
        self.url, self.headers = url, headers
        self.answers: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=120, headers=self.headers) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    status = client.post(f"{self.url}/generate", json=BODY).status_code
                except httpx.HTTPError:
                    status = 0
                self.answers.append((sent, status))

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def failures(self) -> list[tuple[float, int]]:
        return [a for a in self.answers if a[1] != 200]


def test_a_replica_killed_under_load_fails_at_most_its_in_flight_requests(cp: LiveControlPlane) -> None:
    body = real_body("ep-kill")
    body["compute"]["scaling"] = {"minReplica": 2, "maxReplica": 2}  # type: ignore[index]
    with endpoint(cp, body) as ep:
        wait_for(lambda: ep.get()["status"]["readyReplica"] == 2, 180, "two ready replicas")
        url = ep.wait_running()["status"]["url"]
        clients = 4
        with Traffic(url, cp.headers, clients) as traffic:
            wait_for(lambda: len(traffic.answers) >= 8, 60, "traffic flowing")
            victim = next(iter(ep.pids().values()))
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            after = lambda: sum(1 for sent, _ in traffic.answers if sent > killed_at)  # noqa: E731
            wait_for(lambda: after() >= 10, 60, "more traffic")
        # Each client has one request in flight at a time: at most those on the victim may fail
        # (the gateway retries a refused connection on the other replica).
        assert len(traffic.failures()) <= clients, traffic.failures()
        for _ in range(10):
            assert ep.generate(url)
        assert gone(victim)


def test_a_rolling_update_under_continuous_traffic_loses_no_request(cp: LiveControlPlane) -> None:
    _, adapter = model_and_adapter()
    with endpoint(cp, real_body("ep-roll")) as ep:
        url = ep.wait_running()["status"]["url"]
        (old_pid,) = ep.pids().values()
        with Traffic(url, cp.headers, 3) as traffic:
            wait_for(lambda: len(traffic.answers) >= 6, 60, "traffic flowing")
            env = real_body("x")["model"]["image"]["custom"]["env"]  # type: ignore[index]
            env["LORA_ADAPTERS"] = f"{ADAPTER_ID}={adapter},second={adapter}"
            update = httpx.put(ep.path, json={"model": {"env": env}}, headers=cp.headers, timeout=30)
            update.raise_for_status()
            ep.wait_replaced({old_pid})
            wait_for(lambda: gone(old_pid), 120, "the old replica drained and stopped")
            done = len(traffic.answers)
            wait_for(lambda: len(traffic.answers) >= done + 6, 60, "traffic on the new replica")
        assert traffic.failures() == [] and len(traffic.answers) > 12
        assert ep.generate(url, adapter_id="second")  # served by the new replica only
        kinds = [e["kind"] for e in ep.events()]
        assert kinds.count("replica-started") == 2 and "replica-failed" not in kinds


def test_scale_to_zero_answers_503_then_a_held_request_wakes_it_and_is_answered(cp: LiveControlPlane) -> None:
    with endpoint(cp, real_body("ep-zero")) as ep:
        url = ep.wait_running()["status"]["url"]
        (pid,) = ep.pids().values()
        assert ep.post("scale-to-zero")["status"]["url"] == url  # the URL stays, to wake it through
        wait_for(lambda: gone(pid) and ep.pids() == {}, 60, "the replica stopped")
        assert httpx.get(f"{url}/health", headers=cp.headers, timeout=30).status_code == 503
        assert ep.state() == "scaledToZero"  # a health probe wakes nothing

        refused = httpx.post(f"{url}/generate", json=BODY, headers=cp.headers, timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert "waking up" in refused.json()["error"] and ep.state() != "scaledToZero"
        ep.wait_running()
        (pid,) = ep.pids().values()

        assert ep.post("scale-to-zero")["status"]["state"] == "scaledToZero"
        wait_for(lambda: gone(pid) and ep.pids() == {}, 60, "the replica stopped again")
        held = httpx.post(f"{url}/generate", json=BODY, timeout=180,
                          headers={**cp.headers, "X-Scale-Up-Timeout": "150"})
        assert held.status_code == 200, held.text
        assert isinstance(held.json()["generated_text"], str)
        assert [e["kind"] for e in ep.events()].count("woken") == 2
