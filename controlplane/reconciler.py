"""The reconciler: one asyncio task that drives every endpoint toward its spec.

Each pass (run in a worker thread, the DB and launchers are blocking) loads all endpoints and
replicas, probes live replicas in parallel, then per endpoint: records crashes, starts or stops
replicas (scaling, rolling updates, pause, scale-to-zero), and writes the status the API shows.
No transaction is open while a launcher works (see `endpoints/plan.py`): on SQLite an open write
transaction would make every API write wait for the launch.
Only the process holding the `ReconcilerLease` reconciles; on taking it, it first adopts the
replicas that outlived the previous holder (keeping those in the database, stopping the rest).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from lorafleet.controlplane import adapter_sync
from lorafleet.controlplane.catalog.service import Hardware
from lorafleet.controlplane.clock import utcnow
from lorafleet.controlplane.db import Database
from lorafleet.controlplane.endpoints import adapter_rows, repository
from lorafleet.controlplane.endpoints.adapters import adapter_items
from lorafleet.controlplane.endpoints.plan import LaunchOutcome
from lorafleet.controlplane.endpoints.planner import EndpointPlanner
from lorafleet.controlplane.endpoints.quota import Quota, QuotaRoom, QuotaTally
from lorafleet.controlplane.endpoints.spec_view import EndpointSpec
from lorafleet.controlplane.errors import ControlPlaneError
from lorafleet.controlplane.launchers.base import Launcher, NoCapacityError, ReplicaHandle
from lorafleet.controlplane.lease import ReconcilerLease
from lorafleet.controlplane.models import Endpoint, EndpointAdapter, Replica
from lorafleet.controlplane.probes import Probe, ProbeJob, probe_all
from lorafleet.controlplane.secretbox import SecretBox
from lorafleet.controlplane.settings import Settings
from lorafleet.controlplane.usage import repository as usage
from sqlalchemy.orm import Session

log = logging.getLogger("lorafleet.controlplane.reconciler")
USAGE_MINUTES_KEPT = timedelta(days=1)  # per-minute usage (charts, token limits); totals are kept


@dataclass
class PassReport:
    endpoints: int = 0
    replicas: int = 0
    started: int = 0
    stopped: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


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
        self.hardware = hardware
        self.quota = Quota.from_settings(settings)
        self._api_keys: dict[str, str] = {}  # replica_key → its key, opened once (probes send it)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adopted_generation = 0  # the lease generation adopt() last ran for
        self._unrecorded: dict[str, ReplicaHandle] = {}  # started replicas whose handle is not saved
        self._adapter_failures: adapter_sync.Failures = {}  # loads replicas refused (not retried)
        self.passes = 0  # loop iterations finished (led or not): tests wait on it instead of sleeping
        self.leading = False  # whether the last iteration held the lease

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
                self.passes += 1
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
        self.leading = self.lease.try_acquire()
        if not self.leading:
            return None
        if self._adopted_generation != self.lease.generation:  # newly (re)acquired: adopt first
            self.adopt()
            self._adopted_generation = self.lease.generation
        return self.run_pass()

    # --- adoption -------------------------------------------------------------------------

    def adopt(self) -> tuple[int, int]:
        """Reconciles the database with the replicas that outlived the previous leader.

        Keeps live replicas the database knows (recording the handle of one that started but
        whose handle was never saved), drops `starting` rows without a handle whose replica does
        not exist (the launch never happened), and stops live replicas it does not know. Launcher
        calls happen outside any transaction. Returns (kept, stopped).
        """
        live = {handle["replica_key"]: handle for handle in self.launcher.adopt()}
        kept = 0
        with self.database.session() as session:
            for row in repository.all_replicas(session):
                handle = live.pop(row.replica_key, None)
                if handle is not None:
                    kept += 1
                    if row.handle is None:  # died between start() and recording the handle
                        log.info("recording the handle of %s (started before a crash)", row.replica_key)
                        row.handle = handle
                elif row.handle is None:
                    log.info("dropping replica row %s: its launch never happened", row.replica_key)
                    session.delete(row)
        for key, handle in live.items():
            log.info("stopping unknown replica %s", key)
            self.launcher.stop(handle)
        log.info("adopted %d live replicas, stopped %d unknown ones", kept, len(live))
        return kept, len(live)

    # --- one pass -------------------------------------------------------------------------

    def run_pass(self) -> PassReport:
        """One pass. No database transaction is open during any launcher call (start, stop,
        status, logs): decisions and their outcomes are committed in short separate transactions."""
        started_at = time.monotonic()
        report = PassReport()
        with self.database.session() as session:
            endpoints = repository.all_endpoints_with_namespace(session)
            replicas = list(repository.all_replicas(session))
            replicas = self._settle_unrecorded(session, replicas)
            session.commit()
            report.endpoints, report.replicas = len(endpoints), len(replicas)
            doomed = [r for r in replicas if r.endpoint_id is None or r.state == "stopping"]
            self._stop_rows(session, doomed, report)
            by_endpoint: dict[int, list[Replica]] = {}
            for replica in replicas:
                if replica.endpoint_id is not None and replica.state != "stopping":
                    by_endpoint.setdefault(replica.endpoint_id, []).append(replica)
            probes = probe_all(
                self.launcher,
                self._probe_jobs(endpoints, by_endpoint),
                self.settings.health_timeout_s,
                log_tail=self.settings.log_tail_lines,
            )
            tally = QuotaTally(self.quota, self.hardware.catalog, endpoints, by_endpoint)
            loads = self._gateway_loads(session)
            sets = adapter_rows.adapters_by_endpoint(session)
            for endpoint, namespace in endpoints:
                rows = by_endpoint.get(endpoint.id, [])
                room = tally.room(endpoint, namespace)
                self._reconcile(session, endpoint, namespace, rows, probes, report, tally,
                                (room, loads.get(endpoint.id, 0), sets.get(endpoint.id, [])))
            self._sync_adapters(session, report)
        report.seconds = time.monotonic() - started_at
        return report

    def _probe_jobs(
        self, endpoints: list[tuple[Endpoint, str]], by_endpoint: dict[int, list[Replica]]
    ) -> dict[str, ProbeJob]:
        now = utcnow()
        jobs = {}
        live = {r.replica_key for rows in by_endpoint.values() for r in rows}
        self._api_keys = {k: v for k, v in self._api_keys.items() if k in live}
        for endpoint, _ in endpoints:
            route = EndpointSpec.from_stored(endpoint.spec).health_route
            for r in by_endpoint.get(endpoint.id, []):
                if r.handle:
                    overdue = r.state == "starting" and (
                        (now - r.created_at).total_seconds() > self.settings.startup_timeout_s
                    )
                    # `/metrics` always: token usage, and whether a draining replica is idle.
                    jobs[r.replica_key] = ProbeJob(r.handle, route, True, overdue, self._api_key(r))
        return jobs

    def _reconcile(
        self,
        session: Session,
        endpoint: Endpoint,
        namespace: str,
        replicas: list[Replica],
        probes: dict[str, Probe],
        report: PassReport,
        tally: QuotaTally,
        inputs: tuple[QuotaRoom, int, list[EndpointAdapter]],
    ) -> None:
        """Decide (one transaction), stop and start (none), record the outcome (one or two).
        `inputs`: the namespace's quota room, the gateways' load and the endpoint's adapter set."""
        name = f"{namespace}/{endpoint.name}"
        try:
            # Resolved before the transaction: the catalog may ask the launcher (Ray's nodes).
            view = self.planner.view(endpoint, namespace, *inputs)
            # One transaction per endpoint, so one bad endpoint rolls back only its own changes and
            # an endpoint with nothing to do costs no write at all.
            decision = self.planner.reconcile(session, endpoint, view, replicas, probes)
            session.commit()
            tally.launched(endpoint, namespace, len(decision.launches))
        except Exception as e:  # one bad endpoint must not stall the others
            session.rollback()
            log.exception("reconciling %s failed", name)
            report.errors.append(f"{name}: {e}")
            return
        self._stop_rows(session, decision.stopping, report)
        if not decision.launches:
            return
        outcomes = []
        for launch in decision.launches:
            try:
                outcomes.append(LaunchOutcome(launch, handle=self.launcher.start(launch.spec)))
            except Exception as e:
                if not isinstance(e, NoCapacityError):
                    log.exception("starting a replica of %s failed", name)
                outcomes.append(LaunchOutcome(launch, error=e))
        try:
            self.planner.record_launches(session, outcomes)
            session.commit()
        except Exception as e:
            session.rollback()
            for outcome in outcomes:  # the next pass records them (or adopt() after a crash)
                if outcome.handle is not None:
                    self._unrecorded[outcome.launch.spec.replica_key] = outcome.handle
            log.exception("recording the replicas started for %s failed", name)
            report.errors.append(f"{name}: {e}")
            return
        report.started += sum(1 for o in outcomes if o.handle is not None)
        try:
            self.planner.after_launches(session, endpoint, decision, outcomes)
            session.commit()
        except Exception as e:
            session.rollback()
            log.exception("writing the status of %s after its launches failed", name)
            report.errors.append(f"{name}: {e}")

    def _sync_adapters(self, session: Session, report: PassReport) -> None:
        """Converges ready replicas to their endpoint's adapter set (`adapter_sync.py`): rows read
        in one short transaction, admin API calls with none open, the outcome written in another.
        A failure here costs this pass's sync only."""
        try:
            rows = [r for r in repository.all_replicas(session) if r.state == "ready"]
            sets = {endpoint_id: adapter_items(items, self.planner.roots)
                    for endpoint_id, items in adapter_rows.adapters_by_endpoint(session).items()}
            keys = {r.replica_key: self._api_key(r) for r in rows}
            session.commit()
            todo = adapter_sync.jobs(rows, sets, keys, self._adapter_failures, self.launcher.adapter_path)
            results = adapter_sync.sync_all(todo, self.settings.adapter_load_timeout_s)
            adapter_sync.remember_failures(self._adapter_failures, results, {r.replica_key for r in rows})
            adapter_sync.record(session, sets, rows, results)
            session.commit()
        except Exception as e:
            session.rollback()
            log.exception("syncing adapters failed")
            report.errors.append(f"adapter sync: {e}")

    def _gateway_loads(self, session: Session) -> dict[int, int]:
        """endpoint id → the gateways' pending + in-flight requests; every 100 passes, old usage
        minutes and the load rows of gateways that stopped reporting are dropped."""
        now = utcnow()
        if self.passes % 100 == 0:
            usage.prune(session, minutes_before=now - USAGE_MINUTES_KEPT,
                        loads_before=now - timedelta(hours=1))
        loads = usage.fresh_loads(session, usage.load_since(self.settings.gateway_flush_s, now))
        session.commit()
        return loads

    def _api_key(self, row: Replica) -> str | None:
        """The replica's key for probes; None if it has none (started before keys) or it cannot be
        opened (another SECRET_KEY): the probe then goes without, and the replica refuses it."""
        if row.replica_key not in self._api_keys and row.api_key_encrypted:
            try:
                opened = self.planner.secret_box.open(row.api_key_encrypted)
                self._api_keys[row.replica_key] = opened["api_key"]
            except ControlPlaneError as e:
                log.warning("cannot open the key of replica %s: %s", row.replica_key, e.message)
                return None
        return self._api_keys.get(row.replica_key)

    def _settle_unrecorded(self, session: Session, replicas: list[Replica]) -> list[Replica]:
        """Rows without a handle at the start of a pass: a launch of this process whose handle
        could not be saved gets it now; any other never launched (adopt() already matched those of
        a previous leader) and is dropped, so the planner starts a fresh replica."""
        kept = []
        for row in replicas:
            if row.handle is None:
                handle = self._unrecorded.pop(row.replica_key, None)
                if handle is None:
                    log.warning("dropping replica row %s: its launch never happened", row.replica_key)
                    session.delete(row)
                    continue
                row.handle = handle
            kept.append(row)
        return kept

    def _stop_rows(self, session: Session, rows: list[Replica], report: PassReport) -> None:
        """Stops replicas (no transaction open), then deletes the rows of those that stopped; a row
        whose stop failed stays `stopping` (or orphaned) and the next pass tries again."""
        stopped = []
        for row in rows:
            try:
                if row.handle:
                    self.launcher.stop(row.handle)
                stopped.append(row.replica_key)
            except Exception as e:
                log.exception("stopping replica %s failed", row.replica_key)
                report.errors.append(f"stopping {row.replica_key}: {e}")
        if not stopped:
            return
        try:
            repository.delete_replicas(session, stopped)
            session.commit()
            report.stopped += len(stopped)
        except Exception as e:
            session.rollback()
            log.exception("deleting stopped replica rows failed")
            report.errors.append(f"deleting stopped replicas: {e}")

    def close(self) -> None:
        self.lease.release()


def _lock_path(database: Database):  # type: ignore[no-untyped-def]
    from pathlib import Path

    db_file = database.engine.url.database or "controlplane.db"
    return Path(db_file).expanduser().with_suffix(".reconciler.lock")
