"""Two real control-plane processes against one database (SQLite, and PostgreSQL with
LORAFLEET_TEST_DATABASE_URL): only the process holding the reconciler lease (a `flock` beside the
SQLite file; a PostgreSQL advisory lock) starts replicas, so one endpoint gets exactly one REAL
replica (`python -m lorafleet.runtime` on the tiny Mistral fixture) and both APIs serve it. When
the leader dies, the other process takes the lease and adopts the replica: same PID, no duplicate.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from lorafleet.controlplane.lease import LOCK_KEY
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.controlplane.conftest import BACKENDS
from tests.controlplane.live import LiveControlPlane
from tests.controlplane.replicas import EndpointView, gone, real_body, real_controlplane, wait_for

pytestmark = pytest.mark.slow

# Reconciler passes to let run before checking that nothing was started (an absence can only be
# observed by letting both processes' reconcilers run: the test counts their passes).
PASSES_TO_WAIT = 5


@pytest.fixture(scope="module", params=BACKENDS)
def cp(request: pytest.FixtureRequest) -> Iterator[LiveControlPlane]:
    with real_controlplane(request.param) as live:
        yield live


def lease_holder(cp: LiveControlPlane, candidates: list[LiveControlPlane]) -> int | None:
    """The PID of the candidate process holding the reconciler lease (None: nobody, or not one of
    them). SQLite: the `flock` owner in /proc/locks; PostgreSQL: the client port of the backend
    holding the advisory lock, matched to the candidates' TCP connections."""
    url = make_url(cp.env["LORAFLEET_DATABASE_URL"])
    pids = [c.pid for c in candidates if c.pid is not None]
    if url.get_backend_name() == "sqlite":
        lock_file = Path(url.database or "").with_suffix(".reconciler.lock")
        if not lock_file.exists():
            return None
        inode = os.stat(lock_file).st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
                return int(fields[4]) if int(fields[4]) in pids else None
        return None
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            ports = connection.execute(
                text(
                    "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :k "
                    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"k": LOCK_KEY},
            ).scalars().all()
    finally:
        engine.dispose()
    for pid in pids:
        local_ports = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.laddr}
        if local_ports & set(ports):
            return pid
    return None


def started_events(view: EndpointView) -> int:
    return len([e for e in view.events() if e["kind"] == "replica-started"])


def handle_pids(cp: LiveControlPlane) -> dict[str, int]:
    return {p.stem: json.loads(p.read_text())["pid"] for p in (cp.home / "replicas").glob("*.json")}


def test_one_reconciler_for_two_processes_and_the_survivor_adopts_the_replica(cp: LiveControlPlane) -> None:
    wait_for(lambda: lease_holder(cp, [cp]) == cp.pid, 30, "the first control plane holding the lease")
    with cp.sibling() as other:
        response = other.cli("list-tokens")  # same database: the second process sees the token
        assert cp.token[:10] in response.stdout
        first, second = EndpointView(cp, "ep-two-cps"), EndpointView(other, "ep-two-cps")
        created = httpx.post(
            f"{cp.url}/v2/endpoint/{cp.namespace}",
            json=real_body("ep-two-cps"),
            headers=cp.headers,
            timeout=30,
        )
        assert created.status_code == 200, created.text
        url = first.wait_running()["status"]["url"]
        assert second.running() is not None and second.get()["status"]["url"] == url
        other_url = url.replace(cp.url, other.url)  # both processes serve the gateway
        cp.wait_passes(PASSES_TO_WAIT)  # both processes keep looping: only the leader may start
        other.wait_passes(PASSES_TO_WAIT)
        assert lease_holder(cp, [cp, other]) == cp.pid
        ((key, pid),) = first.pids().items()
        assert handle_pids(cp) == {key: pid} and second.pids() == {key: pid}
        assert started_events(first) == 1 and started_events(second) == 1
        assert second.generate(url) and second.generate(other_url)

        cp.stop(signal.SIGKILL)  # the leader dies: the lock goes with its process / connection
        wait_for(lambda: lease_holder(cp, [other]) == other.pid, 60, "the second process taking the lease")
        other.wait_passes(PASSES_TO_WAIT)
        raw = second.get()
        assert raw["status"]["state"] == "running" and raw["status"]["url"] == url
        assert second.pids() == {key: pid} and handle_pids(cp) == {key: pid} and not gone(pid)
        assert started_events(second) == 1
        assert second.generate(other_url)

        # The survivor really reconciles: deleting the endpoint through it stops the adopted replica.
        httpx.delete(second.path, headers=other.headers, timeout=30).raise_for_status()
        wait_for(lambda: gone(pid) and not handle_pids(cp), 60, "the adopted replica stopped by the survivor")
