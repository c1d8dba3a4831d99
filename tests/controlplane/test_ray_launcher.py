"""The `ray` launcher against a real two-node Ray cluster (head + one node advertising an L4).

These tests drive `RayLauncher` directly. The replica command is a small real HTTP server
(`LORAFLEET_RUNTIME_COMMAND` is a supported setting) so that placement, environment, logs,
stop and adoption are checked in seconds; `test_ray_endpoint.py` runs the real runtime through
the control plane and the SDK.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator

import httpx
import pytest
import ray
from lorafleet.controlplane.catalog.types import InstanceType
from lorafleet.controlplane.launchers import ray_replica
from lorafleet.controlplane.launchers.base import ImpossibleRequestError, NoCapacityError, ReplicaSpec
from lorafleet.controlplane.launchers.ray import RayLauncher

from tests.controlplane.ray_cluster import RayTestCluster, free_gpus, ray_cluster, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

SERVER = textwrap.dedent("""
    import http.server, json, os, sys
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(dict(os.environ)).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *args):
            pass
    print("test server listening on", os.environ["PORT"], "args", sys.argv[1:], flush=True)
    http.server.HTTPServer((os.environ["HOSTNAME"], int(os.environ["PORT"])), Handler).serve_forever()
""")
CRASHING = "import sys; print('loading model... out of memory', flush=True); sys.exit(3)"

L4_X1 = InstanceType("local", "local", "nvidia-l4", "x1", "gpu", 1, "nvidia-l4")
CPU_X1 = InstanceType("local", "local", "cpu", "x1", "cpu", 0, None, num_cpus=1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayTestCluster]:
    with ray_cluster() as running:
        yield running


@pytest.fixture
def launcher(cluster: RayTestCluster) -> Iterator[RayLauncher]:
    launcher = RayLauncher(
        address=cluster.address,
        command=[sys.executable, "-c", SERVER],
        placement_timeout_s=60,
        call_timeout_s=30,
        stop_grace_s=5,
    )
    yield launcher
    for handle in launcher.adopt():  # leave the module's cluster empty for the next test
        launcher.stop(handle)


def spec(key: str, instance: InstanceType = L4_X1, model_id: str = "/models/tiny") -> ReplicaSpec:
    return ReplicaSpec(
        replica_key=key,
        endpoint_namespace="alice",
        endpoint_name="ep",
        instance=instance,
        env={"MODEL_ID": model_id},
        args=("--flag",),
        api_key=f"key-of-{key}",
        digest=f"digest-of-{model_id}",  # the planner's replica digest: changes with the spec
    )


def served_env(url: str) -> dict[str, str]:
    def answer() -> dict[str, str] | None:
        try:
            return json.loads(httpx.get(url, timeout=5).text)
        except httpx.TransportError:
            return None

    return wait_for(answer, what=f"the replica at {url}")


def test_catalog_offers_the_clusters_gpu_model_and_cpu_under_the_files_names(launcher: RayLauncher) -> None:
    catalog = launcher.catalog()
    offered = {(c.vendor, c.region, c.instance_type, c.instance_size) for c in catalog.instances()}
    assert ("local", "local", "nvidia-l4", "x1") in offered
    assert ("local", "local", "cpu", "x1") in offered
    assert not any(c.instance_type == "nvidia-l4" and c.instance_size == "x2" for c in catalog.instances())
    assert not any(c.instance_type == "nvidia-h200" for c in catalog.instances())


def test_validate_refuses_what_no_node_can_ever_hold(launcher: RayLauncher) -> None:
    launcher.validate(L4_X1)
    h200 = InstanceType("local", "local", "nvidia-h200", "x8", "gpu", 8, "nvidia-h200")
    with pytest.raises(ImpossibleRequestError) as refused:
        launcher.validate(h200)
    assert "nvidia-h200" in refused.value.message and "nvidia-l4 up to x1" in refused.value.message
    l4_x2 = InstanceType("local", "local", "nvidia-l4", "x2", "gpu", 2, "nvidia-l4")
    with pytest.raises(ImpossibleRequestError, match="the most on one node is 1"):
        launcher.validate(l4_x2)


def test_gpu_replica_runs_on_the_l4_node_with_the_gpu_ray_assigned(
    launcher: RayLauncher, cluster: RayTestCluster
) -> None:
    handle = start_when_free(launcher, spec("rep-gpu"))
    assert handle["node_id"] == cluster.gpu_node_ids[0]
    assert handle["actor_name"] == "alice/ep/rep-gpu" and handle["replica_key"] == "rep-gpu"
    status = launcher.status(handle)
    assert status.phase == "running" and status.url == handle["url"]
    env = served_env(status.url)
    assert (env["PORT"], env["CUDA_VISIBLE_DEVICES"], env["NUM_SHARD"]) == (str(handle["port"]), "0", "1")
    assert env["MODEL_ID"] == "/models/tiny"
    # The node's own address behind the replica's key, never 0.0.0.0; a minimal environment.
    assert env["HOSTNAME"] == handle["host"] != "0.0.0.0" and env["API_KEY"] == "key-of-rep-gpu"
    assert not [name for name in env if name.startswith("RAY_")] and "NOTE" not in env
    assert set(env) <= {"PORT", "HOSTNAME", "CUDA_VISIBLE_DEVICES", "NUM_SHARD", "MODEL_ID", "API_KEY",
                        "HOME", "TMPDIR", "HF_HOME", "PATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "TZ",
                        "VIRTUAL_ENV", "CONDA_PREFIX", "PWD", "LC_CTYPE"}, sorted(env)
    assert any("args ['--flag']" in line for line in launcher.logs(handle))
    wait_for(lambda: free_gpus(cluster.gpu_node_ids[0]) == 0.0, what="Ray to count the GPU as used")
    assert launcher.used_accelerators(L4_X1) == 1


def test_cpu_replica_gets_no_gpu(launcher: RayLauncher) -> None:
    handle = launcher.start(spec("rep-cpu", CPU_X1))
    assert served_env(launcher.status(handle).url)["CUDA_VISIBLE_DEVICES"] == ""


def test_runtime_env_reaches_the_replica(cluster: RayTestCluster) -> None:
    launcher = RayLauncher(address=cluster.address, command=[sys.executable, "-c", SERVER],
                           runtime_env={"env_vars": {"NOTE": "set by the runtime_env"}})
    handle = launcher.start(spec("rep-env", CPU_X1))
    try:
        assert served_env(handle["url"])["NOTE"] == "set by the runtime_env"
    finally:
        launcher.stop(handle)


def test_second_l4_replica_waits_for_capacity_until_the_first_stops(
    launcher: RayLauncher, cluster: RayTestCluster
) -> None:
    first = start_when_free(launcher, spec("rep-a"))
    with pytest.raises(NoCapacityError, match="waiting for capacity: 1 x nvidia-l4 fits 1 node"):
        launcher.start(spec("rep-b"))
    launcher.stop(first)
    second = start_when_free(launcher, spec("rep-b"))
    assert second["node_id"] == cluster.gpu_node_ids[0]


def _try_start(launcher: RayLauncher, replica: ReplicaSpec) -> dict | None:
    try:
        return launcher.start(replica)
    except NoCapacityError:
        return None


def start_when_free(launcher: RayLauncher, replica: ReplicaSpec) -> dict:
    """Starts `replica` once Ray reports the GPU a previous test released as free."""
    return wait_for(lambda: _try_start(launcher, replica), what="free capacity")


def test_stop_ends_the_server_and_frees_the_gpu(launcher: RayLauncher, cluster: RayTestCluster) -> None:
    handle = start_when_free(launcher, spec("rep-stop"))
    served_env(handle["url"])
    launcher.stop(handle)
    launcher.stop(handle)  # idempotent
    with pytest.raises(httpx.TransportError):
        httpx.get(handle["url"], timeout=5)
    assert launcher.status(handle).phase == "exited"
    wait_for(lambda: free_gpus(cluster.gpu_node_ids[0]) == 1.0, what="the GPU to be free again")
    assert launcher.adopt() == []


def test_killed_actor_is_reported_exited_and_takes_its_server_along(launcher: RayLauncher) -> None:
    handle = start_when_free(launcher, spec("rep-kill"))
    served_env(handle["url"])
    ray.kill(ray.get_actor(handle["actor_name"], namespace="lorafleet"), no_restart=True)
    status = wait_for(lambda: (s := launcher.status(handle)).phase == "exited" and s, what="exited")
    assert "rep-kill" in status.message
    wait_for(lambda: _refuses(handle["url"]), what="the orphaned server to die with its actor")


def _refuses(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return True
    return False


def test_crashed_server_is_exited_with_its_code_and_last_log_lines(cluster: RayTestCluster) -> None:
    launcher = RayLauncher(address=cluster.address, command=[sys.executable, "-c", CRASHING])
    handle = launcher.start(spec("rep-crash", CPU_X1))
    status = wait_for(lambda: (s := launcher.status(handle)).phase == "exited" and s, what="the crash")
    assert status.exit_code == 3
    assert launcher.logs(handle) == ["loading model... out of memory"]
    launcher.stop(handle)


def test_new_launcher_adopts_live_replicas_and_start_does_not_duplicate(
    launcher: RayLauncher, cluster: RayTestCluster
) -> None:
    handle = start_when_free(launcher, spec("rep-adopt"))
    restarted = RayLauncher(address=cluster.address, command=[sys.executable, "-c", SERVER])
    adopted = restarted.adopt()
    assert [(h["replica_key"], h["actor_id"], h["url"]) for h in adopted] == [
        ("rep-adopt", handle["actor_id"], handle["url"])
    ]
    again = restarted.start(spec("rep-adopt"))
    assert again["actor_id"] == handle["actor_id"]
    assert len(ray.util.list_named_actors(all_namespaces=True)) == 1


def test_changed_spec_replaces_the_actor_under_the_same_name(launcher: RayLauncher) -> None:
    old = launcher.start(spec("rep-upd", CPU_X1, model_id="/models/a"))
    new = launcher.start(spec("rep-upd", CPU_X1, model_id="/models/b"))
    assert new["actor_id"] != old["actor_id"]
    assert served_env(new["url"])["MODEL_ID"] == "/models/b"
    assert launcher.status(old).phase == "exited"


def test_unplaceable_actor_is_adopted_as_starting_and_stopped_at_once(cluster: RayTestCluster) -> None:
    # An actor that answers nothing within status_timeout_s counts as not started.
    launcher = RayLauncher(address=cluster.address, status_timeout_s=1.0)
    launcher.catalog()  # connects the driver (and ships the actor class by value)
    pending = ray.remote(ray_replica.ReplicaServer).options(
        name="alice/ep/rep-pending", namespace="lorafleet", lifetime="detached",
        num_cpus=0, resources={"accelerator_type:H200": 0.001}).remote(None, [], {}, "digest")
    (handle,) = launcher.adopt()
    assert handle["replica_key"] == "rep-pending" and "url" not in handle
    status = launcher.status(handle)
    assert (status.phase, status.url) == ("starting", None)
    assert "waiting for Ray to place it" in status.message
    launcher.stop(handle)
    assert launcher.adopt() == []
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(pending.describe.remote(), timeout=30)


@pytest.mark.slow  # Ray needs a few health-check periods to declare a killed node dead
def test_lost_node_ends_its_replica_and_takes_its_gpu_model_out_of_the_catalog(
        launcher: RayLauncher, cluster: RayTestCluster) -> None:
    a10g = InstanceType("local", "local", "nvidia-a10g", "x1", "gpu", 1, "nvidia-a10g")
    with cluster.extra_gpu_node("A10G") as node_id:
        wait_for(lambda: ("nvidia-a10g", "x1") in _offered(launcher), what="the new node in the catalog")
        handle = launcher.start(spec("rep-a10g", a10g))
        assert handle["node_id"] == node_id
        served_env(handle["url"])
        cluster.kill_node(node_id)
        status = wait_for(lambda: (s := launcher.status(handle)).phase == "exited" and s,
                          what="the replica on the lost node to be exited")
        assert "rep-a10g" in status.message
        wait_for(lambda: ("nvidia-a10g", "x1") not in _offered(launcher), what="the catalog to drop A10G")
        with pytest.raises(ImpossibleRequestError, match="no node has nvidia-a10g GPUs"):
            launcher.validate(a10g)
        launcher.stop(handle)


def _offered(launcher: RayLauncher) -> set[tuple[str, str]]:
    return {(c.instance_type, c.instance_size) for c in launcher.catalog().instances()}
