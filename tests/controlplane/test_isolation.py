"""Attacks of a hostile tenant on the host, the control plane and other tenants (issue 12), each
written as the attack, against a real control plane whose process launcher runs real replicas in
its real sandbox.

The replica command is `tenant_replica.py`: it stands for a tenant's input that got to run code in
its replica, and reports what it can open, write, list and read. Two tenants (alice, bob) each run
one endpoint on a model folder of their own under LOCAL_ROOTS.

These tests need the sandbox the process launcher uses on a root host with bubblewrap (CI: `make
setup` installs it): without it they fail, saying so, rather than pass on an unconfined host.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.controlplane.conftest import SEED_CATALOG, endpoint_body
from tests.controlplane.dashboard.conftest import signed_in_client
from tests.controlplane.live import LiveControlPlane, live_controlplane
from tests.controlplane.replicas import EndpointView, api_key_of, environ, handles, wait_for

TENANT_REPLICA = Path(__file__).with_name("tenant_replica.py")
CANARY = "canary-of-the-control-plane-4f1c"
MARKER = Path("/tmp/lorafleet-pwned-by-env")


@pytest.fixture(scope="module")
def cp() -> Iterator[LiveControlPlane]:
    env = {
        "LORAFLEET_SANDBOX_PATHS": str(TENANT_REPLICA),
        "LORAFLEET_SECRET_KEY": "",  # the generated key file, `<home>/secret.key`, is a target too
        "LORAFLEET_CANARY": CANARY,
        "CONTROL_PLANE_CANARY": CANARY,
        "LORAFLEET_RECONCILE_INTERVAL_S": "0.3",
    }
    command = f"{sys.executable} {TENANT_REPLICA}"
    with live_controlplane(catalog=SEED_CATALOG, runtime_command=command, env=env) as live:
        yield live


class Tenant:
    """One namespace with one running endpoint on a model folder of its own."""

    def __init__(self, cp: LiveControlPlane, namespace: str, token: str) -> None:
        self.cp, self.namespace, self.token = cp, namespace, token
        self.model = cp.local_models / f"{namespace}-model"
        self.model.mkdir(mode=0o755, exist_ok=True)
        (self.model / "config.json").write_text("{}")
        (self.model / "config.json").chmod(0o644)
        body = endpoint_body(f"ep-{namespace}")
        body["model"]["repository"] = str(self.model)  # type: ignore[index]
        self.path = f"{cp.url}/v2/endpoint/{namespace}/ep-{namespace}"
        created = httpx.post(f"{cp.url}/v2/endpoint/{namespace}", json=body, headers=self.headers, timeout=30)
        assert created.status_code == 200, created.text
        wait_for(lambda: self.status().get("url"), 60, f"{namespace}'s endpoint running")
        logs = httpx.get(f"{self.path}/logs?tail=1", headers=self.headers, timeout=30).json()
        keys = {replica["id"] for replica in logs["replicas"]}
        (self.handle,) = [h for h in handles(cp) if h["replica_key"] in keys]
        self.url = f"http://{self.handle['host']}:{self.handle['port']}"  # its replica, not the gateway
        self.key = api_key_of(cp, self.url)

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def status(self) -> dict[str, Any]:
        return httpx.get(self.path, headers=self.headers, timeout=30).json()["status"]

    def ask(self, route: str, **query: str) -> Any:
        """Runs one probe inside this tenant's replica."""
        response = httpx.get(f"{self.url}{route}", params=query, timeout=30,
                             headers={"Authorization": f"Bearer {self.key}"})
        assert response.status_code == 200, response.text
        return response.json()

    def can_open(self, path: Path | str) -> bool:
        return bool(self.ask("/open", path=str(path))["opened"])

    def can_write(self, path: Path | str) -> bool:
        return bool(self.ask("/write", path=str(path))["opened"])


@pytest.fixture(scope="module")
def alice(cp: LiveControlPlane) -> Tenant:
    return Tenant(cp, "alice", cp.token)


@pytest.fixture(scope="module")
def bob(cp: LiveControlPlane, alice: Tenant) -> Tenant:
    return Tenant(cp, "bob", cp.create_token("bob"))


def _group(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_replicas_run_sandboxed_as_an_unprivileged_uid_per_namespace(alice: Tenant, bob: Tenant) -> None:
    for tenant in (alice, bob):
        assert tenant.handle["isolation"] == "sandbox, one uid per namespace", (
            "replicas are not sandboxed on this host: install bubblewrap (make setup) and run as root"
        )
        me = tenant.ask("/whoami")
        assert me["uid"] == me["gid"] == tenant.handle["uid"] and me["uid"] >= 1000 and me["groups"] == []
        assert me["pid"] <= 3  # its own PID namespace: it is (about) the first process there
    assert alice.handle["uid"] != bob.handle["uid"]


def test_replica_environment_holds_nothing_of_the_control_plane(cp: LiveControlPlane, alice: Tenant) -> None:
    """Read from the kernel, for every process of the replica (the sandbox's and the server)."""
    leaked_names = {name for name in cp.env if name.startswith("LORAFLEET_")} | {"CONTROL_PLANE_CANARY",
                                                                                 "PYTHONPATH"}
    processes = _group(alice.handle["pid"])
    assert len(processes) >= 2
    for process in processes:
        env = environ(process.pid)
        assert not leaked_names & set(env), (process.name(), sorted(leaked_names & set(env)))
        assert CANARY not in json.dumps(env) and cp.env["LORAFLEET_DATABASE_URL"] not in json.dumps(env)
    inside = alice.ask("/whoami")["environ"]
    assert inside["API_KEY"] == alice.key and inside["HOSTNAME"] == "127.0.0.1"
    assert set(inside) <= {
        "PATH", "LANG", "PYTHONUNBUFFERED", "HF_HUB_OFFLINE", "HOME", "HF_HOME", "TMPDIR", "PORT", "HOSTNAME",
        "CUDA_VISIBLE_DEVICES", "NUM_SHARD", "LOG_FILE", "LOG_MAX_BYTES", "API_KEY", "MODEL_ID", "PWD",
        "OMP_NUM_THREADS",  # the CPU instance's cores, set by the launcher
    }, sorted(inside)


def test_replica_cannot_open_the_control_planes_database_key_or_state(
    cp: LiveControlPlane, alice: Tenant
) -> None:
    database = Path(cp.env["LORAFLEET_DATABASE_URL"].removeprefix("sqlite:///"))
    key_file = cp.home / "secret.key"
    assert database.exists() and key_file.exists()  # the targets are real
    for target in (database, Path(f"{database}-wal"), key_file, cp.home / "replica-uids.json",
                   cp.home / "replicas" / f"{alice.handle['replica_key']}.json", cp.log_path):
        assert not alice.can_open(target), target
    # It sees only the folders bubblewrap made to hold its own: not even the state's file names.
    skeleton = {"namespaces", "replicas", "local-models"}
    assert set(alice.ask("/listdir", path=str(cp.home))["names"]) <= skeleton
    assert alice.ask("/listdir", path=str(cp.home / "replicas"))["names"] == [alice.handle["replica_key"]]


def test_replica_cannot_read_another_replicas_environment_log_or_model(alice: Tenant, bob: Tenant) -> None:
    alice.ask("/whoami")  # alice's replica logs the request to its LOG_FILE
    alice_folder = Path(alice.handle["folder"])
    assert (alice_folder / "replica.log").exists()
    readable = bob.ask("/environs")
    assert readable and all(int(pid) <= 3 for pid in readable)  # bob's own sandbox, nothing else
    assert alice.key not in json.dumps(readable)
    assert not bob.can_open(f"/proc/{alice.handle['pid']}/environ")  # that PID is not in bob's namespace
    alice_home = Path(bob.handle["folder"]).parents[1] / "namespaces" / "alice"
    for target in (alice_folder / "replica.log", alice_folder.with_name(f"{alice_folder.name}.output.log"),
                   alice.model / "config.json", alice_home):
        assert not bob.can_open(target), target
    assert bob.can_open(bob.model / "config.json")  # its own model folder, read-only
    assert not bob.can_write(bob.model / "planted.json")


def test_replica_writes_only_its_own_folders(bob: Tenant) -> None:
    own = Path(bob.handle["folder"])
    assert bob.can_write(own / "tmp" / "scratch")
    assert bob.can_write(bob.ask("/whoami")["environ"]["HOME"] + "/x")
    code = str(TENANT_REPLICA.parent / "planted")
    for target in ("/usr/planted", "/etc/planted", f"{sys.prefix}/planted", code):
        assert not bob.can_write(target), target
    assert bob.can_write("/tmp/planted-by-bob")  # its private /tmp, not the host's
    assert not Path("/tmp/planted-by-bob").exists()


@pytest.mark.parametrize("where", ["env", "image", "secrets"])
def test_the_env_trick_of_the_issue_is_refused_and_runs_nothing(cp: LiveControlPlane, where: str) -> None:
    hostile = {"PYTHONWARNINGS": "all:0:antigravity.x:0:0", "BROWSER": f"/bin/sh -c 'touch {MARKER}' #%s"}
    body = endpoint_body(f"ep-trick-{where}")
    if where == "image":
        body["model"]["image"] = {"custom": {"url": "tgi", "health_route": "/health", "env": hostile}}  # type: ignore[index]
    else:
        body["model"][where] = hostile  # type: ignore[index]
    response = httpx.post(f"{cp.url}/v2/endpoint/{cp.namespace}", json=body, headers=cp.headers, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"].endswith(".PYTHONWARNINGS") and "HF_TOKEN" in error["accepted"]
    assert "PYTHONWARNINGS" in error["error"] and "MAX_TOTAL_TOKENS" in error["error"]
    cp.wait_passes(3)  # several reconciler passes: nothing may start
    assert not MARKER.exists()
    assert httpx.get(f"{response.url}/ep-trick-{where}", headers=cp.headers).status_code == 404


def test_probes_and_try_it_use_the_replica_key_never_the_users_token(cp: LiveControlPlane) -> None:
    body = endpoint_body("ep-keys")
    body["compute"]["scaling"] = {"minReplica": 1, "maxReplica": 2}  # type: ignore[index]  # probes /metrics
    response = httpx.post(f"{cp.url}/v2/endpoint/{cp.namespace}", json=body, headers=cp.headers, timeout=30)
    assert response.status_code == 200, response.text
    view = EndpointView(cp, "ep-keys")
    view.wait_running(60)  # running and served by the gateway (its URL alone can come first)
    (url,) = view.replica_urls().values()  # the replica itself: it tells what it was sent
    key = api_key_of(cp, url)
    seen = lambda: httpx.get(f"{url}/seen", headers={"Authorization": f"Bearer {key}"}).json()  # noqa: E731
    wait_for(lambda: "GET /metrics" in seen()["served"], 30, "a probe of /metrics with the key")
    client, csrf = signed_in_client(cp)
    try:
        tried = client.post("/dashboard/endpoints/ep-keys/try", headers={"accept": "application/json"},
                            data={"csrf_token": csrf, "prompt": "Hi", "adapter_id": "a"})
    finally:
        client.close()
    assert tried.status_code == 200 and tried.json()["generated_text"] == "a says: Hi", tried.text
    final = seen()
    assert "POST /generate" in final["served"] and final["refused"] == []
    assert cp.token not in json.dumps(final)
    assert key not in json.dumps(view.get()) + json.dumps(view.events())
    assert httpx.get(f"{url}/whoami", headers={"Authorization": f"Bearer {cp.token}"}).status_code == 401
    httpx.delete(view.path, headers=cp.headers, timeout=30).raise_for_status()


def test_control_planes_files_are_private(cp: LiveControlPlane, alice: Tenant) -> None:
    database = Path(cp.env["LORAFLEET_DATABASE_URL"].removeprefix("sqlite:///"))
    for path, mode in ((cp.home, 0o700), (database, 0o600), (cp.home / "secret.key", 0o600),
                       (cp.home / "replicas", 0o700),
                       (cp.home / "replicas" / f"{alice.handle['replica_key']}.json", 0o600),
                       (Path(alice.handle["folder"]), 0o700)):
        assert path.stat().st_mode & 0o777 == mode, path
    assert Path(alice.handle["folder"]).stat().st_uid == alice.handle["uid"]
    assert os.stat(cp.home / "replicas" / f"{alice.handle['replica_key']}.output.log").st_uid == os.getuid()
