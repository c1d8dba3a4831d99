"""An endpoint on a real two-node Ray cluster, end to end: SDK → control plane → Ray actor → runtime.

One module-scoped cluster (head: 1 CPU; second node: 1 CPU, one "L4") and one control plane
(`LORAFLEET_LAUNCHER=ray`) in a subprocess serve every test here, in order: the `nvidia-l4`
endpoint lands on the L4 node, serves adapter requests, is restarted by the reconciler after its
actor is killed, is adopted (not duplicated) by a restarted control plane, and frees the GPU
and the actor on delete. The runtime runs on the CPU (no CUDA here) with the tiny test model.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import lorafleet
import pytest
import ray
from lorafleet.controlplane.launchers.ray import DEFAULT_RAY_NAMESPACE

from tests.controlplane.live import LiveControlPlane, live_controlplane
from tests.controlplane.ray_cluster import RayTestCluster, free_gpus, ray_cluster, wait_for
from tests.controlplane.replicas import environ
from tests.fixtures import standard_adapters, tiny_model

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

SERVE_TIMEOUT_S = 400.0  # a replica loads torch and the model on a loaded 2-core machine
ADAPTERS = ("r8-qv", "r16-all")


@dataclass(frozen=True)
class Deployment:
    cluster: RayTestCluster
    controlplane: LiveControlPlane
    client: lorafleet.Client


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    standard_adapters(tiny_model("mistral"))  # build the fixtures before the clock of any wait starts
    with ray_cluster() as cluster:
        env = {"LORAFLEET_RAY_ADDRESS": cluster.address, "HF_HUB_OFFLINE": "1"}
        with live_controlplane(launcher="ray", env=env, startup_timeout_s=120) as cp:
            ray.init(address=cluster.address, namespace=DEFAULT_RAY_NAMESPACE, log_to_driver=False,
                     logging_level="WARNING")  # the test is a second driver, to look at actors
            with lorafleet.Client(cp.url, cp.token) as client:
                try:
                    yield Deployment(cluster, cp, client)
                finally:
                    with contextlib.suppress(lorafleet.EndpointNotFound):
                        lorafleet.delete_inference_endpoint("multi-lora", client=client)
    # live_controlplane stopped leftover actors; ray_cluster() shut the driver and the nodes down.


def create_l4_endpoint(client: lorafleet.Client) -> lorafleet.InferenceEndpoint:
    model_dir = tiny_model("mistral")
    adapters = standard_adapters(model_dir)
    lora = ",".join(f"{name}={adapters[name]}" for name in ADAPTERS)
    return lorafleet.create_inference_endpoint(
        "multi-lora", repository=str(model_dir), framework="pytorch", accelerator="gpu",
        instance_size="x1", instance_type="nvidia-l4", region="local", vendor="local",
        task="text-generation", env={"LORA_ADAPTERS": lora, "MAX_TOTAL_TOKENS": "256"}, client=client)


def replica_actors() -> dict[str, dict]:
    """Live replica actors of the control plane: name → `describe()` (node, port, pid, ...)."""
    described = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == DEFAULT_RAY_NAMESPACE:
            with contextlib.suppress(ValueError, ray.exceptions.RayActorError):
                actor = ray.get_actor(entry["name"], namespace=DEFAULT_RAY_NAMESPACE)
                described[entry["name"]] = {**ray.get(actor.describe.remote(), timeout=60),
                                            "actor_id": actor._actor_id.hex()}
    return described


def running(client: lorafleet.Client) -> lorafleet.InferenceEndpoint:
    endpoint = lorafleet.get_inference_endpoint("multi-lora", client=client)
    return endpoint.wait(timeout=SERVE_TIMEOUT_S, refresh_every=1)


def first_token_logprobs(endpoint: lorafleet.InferenceEndpoint) -> dict[str | None, float]:
    """Greedy first-token log-probability for the base model and each adapter, asked through the
    endpoint's URL (the gateway forwards to the actor's server with its key) as any client would."""
    logprobs = {}
    client = endpoint.client
    for adapter in (None, *ADAPTERS):
        out = client.text_generation("the fleet serves", max_new_tokens=2, details=True, adapter_id=adapter)
        logprobs[adapter] = out.details.tokens[0].logprob
    return logprobs


def served_through_the_gateway(endpoint: lorafleet.InferenceEndpoint) -> dict[str | None, float] | None:
    """`first_token_logprobs`, or None while the gateway still knows only a replica that is gone."""
    try:
        return first_token_logprobs(endpoint)
    except Exception:  # huggingface_hub's HTTP errors (a 502 or 503 from the gateway)
        return None


@pytest.mark.parametrize(("instance_type", "size", "message"), [
    ("nvidia-h200", "x8", "unknown instance type 'nvidia-h200' in local/local; "
                          "available instance types: cpu, nvidia-l4"),
    ("nvidia-l4", "x2", "unknown instance size 'x2' for 'nvidia-l4'; available sizes: x1"),
])
def test_instance_no_node_can_hold_is_refused_at_create_time(
        deployment: Deployment, instance_type: str, size: str, message: str) -> None:
    # The catalog is the cluster's: this host has no GPU, the second Ray node has one L4.
    with pytest.raises(lorafleet.ValidationError, match=re.escape(message)):
        lorafleet.create_inference_endpoint(
            "too-big", repository=str(tiny_model("mistral")), framework="pytorch", accelerator="gpu",
            instance_size=size, instance_type=instance_type, region="local", vendor="local",
            client=deployment.client)
    assert replica_actors() == {}


def test_l4_endpoint_lands_on_the_gpu_node_and_serves_every_adapter(deployment: Deployment) -> None:
    create_l4_endpoint(deployment.client)
    endpoint = running(deployment.client)
    (name, actor), = replica_actors().items()
    assert name.startswith(f"{deployment.controlplane.namespace}/multi-lora/rep-")
    assert actor["node_id"] == deployment.cluster.gpu_node_ids[0]
    assert actor["gpu_ids"] == ["0"]
    cp = deployment.controlplane
    assert endpoint.url == f"{cp.url}/endpoints/{cp.namespace}/multi-lora"  # the gateway, not the actor
    key = {"Authorization": f"Bearer {environ(actor['pid'])['API_KEY']}"}
    assert httpx.get(f"{_url(actor)}/info", headers=key, timeout=30).status_code == 200  # the actor itself
    logprobs = first_token_logprobs(endpoint)
    assert len(set(logprobs.values())) == len(logprobs), f"adapters must change the output: {logprobs}"
    assert free_gpus(deployment.cluster.gpu_node_ids[0]) == 0.0


def test_second_l4_endpoint_stays_pending_with_the_reason_while_the_gpu_is_taken(
        deployment: Deployment) -> None:
    args = {"repository": str(tiny_model("mistral")), "framework": "pytorch", "accelerator": "gpu",
            "instance_size": "x1", "instance_type": "nvidia-l4", "region": "local", "vendor": "local"}
    second = lorafleet.create_inference_endpoint("second", client=deployment.client, **args)
    try:
        message = wait_for(lambda: "capacity" in (m := second.fetch().raw["status"].get("message") or "")
                           and m, timeout_s=120, what="the pending reason")
        assert second.status == "pending"
        assert message == (
            "waiting for capacity: 1 x nvidia-l4 fits 1 node(s) of the Ray cluster, but none has it free now")
        assert len(replica_actors()) == 1
    finally:
        second.delete()
    wait_for(lambda: _gone(deployment.client, "second"), timeout_s=60, what="the second endpoint to go")


def _gone(client: lorafleet.Client, name: str) -> bool:
    try:
        lorafleet.get_inference_endpoint(name, client=client)
    except lorafleet.EndpointNotFound:
        return True
    return False


def test_killed_actor_is_replaced_by_the_reconciler(deployment: Deployment) -> None:
    (name, before), = replica_actors().items()
    ray.kill(ray.get_actor(name, namespace=DEFAULT_RAY_NAMESPACE), no_restart=True)
    replaced = wait_for(lambda: [a for a in replica_actors().values() if a["actor_id"] != before["actor_id"]],
                        timeout_s=SERVE_TIMEOUT_S, what="a replacement actor")
    assert replaced[0]["node_id"] == deployment.cluster.gpu_node_ids[0]
    wait_for(lambda: _healthy(_url(replaced[0])), timeout_s=SERVE_TIMEOUT_S, what="the new replica")
    endpoint = running(deployment.client)
    assert wait_for(lambda: served_through_the_gateway(endpoint), timeout_s=SERVE_TIMEOUT_S,
                    what="the endpoint to serve from the new replica")
    assert len(replica_actors()) == 1


def test_restarted_controlplane_adopts_the_replica_and_stops_orphans(deployment: Deployment) -> None:
    (name, before), = replica_actors().items()
    url = running(deployment.client).url
    orphan = _start_orphan_actor(deployment)
    deployment.controlplane.restart()
    # The new leader adopts on its first pass: the orphan (no row in the database) is stopped...
    wait_for(lambda: orphan not in replica_actors(), timeout_s=120, what="the orphan to be stopped")
    endpoint = running(deployment.client)
    # ...and the endpoint's own replica is kept: same actor, same URL, nothing started beside it.
    assert {n: a["actor_id"] for n, a in replica_actors().items()} == {name: before["actor_id"]}
    assert endpoint.url == url
    assert wait_for(lambda: served_through_the_gateway(endpoint), timeout_s=120, what="the adopted replica")


def test_delete_frees_the_gpu_and_leaves_no_actor(deployment: Deployment) -> None:
    (_, actor), = replica_actors().items()
    lorafleet.delete_inference_endpoint("multi-lora", client=deployment.client)
    wait_for(lambda: replica_actors() == {}, timeout_s=120, what="the replica actor to be gone")
    wait_for(lambda: free_gpus(deployment.cluster.gpu_node_ids[0]) == 1.0, timeout_s=60,
             what="the L4 to be free")
    with pytest.raises(httpx.TransportError):
        httpx.get(_url(actor) + "/health", timeout=5)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _url(actor: dict) -> str:
    return f"http://{actor['host']}:{actor['port']}"


def _start_orphan_actor(deployment: Deployment) -> str:
    """A replica actor no database row knows of, as left by a crash between start and commit."""
    from lorafleet.controlplane.catalog.types import InstanceType
    from lorafleet.controlplane.launchers.base import ReplicaSpec
    from lorafleet.controlplane.launchers.ray import RayLauncher

    launcher = RayLauncher(address=deployment.cluster.address, command=["sleep", "600"])
    cpu = InstanceType("local", "local", "cpu", "x1", "cpu", 0, None, num_cpus=1)
    handle = launcher.start(ReplicaSpec("rep-orphan", deployment.controlplane.namespace, "gone", cpu))
    return handle["actor_name"]
