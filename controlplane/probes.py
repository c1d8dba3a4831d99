"""Probing replicas: launcher status, the health route, and queue depth from `/metrics`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from lorafleet.controlplane.launchers.base import Launcher, ReplicaHandle, ReplicaStatus

QUEUE_GAUGE = "lorafleet_queue_size"
REQUEST_COUNTER_SUFFIXES = ("_requests_total", "_request_count", "_request_success")


@dataclass(frozen=True)
class Probe:
    """One replica's condition at the start of a reconciler pass.

    Args:
        status: what the launcher says about the process/actor.
        healthy: the health route answered 200.
        queue_size: the `lorafleet_queue_size` gauge (0 when absent or unreadable).
        requests_seen: sum of request counters in `/metrics` (None when absent), for idleness.
    """

    status: ReplicaStatus
    healthy: bool = False
    queue_size: float = 0.0
    requests_seen: float | None = None


def parse_metrics(text: str) -> tuple[float, float | None]:
    """(summed queue gauge, summed request counters or None) from Prometheus text format."""
    queue, requests = 0.0, None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        try:
            number = float(value)
        except ValueError:
            continue
        if name == QUEUE_GAUGE:
            queue += number
        elif name.endswith(REQUEST_COUNTER_SUFFIXES):
            requests = (requests or 0.0) + number
    return queue, requests


def probe_replica(
    launcher: Launcher, handle: ReplicaHandle, health_route: str, client: httpx.Client, want_metrics: bool
) -> Probe:
    """Asks the launcher, then (if alive) the health route and, if wanted, `/metrics`."""
    try:
        status = launcher.status(handle)
    except Exception as e:  # a launcher hiccup (e.g. Ray GCS busy) must not kill the pass
        return Probe(ReplicaStatus("starting", None, None, f"status unavailable: {e}"))
    if status.phase != "running" or not status.url:
        return Probe(status)
    try:
        healthy = client.get(status.url.rstrip("/") + health_route).status_code == 200
        if not (healthy and want_metrics):
            return Probe(status, healthy)
        response = client.get(status.url.rstrip("/") + "/metrics")
        if response.status_code != 200:
            return Probe(status, healthy)
        queue, requests = parse_metrics(response.text)
        return Probe(status, healthy, queue, requests)
    except httpx.HTTPError:
        return Probe(status, False)


def probe_all(
    launcher: Launcher,
    jobs: dict[str, tuple[ReplicaHandle, str, bool]],
    timeout_s: float,
    max_workers: int = 16,
) -> dict[str, Probe]:
    """Probes replicas in parallel: `jobs` maps replica_key → (handle, health route, want metrics)."""
    if not jobs:
        return {}
    workers = min(max_workers, len(jobs))
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    # One client per pass, shared by the probe threads: creating one per probe costs more
    # (TLS context set-up) than the probe itself.
    with (
        httpx.Client(timeout=timeout_s, limits=limits) as client,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool,
    ):
        futures = {
            key: pool.submit(probe_replica, launcher, handle, route, client, metrics)
            for key, (handle, route, metrics) in jobs.items()
        }
        return {key: future.result() for key, future in futures.items()}
