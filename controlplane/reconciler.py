"""The reconciler: one asyncio task that drives every endpoint toward its spec.

Each pass (run in a worker thread, the DB and launchers are blocking) loads all endpoints and
replicas, probes live replicas in parallel, then per endpoint: records crashes, starts or stops
replicas (scaling, rolling updates, pause, scale-to-zero), and writes the status the API shows.
Only the process holding the `ReconcilerLease` reconciles; on taking it, it first adopts the
replicas that outlived the previous holder (keeping those in the database, stopping the rest).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from lorafleet.controlplane.catalog.service import Hardware
from lorafleet.controlplane.db import Database
from lorafleet.controlplane.endpoints import repository
from lorafleet.controlplane.endpoints.planner import EndpointPlanner
from lorafleet.controlplane.launchers.base import Launcher
from lorafleet.controlplane.lease import ReconcilerLease
from lorafleet.controlplane.models import Replica
from lorafleet.controlplane.probes import probe_all
from lorafleet.controlplane.secretbox import SecretBox
from lorafleet.controlplane.settings import Settings
from sqlalchemy.orm import Session

log = logging.getLogger("lorafleet.controlplane.reconciler")


@dataclass
class PassReport:
    endpoints: int = 0
    replicas: int = 0
    started: int = 0
    stopped: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def new_replica_key() -> str:
    return f"rep-{uuid.uuid4().hex[:12]}"


class Reconciler:
    """Owns the replica rows and the launcher's lifecycle calls."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        launcher: Launcher,
        hardware: Hardware,
        secret_box: SecretBox,
    ) -> None:
        self.settings = settings
        self.database = database
        self.launcher = launcher
        self.lease = ReconcilerLease(
            database.engine,
            settings.home / "reconciler.lock" if not database.is_sqlite else _lock_path(database),
        )
        self.planner = EndpointPlanner(settings, launcher, hardware, secret_box)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adopted = False

    # --- loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Thread-safe: makes the loop run its next pass now."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await asyncio.to_thread(self.tick)
                except Exception:
                    log.exception("reconciler pass failed")
                waits = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
                await asyncio.wait(
                    waits, timeout=self.settings.reconcile_interval_s, return_when=asyncio.FIRST_COMPLETED
                )
                for task in waits:
                    task.cancel()
        finally:
            await asyncio.to_thread(self.lease.release)

    def tick(self) -> PassReport | None:
        """One pass if this process holds (or can take) the lease; None otherwise."""
        if not self.lease.try_acquire():
            return None
        if not self._adopted:
            self.adopt()
            self._adopted = True
        return self.run_pass()

    # --- adoption -------------------------------------------------------------------------

    def adopt(self) -> tuple[int, int]:
        """Keeps live replicas the DB knows, stops the ones it does not. Returns (kept, stopped)."""
        handles = self.launcher.adopt()
        kept = stopped = 0
        with self.database.session() as session:
            rows = {r.replica_key: r for r in repository.all_replicas(session)}
            for handle in handles:
                row = rows.get(handle["replica_key"])
                if row is None or row.endpoint_id is None:
                    log.info("stopping orphan replica %s", handle["replica_key"])
                    self.launcher.stop(handle)
                    stopped += 1
                    continue
                if row.handle is None:  # crashed between start() and saving the handle
                    row.handle = handle
                kept += 1
        log.info("adopted %d live replicas, stopped %d orphans", kept, stopped)
        return kept, stopped

    # --- one pass -------------------------------------------------------------------------

    def run_pass(self) -> PassReport:
        started_at = time.monotonic()
        report = PassReport()
        with self.database.session() as session:
            endpoints = repository.all_endpoints_with_namespace(session)
            replicas = list(repository.all_replicas(session))
            report.endpoints, report.replicas = len(endpoints), len(replicas)
            by_endpoint: dict[int, list[Replica]] = {}
            for replica in replicas:
                if replica.endpoint_id is None:
                    self._stop(session, replica, report)
                else:
                    by_endpoint.setdefault(replica.endpoint_id, []).append(replica)
            specs = {e.id: e.spec for e, _ in endpoints}
            jobs = {
                r.replica_key: (
                    r.handle,
                    specs[r.endpoint_id].get("healthRoute", "/health"),
                    self.planner.wants_metrics(specs[r.endpoint_id]),
                )
                for r in replicas
                if r.handle and r.endpoint_id in specs
            }
            probes = probe_all(self.launcher, jobs, self.settings.health_timeout_s)
            session.commit()  # orphans are gone for good
            for endpoint, namespace in endpoints:
                # One transaction per endpoint (not a savepoint: pysqlite turns an outer SAVEPOINT
                # into BEGIN/COMMIT anyway), so one bad endpoint rolls back only its own changes
                # and an endpoint with nothing to do costs no write at all.
                name = endpoint.name
                try:
                    actions = self.planner.reconcile(
                        session, endpoint, namespace, by_endpoint.get(endpoint.id, []), probes
                    )
                    session.commit()
                    report.started += actions.started
                    report.stopped += actions.stopped
                except Exception as e:  # one bad endpoint must not stall the others
                    session.rollback()
                    log.exception("reconciling %s/%s failed", namespace, name)
                    report.errors.append(f"{namespace}/{name}: {e}")
        report.seconds = time.monotonic() - started_at
        return report

    def _stop(self, session: Session, replica: Replica, report: PassReport) -> None:
        if replica.handle:
            self.launcher.stop(replica.handle)
        session.delete(replica)
        report.stopped += 1

    def close(self) -> None:
        self.lease.release()


def _lock_path(database: Database):  # type: ignore[no-untyped-def]
    from pathlib import Path

    db_file = database.engine.url.database or "controlplane.db"
    return Path(db_file).expanduser().with_suffix(".reconciler.lock")
