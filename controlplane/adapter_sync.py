"""The reconciler's adapter sync: every ready replica converges to its endpoint's adapter set
through the runtime's admin API, without a restart; each adapter's readiness is recorded.

Three steps, as the planner's: `jobs` (decide, from rows read in a short transaction), `sync_all`
(act, no transaction open: per replica in parallel, `GET /v1/lora_adapters`, unload what is not in
the set, load what is missing or of another version), `record` (one short transaction: each
replica's `adapter_versions`, each adapter's `readyReplicas`, `targetReplicas`, `state`, `message`,
and the digest of a Hub source as the replicas report it).

A replica serves an adapter's current version when it lists the name and its `adapter_versions`
holds the adapter's tag (`AdapterItem.tag`): the digest alone cannot tell a Hub source's new
revision before it is loaded. A load the replica refuses (a bad checkpoint) is remembered per
replica and tag and not retried until the adapter changes; it marks the adapter `failed` with the
replica's message and never the replica (which keeps serving the rest). A replica that does not
answer is left as it is for the next pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from lorafleet.controlplane.endpoints import adapter_rows
from lorafleet.controlplane.endpoints.plan import AdapterItem
from lorafleet.controlplane.launchers.base import ReplicaHandle
from lorafleet.controlplane.models import Replica
from sqlalchemy.orm import Session

log = logging.getLogger("lorafleet.controlplane.reconciler")
MAX_MESSAGE_CHARS = 2000

Failures = dict[str, dict[str, tuple[str, str]]]  # replica key → adapter name → (tag, message)
Place = Callable[[ReplicaHandle, str], str]  # (replica, local folder) → the path it loads from


@dataclass(frozen=True)
class SyncJob:
    """One ready replica and the set it should serve.

    Args:
        serving: its `adapter_versions` (name → tag) as recorded.
        failed: name → (tag, message) of loads it refused before (not retried for that tag).
    """

    replica_key: str
    url: str
    api_key: str | None = field(repr=False)
    wanted: tuple[AdapterItem, ...]
    serving: Mapping[str, str]
    failed: Mapping[str, tuple[str, str]]
    handle: ReplicaHandle | None = field(default=None, repr=False)
    place: Place | None = field(default=None, repr=False)  # `Launcher.adapter_path`

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass
class SyncResult:
    """What one replica serves after the sync: `serving` (name → tag), the digests it reports,
    and the loads it refused (name → (tag, message)). `reached` False: it did not answer."""

    replica_key: str
    reached: bool = True
    serving: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)


def jobs(
    replicas: Sequence[Replica],
    sets: Mapping[int, Sequence[AdapterItem]],
    keys: Mapping[str, str | None],
    failures: Failures,
    place: Place | None = None,
) -> list[SyncJob]:
    """A job per ready replica with a URL (`keys`: replica key → its API key; `place`: where a
    replica reads a local folder it was not started with)."""
    return [
        SyncJob(
            r.replica_key,
            r.url.rstrip("/"),
            keys.get(r.replica_key),
            tuple(sets.get(r.endpoint_id, ())),
            dict(r.adapter_versions or {}),
            failures.get(r.replica_key, {}),
            r.handle,
            place,
        )
        for r in replicas
        if r.state == "ready" and r.url and r.endpoint_id is not None
    ]


def sync_all(jobs: Sequence[SyncJob], timeout_s: float, max_workers: int = 16) -> dict[str, SyncResult]:
    """Runs every job in parallel; replica key → its result."""
    if not jobs:
        return {}
    workers = min(max_workers, len(jobs))
    with (
        httpx.Client(timeout=timeout_s) as client,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adapter-sync") as pool,
    ):
        futures = {job.replica_key: pool.submit(sync_replica, job, client) for job in jobs}
        return {key: future.result() for key, future in futures.items()}


def sync_replica(job: SyncJob, client: httpx.Client) -> SyncResult:
    """Unloads what the set lacks, then loads what the replica lacks (or holds at another version)."""
    try:
        response = client.get(f"{job.url}/v1/lora_adapters", headers=job.headers)
        response.raise_for_status()
        listing = {a["name"]: a["digest"] for a in response.json()["data"]}
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        log.info("adapter sync: replica %s did not answer: %s", job.replica_key, e)
        return SyncResult(job.replica_key, reached=False)
    result = SyncResult(job.replica_key, serving={n: t for n, t in job.serving.items() if n in listing})
    wanted = {item.name for item in job.wanted}
    try:
        for name in sorted(set(listing) - wanted):  # first: frees the replica's adapter budget
            _call(client, job, "/v1/unload_lora_adapter", {"lora_name": name}, ok=(200, 404))
            result.serving.pop(name, None)
        for item in job.wanted:
            _converge(client, job, item, listing, result)
    except httpx.HTTPError as e:  # it went away mid-way: what was not confirmed is retried next pass
        log.info("adapter sync: replica %s stopped answering: %s", job.replica_key, e)
    return result


def _converge(
    client: httpx.Client, job: SyncJob, item: AdapterItem, listing: Mapping[str, str], result: SyncResult
) -> None:
    if result.serving.get(item.name) == item.tag:
        result.digests[item.name] = listing[item.name]
        return
    result.serving.pop(item.name, None)
    remembered = job.failed.get(item.name)
    if item.load_path is None or (remembered is not None and remembered[0] == item.tag):
        result.errors[item.name] = (item.tag, item.refused if item.load_path is None else remembered[1])  # type: ignore[index]
        return
    try:
        path = _path_for(job, item.load_path)
    except OSError as e:  # the copy for a sandboxed replica failed (disk full...): retried next pass
        log.warning("staging adapter %s for replica %s failed: %s", item.name, job.replica_key, e)
        return
    body: dict[str, Any] = {"lora_name": item.name, "lora_path": path}
    if item.revision:
        body["revision"] = item.revision
    response = _call(client, job, "/v1/load_lora_adapter", body, ok=(200,))
    if response.status_code == 200:
        result.serving[item.name] = item.tag
        result.digests[item.name] = str(response.json().get("digest", ""))
    else:
        message = _error_text(response)
        log.warning("replica %s refused adapter %s: %s", job.replica_key, item.name, message)
        result.errors[item.name] = (item.tag, message)


def _path_for(job: SyncJob, load_path: str) -> str:
    """A Hub id as it is; a local folder where this replica can read it (`Launcher.adapter_path`)."""
    if not load_path.startswith("/") or job.place is None or job.handle is None:
        return load_path
    return job.place(job.handle, load_path)


def _call(
    client: httpx.Client, job: SyncJob, path: str, body: dict[str, Any], ok: tuple[int, ...]
) -> httpx.Response:
    response = client.post(f"{job.url}{path}", json=body, headers=job.headers)
    if response.status_code >= 500 and response.status_code not in ok:
        raise httpx.HTTPStatusError(
            f"{path}: {response.status_code}", request=response.request, response=response
        )
    return response


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
        text = payload.get("error") or payload.get("detail") or response.text
    except ValueError:
        text = response.text
    return f"HTTP {response.status_code}: {str(text)[:MAX_MESSAGE_CHARS]}"


def remember_failures(failures: Failures, results: Mapping[str, SyncResult], live: set[str]) -> None:
    """Keeps the refused loads of live replicas (forgotten with the replica or a new version)."""
    for key in list(failures):
        if key not in live:
            del failures[key]
    for key, result in results.items():
        if result.reached:
            failures[key] = {name: error for name, error in result.errors.items()}


def record(
    session: Session,
    sets: Mapping[int, Sequence[AdapterItem]],
    rows: Sequence[Replica],
    results: Mapping[str, SyncResult],
) -> None:
    """Writes each reached replica's `adapter_versions` and every adapter's status (only what changed)."""
    ready_by_endpoint: dict[int, list[str]] = {}
    for row in rows:
        result = results.get(row.replica_key)
        if result is None or row.endpoint_id is None:
            continue
        ready_by_endpoint.setdefault(row.endpoint_id, []).append(row.replica_key)
        if result.reached and (row.adapter_versions or {}) != result.serving:
            row.adapter_versions = dict(result.serving)
    for endpoint_id, items in sets.items():
        reached = [results[k] for k in ready_by_endpoint.get(endpoint_id, ()) if results[k].reached]
        target = len(ready_by_endpoint.get(endpoint_id, ()))
        for item in items:
            values = _status(item, reached, target)
            changed = {k: v for k, v in values.items() if getattr(item, k) != v}
            if changed:
                adapter_rows.write_adapter_status(
                    session, adapter_id=item.id, version=item.version, values=changed
                )


def _status(item: AdapterItem, reached: Sequence[SyncResult], target: int) -> dict[str, Any]:
    """`ready` once every ready replica serves the current version; `failed` while a replica refuses
    it (or its source is refused); `pending` otherwise (loading, or no replica runs)."""
    serving = [r for r in reached if r.serving.get(item.name) == item.tag]
    errors = [f"replica {r.replica_key}: {r.errors[item.name][1]}" for r in reached if item.name in r.errors]
    if item.load_path is None:
        errors = errors or [item.refused]
    state = "failed" if errors else "ready" if target and len(serving) == target else "pending"
    values: dict[str, Any] = {
        "ready_replicas": len(serving),
        "target_replicas": target,
        "state": state,
        "message": errors[0][:MAX_MESSAGE_CHARS] if errors else "",
    }
    digests = {r.digests[item.name] for r in serving if r.digests.get(item.name)}
    if item.digest is None and len(digests) == 1 and not item.source.startswith("/"):
        values["digest"] = digests.pop()  # a Hub source: what the replicas loaded
    elif item.digest is not None and digests and digests != {item.digest} and not errors:
        values["message"] = (
            "the replicas serve other files than the ones hashed at the PUT: "
            "PUT the adapter again to record the new version"
        )
    return values
