"""The KubeRay manifests in deploy/kuberay/ stay consistent with what the `ray` launcher expects."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from lorafleet.controlplane.launchers.ray_catalog import cluster_catalog
from lorafleet.controlplane.launchers.ray_nodes import NodeResources

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kuberay"
DETECT = {"vendors": [{"name": "local", "regions": [{"name": "local", "computes": "detect"}]}]}


def worker_node(group: dict) -> NodeResources:
    """The Ray node one pod of a worker group becomes (GPUs from the pod limits, as KubeRay does)."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    custom = json.loads(json.loads(group["rayStartParams"]["resources"]))  # KubeRay's quoted JSON
    total = {"CPU": float(limits["cpu"]), "GPU": float(limits["nvidia.com/gpu"]), **custom}
    return NodeResources(group["groupName"], "10.0.0.1", total, total)


def test_gpu_worker_groups_become_the_instance_types_users_order() -> None:
    cluster = yaml.safe_load((DEPLOY / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    nodes = [worker_node(group) for group in cluster["spec"]["workerGroupSpecs"]]
    offered = {(c.instance_type, c.instance_size) for c in cluster_catalog(DETECT, nodes).instances()
               if c.accelerator == "gpu"}
    assert offered == {("nvidia-l4", "x1"), ("nvidia-h100", "x1"), ("nvidia-h100", "x2"),
                       ("nvidia-h100", "x4"), ("nvidia-h100", "x8")}


def test_head_takes_no_replicas() -> None:
    head = yaml.safe_load((DEPLOY / "raycluster.yaml").read_text())["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["num-gpus"] == "0"


def test_controlplane_runs_the_ray_launcher_against_the_clusters_head_service() -> None:
    cluster = yaml.safe_load((DEPLOY / "raycluster.yaml").read_text())
    deployment, _service = yaml.safe_load_all((DEPLOY / "controlplane.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert env["LORAFLEET_LAUNCHER"] == "ray"
    assert env["LORAFLEET_RAY_ADDRESS"] == f"{cluster['metadata']['name']}-head-svc:6379"
    assert pod["initContainers"][0]["command"][-1] == "migrate"
    images = {c["image"] for c in pod["containers"] + pod["initContainers"]}
    images |= {g["template"]["spec"]["containers"][0]["image"] for g in cluster["spec"]["workerGroupSpecs"]}
    assert len(images) == 1, "driver and workers must run one image (same Ray and Python)"


def test_gateways_run_alone_on_the_control_planes_database_and_own_the_endpoint_urls() -> None:
    deployment, service = yaml.safe_load_all((DEPLOY / "gateway.yaml").read_text())
    controlplane, _ = yaml.safe_load_all((DEPLOY / "controlplane.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    assert gateway["command"][:3] == ["lorafleet", "gateway", "serve"] and deployment["spec"]["replicas"] >= 2
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in gateway["env"] if "valueFrom" in e}
    assert secrets == {"LORAFLEET_DATABASE_URL": {"name": "lorafleet-controlplane", "key": "database-url"},
                       "LORAFLEET_SECRET_KEY": {"name": "lorafleet-controlplane", "key": "secret-key"}}
    server = controlplane["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    port = service["spec"]["ports"][0]["port"]
    assert env["LORAFLEET_PUBLIC_URL"] == f"http://{service['metadata']['name']}:{port}"
