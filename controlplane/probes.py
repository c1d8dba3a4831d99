"""Probing replicas: launcher status, the health route, and what `/metrics` says (requests in
flight, for draining; tokens per adapter, for usage; queue depth)."""

from __future__ import annotations

import functools
import re
import ssl
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import httpx
from lorafleet.controlplane.launchers.base import Launcher, ReplicaHandle, ReplicaStatus

QUEUE_GAUGE = "lorafleet_queue_size"
IN_FLIGHT_GAUGE = "lorafleet_requests_in_flight"
TOKEN_COUNTERS = {"lorafleet_prompt_tokens_total": 0, "lorafleet_generated_tokens_total": 1}
BASE_ADAPTER_LABEL = "__base__"  # the runtime's label of the base model
_ADAPTER_LABEL = re.compile(r'adapter="((?:[^"\\]|\\.)*)"')

Tokens = Mapping[str, tuple[float, float]]  # adapter ('' = base) → (prompt tokens, generated tokens)


@dataclass(frozen=True)
class Probe:
    """One replica's condition at the start of a reconciler pass.

    Args:
        status: what the launcher says about the process/actor.
        healthy: the health route answered 200.
        queue_size: the `lorafleet_queue_size` gauge (0 when absent or unreadable).
        in_flight: the `lorafleet_requests_in_flight` gauge (None when `/metrics` was not read).
        tokens: the replica's token counters per adapter since it started (None when unread).
        logs: the replica's last log lines, fetched only when it may have failed (exited, or
            unhealthy past its startup deadline) so the failure report needs no launcher call
            inside a database transaction.
    """

    status: ReplicaStatus
    healthy: bool = False
    queue_size: float = 0.0
    in_flight: float | None = None
    tokens: Tokens | None = None
    logs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeJob:
    """What to probe for one replica.

    Args:
        handle: the launcher handle.
        health_route: path that answers 200 when ready.
        want_metrics: also read `/metrics` (usage, draining, queue depth).
        overdue: past its startup deadline: fetch its logs unless it is healthy.
        api_key: the replica's own key, sent as a bearer token (its routes but `/health` need it).
    """

    handle: ReplicaHandle
    health_route: str = "/health"
    want_metrics: bool = True
    overdue: bool = False
    api_key: str | None = field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class ReplicaMetrics:
    queue_size: float = 0.0
    in_flight: float = 0.0
    tokens: Tokens = field(default_factory=dict)


def parse_metrics(text: str) -> ReplicaMetrics:
    """The gauges and per-adapter token counters the control plane reads, from Prometheus text."""
    queue, in_flight = 0.0, 0.0
    tokens: dict[str, tuple[float, float]] = {}
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
        elif name == IN_FLIGHT_GAUGE:
            in_flight += number
        elif name in TOKEN_COUNTERS:
            match = _ADAPTER_LABEL.search(name_part)
            label = match.group(1).replace('\\"', '"').replace("\\\\", "\\") if match else BASE_ADAPTER_LABEL
            adapter = "" if label == BASE_ADAPTER_LABEL else label
            counts = list(tokens.get(adapter, (0.0, 0.0)))
            counts[TOKEN_COUNTERS[name]] += number
            tokens[adapter] = (counts[0], counts[1])
    return ReplicaMetrics(queue, in_flight, tokens)


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
        metrics = parse_metrics(response.text)
        return Probe(status, healthy, metrics.queue_size, metrics.in_flight, metrics.tokens)
    except httpx.HTTPError:
        return Probe(status, False)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


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
    # One client per pass, shared by the probe threads, on one TLS context for the process: building
    # a context costs more CPU than a whole pass of plain-HTTP probes (and shares the GIL with the
    # gateway's event loop).
    with (
        httpx.Client(timeout=timeout_s, limits=limits, verify=_tls_context()) as client,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool,
    ):
        futures = {
            key: pool.submit(probe_replica, launcher, job, client, log_tail) for key, job in jobs.items()
        }
        return {key: future.result() for key, future in futures.items()}
