"""The reconciler holds no database transaction while a launcher works, and loses nothing when the
process dies between recording its intent and recording the launch.

These tests drive a real `Reconciler` (real database, real `ProcessLauncher`, real API over HTTP)
one pass at a time. The replica command is a sleeping Python process, not the runtime: what is
checked here is the bookkeeping of rows, handles and processes, which does not depend on what the
replica runs (the real runtime's lifecycle is covered by test_real_lifecycle.py and
test_real_restart.py). The launcher is the real process launcher wrapped to act during `start` or
`stop` (a slow Ray placement, or a crash of the control plane at that exact point).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from lorafleet.controlplane.catalog.loader import load_catalog
from lorafleet.controlplane.catalog.service import Hardware
from lorafleet.controlplane.db import Database
from lorafleet.controlplane.launchers.base import ReplicaHandle, ReplicaSpec
from lorafleet.controlplane.launchers.process import ProcessLauncher
from lorafleet.controlplane.models import EndpointEvent, Replica
from lorafleet.controlplane.reconciler import Reconciler
from lorafleet.controlplane.secretbox import SecretBox
from lorafleet.controlplane.settings import Settings
from sqlalchemy import select

from tests.controlplane.conftest import Server, endpoint_body, make_settings, serve_app

SLEEPER = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(300)'"


class ControlPlaneCrash(BaseException):
    """Stands for the control-plane process dying at a given point (nothing below catches it)."""


class HookedLauncher:
    """The real process launcher; `before_start`/`after_start`/`before_stop` run at those points."""

    def __init__(self, inner: ProcessLauncher) -> None:
        self.inner = inner
        self.name = inner.name
        self.before_start: Callable[[ReplicaSpec], None] = lambda spec: None
        self.after_start: Callable[[ReplicaHandle], None] = lambda handle: None
        self.before_stop: Callable[[ReplicaHandle], None] = lambda handle: None

    def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        self.before_start(spec)
        handle = self.inner.start(spec)
        self.after_start(handle)
        return handle

    def stop(self, handle: ReplicaHandle) -> None:
        self.before_stop(handle)
        self.inner.stop(handle)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Harness:
    """An API server (reconciler off) plus reconcilers built on demand, as successive processes."""

    def __init__(self, server: Server, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self.database = Database(settings.resolved_database_url)
        self.reconcilers: list[Reconciler] = []

    def reconciler(self) -> tuple[Reconciler, HookedLauncher]:
        """A new reconciler with a new launcher on the same state folder (a restarted process)."""
        if self.reconcilers:
            self.reconcilers[-1].close()  # the previous "process" is dead: its lease is freed
        launcher = HookedLauncher(ProcessLauncher.from_settings(self.settings))
        hardware = Hardware(load_catalog(self.settings.catalog), launcher)  # type: ignore[arg-type]
        box = SecretBox(self.settings.secret_key.get_secret_value())  # type: ignore[union-attr]
        reconciler = Reconciler(
            self.settings, Database(self.settings.resolved_database_url), launcher, hardware, box  # type: ignore[arg-type]
        )
        self.reconcilers.append(reconciler)
        return reconciler, launcher

    def create(self, name: str) -> None:
        with self.server.client() as client:
            response = client.post(f"/v2/endpoint/{self.server.namespace}", json=endpoint_body(name))
        assert response.status_code == 200, response.text

    def rows(self) -> list[tuple[str, str, ReplicaHandle | None]]:
        with self.database.session() as session:
            return [
                (r.replica_key, r.state, r.handle)
                for r in session.scalars(select(Replica).order_by(Replica.id))
            ]

    def events(self, kind: str) -> list[str]:
        with self.database.session() as session:
            query = select(EndpointEvent.message).where(EndpointEvent.kind == kind)
            return list(session.scalars(query))

    def handle_files(self) -> list[str]:
        return sorted(p.stem for p in (self.settings.home / "replicas").glob("*.json"))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def harness(tmp_path: Path, database_url: str) -> Iterator[Harness]:
    settings = make_settings(tmp_path, database_url, reconciler_enabled=False, runtime_command=SLEEPER)
    for url, app in serve_app(settings):
        server = Server(url, app, settings, "", "alice")
        server.token = server.new_token("alice")
        h = Harness(server, settings)
        try:
            yield h
        finally:
            for reconciler in h.reconcilers:
                reconciler.close()
            cleanup = ProcessLauncher.from_settings(settings)
            for handle in cleanup.adopt():  # no sleeper outlives the test
                cleanup.stop(handle)
            h.database.dispose()


def test_api_writes_commit_while_a_replica_launch_is_in_progress(harness: Harness) -> None:
    """Before the fix the pass wrote the replica row and called `start` in one transaction: on
    SQLite every API write waited for the launch (here: forever, so it failed with 'database is
    locked' after the busy timeout)."""
    harness.create("ep-one")
    reconciler, launcher = harness.reconciler()
    seen: dict[str, Any] = {}

    def during_launch(spec: ReplicaSpec) -> None:  # a slow launch (e.g. placing Ray actors)
        seen["rows"] = harness.rows()  # the intent is committed first: row `starting`, no handle
        with harness.server.client() as client:
            seen["create"] = client.post(
                f"/v2/endpoint/{harness.server.namespace}", json=endpoint_body("ep-two")
            )
            seen["update"] = client.put(
                f"/v2/endpoint/{harness.server.namespace}/ep-one",
                json={"compute": {"scaling": {"minReplica": 1, "maxReplica": 2}}},
            )
        seen["key"] = spec.replica_key

    launcher.before_start = during_launch
    report = reconciler.tick()
    assert seen["create"].status_code == 200, seen["create"].text
    assert seen["update"].status_code == 200, seen["update"].text
    assert seen["rows"] == [(seen["key"], "starting", None)]
    assert report is not None and report.started == 1, report
    assert seen["update"].json()["compute"]["scaling"]["maxReplica"] == 2
    ((key, state, handle),) = harness.rows()
    assert key == seen["key"] and state == "starting" and handle is not None and alive(handle["pid"])
    assert harness.events("replica-started") == [f"replica {key} started on aws-us-east-1-intel-icl-x2"]
    launcher.before_start = lambda spec: None
    report = reconciler.tick()  # the endpoint created during the launch gets its replica
    assert report is not None and report.started == 1 and len(harness.rows()) == 2


def test_a_launch_that_never_happened_is_dropped_and_started_afresh(harness: Harness) -> None:
    harness.create("ep-one")
    first, launcher = harness.reconciler()

    def crash(spec: ReplicaSpec) -> None:
        raise ControlPlaneCrash

    launcher.before_start = crash
    with pytest.raises(ControlPlaneCrash):
        first.tick()
    ((lost, state, handle),) = harness.rows()
    assert (state, handle) == ("starting", None) and harness.handle_files() == []
    second, _ = harness.reconciler()
    assert second.tick() is not None
    ((key, state, handle),) = harness.rows()
    assert key != lost and handle is not None and alive(handle["pid"])
    assert harness.handle_files() == [key]
    assert harness.events("replica-started") == [f"replica {key} started on aws-us-east-1-intel-icl-x2"]


def test_a_replica_started_before_a_crash_is_adopted_with_its_handle(harness: Harness) -> None:
    harness.create("ep-one")
    first, launcher = harness.reconciler()
    started: list[ReplicaHandle] = []

    def crash(handle: ReplicaHandle) -> None:
        started.append(handle)
        raise ControlPlaneCrash

    launcher.after_start = crash
    with pytest.raises(ControlPlaneCrash):
        first.tick()
    ((key, _, handle),) = harness.rows()
    assert handle is None and alive(started[0]["pid"])
    second, _ = harness.reconciler()
    for _ in range(3):  # a few passes: none may start a second replica
        report = second.tick()
        assert report is not None and report.started == 0, report
    ((same_key, state, handle),) = harness.rows()
    assert same_key == key and state == "starting" and handle == started[0]
    assert harness.handle_files() == [key] and alive(started[0]["pid"])


def test_a_replica_marked_stopping_before_a_crash_is_stopped_by_the_next_leader(harness: Harness) -> None:
    harness.create("ep-one")
    first, launcher = harness.reconciler()
    first.tick()
    ((key, _, handle),) = harness.rows()
    assert handle is not None
    pid = handle["pid"]
    with harness.server.client() as client:
        response = client.post(f"/v2/endpoint/{harness.server.namespace}/ep-one/pause")
    assert response.status_code == 200, response.text

    def crash(handle: ReplicaHandle) -> None:
        raise ControlPlaneCrash

    launcher.before_stop = crash
    with pytest.raises(ControlPlaneCrash):
        first.tick()
    assert [(k, s) for k, s, _ in harness.rows()] == [(key, "stopping")] and alive(pid)
    second, _ = harness.reconciler()
    report = second.tick()
    assert report is not None and report.stopped == 1 and report.started == 0, report
    assert harness.rows() == [] and harness.handle_files() == []
    assert not alive(pid)


def test_a_failed_stop_is_retried_at_the_next_pass(harness: Harness) -> None:
    harness.create("ep-one")
    reconciler, launcher = harness.reconciler()
    reconciler.tick()
    ((key, _, handle),) = harness.rows()
    assert handle is not None
    with harness.server.client() as client:
        assert client.delete(f"/v2/endpoint/{harness.server.namespace}/ep-one").status_code == 200

    def refuse(handle: ReplicaHandle) -> None:
        raise RuntimeError("launcher unreachable")

    launcher.before_stop = refuse
    report = reconciler.tick()
    assert report is not None and report.stopped == 0 and "launcher unreachable" in report.errors[0]
    assert [k for k, _, _ in harness.rows()] == [key] and alive(handle["pid"])
    launcher.before_stop = lambda handle: None
    report = reconciler.tick()
    assert report is not None and report.stopped == 1 and harness.rows() == []
    assert harness.handle_files() == []


def test_update_of_a_launching_endpoint_is_not_overwritten_by_the_launch_status(harness: Harness) -> None:
    """The status written after the launch is conditional on the spec revision the pass saw."""
    harness.create("ep-one")
    reconciler, launcher = harness.reconciler()

    def pause_meanwhile(spec: ReplicaSpec) -> None:
        with harness.server.client() as client:
            response = client.post(f"/v2/endpoint/{harness.server.namespace}/ep-one/pause")
        assert response.status_code == 200, response.text

    launcher.before_start = pause_meanwhile
    reconciler.tick()
    with harness.server.client() as client:
        state = client.get(f"/v2/endpoint/{harness.server.namespace}/ep-one").json()["status"]["state"]
    assert state == "paused"
    launcher.before_start = lambda spec: None
    report = reconciler.tick()
    assert report is not None and report.stopped == 1 and harness.rows() == []
