"""Control-plane restarts with REAL replicas (`python -m lorafleet.runtime` on the tiny Mistral
fixture): the new process adopts replicas that are still alive (same PID, no duplicate, still
answering with the adapter), replaces those that died meanwhile and stops strays it does not know.
Runs on SQLite and, with LORAFLEET_TEST_DATABASE_URL, on PostgreSQL (whose reconciler lease is an
advisory lock held by the dead process's connection)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from tests.controlplane.conftest import BACKENDS
from tests.controlplane.live import LiveControlPlane
from tests.controlplane.replicas import endpoint, gone, real_body, real_controlplane, wait_for

pytestmark = pytest.mark.slow

# Reconciler passes to let run after a restart before checking that nothing was started or stopped
# (an absence can only be observed by letting the reconciler run: the test counts its passes).
PASSES_TO_WAIT = 5


@pytest.fixture(scope="module", params=BACKENDS)
def cp(request: pytest.FixtureRequest) -> Iterator[LiveControlPlane]:
    with real_controlplane(request.param) as live:
        yield live


def _handle_pids(cp: LiveControlPlane) -> dict[str, int]:
    return {p.stem: json.loads(p.read_text())["pid"] for p in (cp.home / "replicas").glob("*.json")}


@pytest.mark.parametrize("how", ["crash", "shutdown"])
def test_restart_adopts_the_live_replica_without_a_duplicate(cp: LiveControlPlane, how: str) -> None:
    sig = signal.SIGKILL if how == "crash" else signal.SIGTERM
    with endpoint(cp, real_body(f"ep-adopt-{how}")) as ep:
        url = ep.wait_running()["status"]["url"]
        assert ep.generate(url)
        ((key, pid),) = ep.pids().items()
        starts = len([e for e in ep.events() if e["kind"] == "replica-started"])
        cp.restart(sig)
        cp.wait_passes(PASSES_TO_WAIT)
        ep.wait_running()  # the new process's gateway serves the adopted replica
        raw = ep.get()
        assert raw["status"]["state"] == "running" and raw["status"]["url"] == url
        assert ep.pids() == {key: pid} and _handle_pids(cp) == {key: pid} and not gone(pid)
        assert len([e for e in ep.events() if e["kind"] == "replica-started"]) == starts
        assert ep.generate(url)


def test_restart_replaces_a_replica_that_died_meanwhile_and_stops_a_stray(cp: LiveControlPlane) -> None:
    """The stray is a plain sleeping Python process with a handle file (what a replica started by a
    lost control plane, whose database row is gone, looks like to the launcher): the launcher must
    stop it whatever it runs, so it need not be a runtime."""
    with endpoint(cp, real_body("ep-replace")) as ep:
        url = ep.wait_running()["status"]["url"]
        (dead,) = ep.pids().values()
        cp.stop()
        os.killpg(dead, signal.SIGKILL)
        wait_for(lambda: gone(dead), 30, "replica killed")
        stray = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        handle = {
            "replica_key": "rep-stray",
            "launcher": "process",
            "pid": stray.pid,
            "started": psutil.Process(stray.pid).create_time(),
            "port": 1,
            "host": "127.0.0.1",
            "gpus": [],
            "log": "",
            "digest": "",
        }
        (cp.home / "replicas" / "rep-stray.json").write_text(json.dumps(handle))
        cp.start()
        assert stray.wait(timeout=60) == -signal.SIGTERM
        assert ep.wait_replaced({dead})["status"]["url"] == url
        (new_pid,) = ep.pids().values()
        assert set(_handle_pids(cp).values()) == {new_pid} and new_pid != dead
        assert ep.generate(url)
        failures = [e["message"] for e in ep.events() if e["kind"] == "replica-failed"]
        assert len(failures) == 1 and "exited" in failures[0] and "model loaded and ready" in failures[0]
