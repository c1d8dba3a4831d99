"""Real control planes for the SDK tests (subprocesses on free ports, fresh SQLite databases).

- `static_cp`: reconciler off, so endpoints keep the state the API gave them and no replica
  starts: every function, CLI command and error is exercised without spending CPU on replicas.
- `live_cp`: reconciler on, real `python -m lorafleet.runtime` replicas, the seed article's
  catalog (aws / us-east-1 / nvidia-l4 mapped onto this host's CPU), and no restart of a crashed
  replica so a broken endpoint turns `failed` at once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from lorafleet import Client, EndpointNotFound, delete_inference_endpoint

from tests.controlplane.live import REPO_ROOT, LiveControlPlane, live_controlplane
from tests.sdk.scripted_server import ScriptedServer

SEED_CATALOG = REPO_ROOT / "controlplane" / "catalog" / "seed-names.json"
CPU_INSTANCE = dict(
    framework="pytorch", accelerator="cpu", instance_size="x1", instance_type="cpu", region="local",
    vendor="local",
)


@pytest.fixture(scope="session")
def static_cp() -> Iterator[LiveControlPlane]:
    with live_controlplane(env={"LORAFLEET_RECONCILER_ENABLED": "false"}) as cp:
        yield cp


@pytest.fixture(scope="session")
def live_cp() -> Iterator[LiveControlPlane]:
    env = {"LORAFLEET_MAX_RESTARTS": "0", "LORAFLEET_BACKOFF_BASE_S": "0"}
    with live_controlplane(catalog=SEED_CATALOG, env=env) as cp:
        yield cp


@pytest.fixture
def static_client(static_cp: LiveControlPlane) -> Iterator[Client]:
    with Client(static_cp.url, static_cp.token) as client:
        yield client


@pytest.fixture
def live_client(live_cp: LiveControlPlane) -> Iterator[Client]:
    with Client(live_cp.url, live_cp.token) as client:
        yield client


class EndpointNames:
    """Unique endpoint names for one test; whatever is left of them is deleted afterwards."""

    def __init__(self) -> None:
        self.made: list[tuple[LiveControlPlane, str]] = []

    def __call__(self, cp: LiveControlPlane, prefix: str = "ep") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.made.append((cp, name))
        return name


@pytest.fixture
def endpoint_name() -> Iterator[EndpointNames]:
    names = EndpointNames()
    yield names
    for cp, name in names.made:
        with Client(cp.url, cp.token) as client, contextlib.suppress(EndpointNotFound):
            delete_inference_endpoint(name, client=client)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ScriptedServer]:
    """One scripted HTTP server per test module (for status codes the control plane never sends)."""
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def server(shared_server: ScriptedServer) -> ScriptedServer:
    """The module's scripted server with its script and request log cleared."""
    shared_server.reset()
    return shared_server
