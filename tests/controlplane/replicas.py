"""Helpers for the lifecycle tests that run REAL replicas (`python -m lorafleet.runtime` on the tiny
fixture model) under a live control plane (`tests.controlplane.live`).

Each replica costs a few seconds of CPU, so a test module shares one control plane
(`real_controlplane`) and each test creates its own endpoint and deletes it at the end
(`endpoint(...)`), checking that the delete really stops the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.controlplane.conftest import SEED_CATALOG, endpoint_body
from tests.controlplane.live import LiveControlPlane, live_controlplane
from tests.fixtures import standard_adapters, tiny_model

# Reconciler and gateway tuning for the tests: quick passes, quick backoff, two attempts before
# `failed`; gateways reload every 0.3 s, so a draining replica may stop after 1 s.
FAST_RECONCILER = {
    "LORAFLEET_RECONCILE_INTERVAL_S": "0.3",
    "LORAFLEET_BACKOFF_BASE_S": "0.2",
    "LORAFLEET_BACKOFF_MAX_S": "1",
    "LORAFLEET_MAX_RESTARTS": "1",
    "LORAFLEET_HEALTH_TIMEOUT_S": "5",
    "LORAFLEET_GATEWAY_REFRESH_S": "0.3",
    "LORAFLEET_GATEWAY_FLUSH_S": "0.5",
    "LORAFLEET_DRAIN_GRACE_S": "1",
}
ADAPTER_ID = "support"


def wait_for(check: Callable[[], Any], timeout_s: float = 90.0, what: str = "condition") -> Any:
    """Polls `check` until it returns something truthy (returned) or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@contextlib.contextmanager
def fresh_postgres(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped at exit); yields its URL."""
    name = f"lorafleet_real_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def real_controlplane(backend: str = "sqlite", **env: str) -> Iterator[LiveControlPlane]:
    """A live control plane launching the real runtime, on SQLite or a fresh PostgreSQL database
    (`LORAFLEET_TEST_DATABASE_URL` names the server)."""
    settings_env = {**FAST_RECONCILER, **env}
    if backend == "sqlite":
        with live_controlplane(catalog=SEED_CATALOG, env=settings_env) as cp:
            yield cp
        return
    with (
        fresh_postgres(os.environ["LORAFLEET_TEST_DATABASE_URL"]) as url,
        live_controlplane(catalog=SEED_CATALOG, database_url=url, env=settings_env) as cp,
    ):
        yield cp


def model_and_adapter() -> tuple[Path, Path]:
    """The tiny Mistral checkpoint and its rank-8 q/v adapter."""
    model_dir = tiny_model("mistral")
    return model_dir, standard_adapters(model_dir)["r8-qv"]


def real_body(name: str, adapter: Path | str | None = None, **env: str) -> dict[str, Any]:
    """A create body for the tiny model: the seed's custom image env (`MODEL_ID=/repository`, one
    adapter as `support`), small token limits; `env` adds to or overrides it."""
    model_dir, default_adapter = model_and_adapter()
    image_env = {
        "MODEL_ID": "/repository",
        "LORA_ADAPTERS": f"{ADAPTER_ID}={adapter or default_adapter}",
        "MAX_INPUT_LENGTH": "64",
        "MAX_TOTAL_TOKENS": "128",
        "LOG_LEVEL": "info",
        **env,
    }
    body = endpoint_body(name, task="text-generation")
    body["model"]["repository"] = str(model_dir)  # type: ignore[index]
    image = {"health_route": "/health", "url": "ghcr.io/huggingface/text-generation-inference:2.1.1"}
    body["model"]["image"] = {"custom": {**image, "env": image_env}}  # type: ignore[index]
    return body


class EndpointView:
    """One endpoint of a live control plane, seen through its HTTP API and the launcher's files."""

    def __init__(self, cp: LiveControlPlane, name: str) -> None:
        self.cp, self.name = cp, name
        self.path = f"{cp.url}/v2/endpoint/{cp.namespace}/{name}"

    def get(self) -> dict[str, Any]:
        response = httpx.get(self.path, headers=self.cp.headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def state(self) -> str:
        return self.get()["status"]["state"]

    def post(self, action: str) -> dict[str, Any]:
        response = httpx.post(f"{self.path}/{action}", headers=self.cp.headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def running(self) -> dict[str, Any] | None:
        raw = self.get()
        return raw if raw["status"]["state"] == "running" else None

    def wait_running(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Waits for `running` with the gateway answering its health route (what `wait()` checks)."""

        def ready() -> dict[str, Any] | None:
            raw = self.running()
            if not raw or not raw["status"].get("url"):
                return None
            health = httpx.get(raw["status"]["url"] + raw["healthRoute"], headers=self.cp.headers, timeout=30)
            return raw if health.status_code == 200 else None

        return wait_for(ready, timeout_s, f"{self.name} running (last: {self.get()['status']})")

    def wait_replaced(self, old_pids: set[int], timeout_s: float = 120.0) -> dict[str, Any]:
        """Waits until the endpoint runs on replicas none of which is one of `old_pids`."""

        def replaced() -> dict[str, Any] | None:
            pids = set(self.pids().values())
            return self.running() if pids and not pids & old_pids else None

        wait_for(replaced, timeout_s, f"{self.name} running on new replicas (last: {self.get()['status']})")
        return self.wait_running(timeout_s)

    def replica_urls(self) -> dict[str, str]:
        """replica key → the replica's own URL, from the process launcher's handle files."""
        found = {}
        for key in self.replica_keys():
            path = self.cp.home / "replicas" / f"{key}.json"
            if path.exists():
                handle = json.loads(path.read_text())
                found[key] = f"http://{handle['host']}:{handle['port']}"
        return found

    def replica_keys(self) -> list[str]:
        response = httpx.get(f"{self.path}/logs?tail=1", headers=self.cp.headers, timeout=30)
        response.raise_for_status()
        return [replica["id"] for replica in response.json()["replicas"]]

    def pids(self) -> dict[str, int]:
        """replica key → PID, from the process launcher's handle files."""
        found = {}
        for key in self.replica_keys():
            handle = self.cp.home / "replicas" / f"{key}.json"
            if handle.exists():
                found[key] = json.loads(handle.read_text())["pid"]
        return found

    def events(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.path}/events?limit=200", headers=self.cp.headers, timeout=30)
        response.raise_for_status()
        return response.json()["items"]

    def generate(self, url: str | None = None, adapter_id: str | None = ADAPTER_ID, max_new_tokens: int = 4,
                 token: str | None = None) -> str:
        """One TGI `/generate` request through the endpoint's URL (default: its `status.url`) with the
        user's token, as any client sends it; returns the text."""
        parameters: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if adapter_id:
            parameters["adapter_id"] = adapter_id
        base = url or self.get()["status"]["url"]
        response = httpx.post(f"{base}/generate", json={"inputs": "Hello there", "parameters": parameters},
                              timeout=60, headers={"Authorization": f"Bearer {token or self.cp.token}"})
        assert response.status_code == 200, response.text
        return response.json()["generated_text"]


def environ(pid: int) -> dict[str, str]:
    """A process's environment as the kernel holds it (readable by root and by its own user)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def handles(cp: LiveControlPlane) -> list[dict[str, Any]]:
    """The process launcher's handle files of every replica it runs."""
    return [json.loads(p.read_text()) for p in sorted((cp.home / "replicas").glob("*.json"))]


def api_key_of(cp: LiveControlPlane, url: str) -> str:
    """The own key of the replica serving `url`, read (as root) from its environment: only the
    control plane and that replica know it."""
    port = urlparse(url).port
    for handle in handles(cp):
        if handle["port"] == port:
            return environ(handle["pid"])["API_KEY"]
    raise AssertionError(f"no replica of {cp.url} serves {url}")


def gone(pid: int) -> bool:
    """Whether the process has exited (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextlib.contextmanager
def endpoint(cp: LiveControlPlane, body: dict[str, Any]) -> Iterator[EndpointView]:
    """Creates the endpoint; at exit deletes it and checks every replica process it had is gone."""
    response = httpx.post(f"{cp.url}/v2/endpoint/{cp.namespace}", json=body, headers=cp.headers, timeout=30)
    assert response.status_code == 200, response.text
    view = EndpointView(cp, body["name"])  # type: ignore[arg-type]
    try:
        yield view
    finally:
        pids = list(view.pids().values())
        httpx.delete(view.path, headers=cp.headers, timeout=30).raise_for_status()
        wait_for(lambda: all(gone(pid) for pid in pids), 60, f"replicas of deleted {view.name} stopped")
