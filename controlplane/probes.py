"""Probing replicas: launcher status, the health route, and queue depth from `/metrics`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

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
        logs: the replica's last log lines, fetched only when it may have failed (exited, or
            unhealthy past its startup deadline) so the failure report needs no launcher call
            inside a database transaction.
    """

    status: ReplicaStatus
    healthy: bool = False
    queue_size: float = 0.0
    requests_seen: float | None = None
    logs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeJob:
    """What to probe for one replica.

    Args:
        handle: the launcher handle.
        health_route: path that answers 200 when ready.
        want_metrics: also read `/metrics` (autoscaling, idleness).
        overdue: past its startup deadline: fetch its logs unless it is healthy.
        api_key: the replica's own key, sent as a bearer token (its routes but `/health` need it).
    """

    handle: ReplicaHandle
    health_route: str = "/health"
    want_metrics: bool = False
    overdue: bool = False
    api_key: str | None = field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


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


def probe_replica(launcher: Launcher, job: ProbeJob, client: httpx.Client, log_tail: int = 40) -> Probe:
    """Asks the launcher, then (if alive) the health route and, if wanted, `/metrics`; adds the
    last `log_tail` log lines when the replica exited or is overdue and unhealthy."""
    try:
        status = launcher.status(job.handle)
    except Exception as e:  # a launcher hiccup (e.g. Ray GCS busy) must not kill the pass
        return Probe(ReplicaStatus("starting", None, None, f"status unavailable: {e}"))
    probe = _probe_routes(status, job, client)
    if status.phase == "exited" or (job.overdue and not probe.healthy):
        try:
            lines = tuple(launcher.logs(job.handle, log_tail))
        except Exception as e:
            lines = (f"(logs unavailable: {e})",)
        probe = replace(probe, logs=lines)
    return probe


def _probe_routes(status: ReplicaStatus, job: ProbeJob, client: httpx.Client) -> Probe:
    if status.phase != "running" or not status.url:
        return Probe(status)
    try:
        base = status.url.rstrip("/")
        healthy = client.get(base + job.health_route, headers=job.headers).status_code == 200
        if not (healthy and job.want_metrics):
            return Probe(status, healthy)
        response = client.get(base + "/metrics", headers=job.headers)
        if response.status_code != 200:
            return Probe(status, healthy)
        queue, requests = parse_metrics(response.text)
        return Probe(status, healthy, queue, requests)
    except httpx.HTTPError:
        return Probe(status, False)


def probe_all(
    launcher: Launcher,
    jobs: dict[str, ProbeJob],
    timeout_s: float,
    max_workers: int = 16,
    log_tail: int = 40,
) -> dict[str, Probe]:
    """Probes replicas in parallel: `jobs` maps replica_key → what to probe."""
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
            key: pool.submit(probe_replica, launcher, job, client, log_tail) for key, job in jobs.items()
        }
        return {key: future.result() for key, future in futures.items()}
