"""What a Ray cluster offers, computed from node resources as `ray.nodes()` reports them (no Ray)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lorafleet.controlplane.catalog.types import InstanceType
from lorafleet.controlplane.launchers.ray_catalog import cluster_catalog, runnable
from lorafleet.controlplane.launchers.ray_nodes import (
    NodeResources,
    capacity_reason,
    gpu_model_name,
    impossible_reason,
    power_of_two_sizes,
    request_for,
)

GIB = 2**30
HEAD = NodeResources("head", "10.0.0.1", {"CPU": 4.0, "memory": 8 * GIB}, {"CPU": 4.0})
L4_NODE = NodeResources(
    "l4",
    "10.0.0.2",
    {"CPU": 8.0, "GPU": 1.0, "accelerator_type:L4": 1.0, "memory": 32 * GIB},
    {"CPU": 8.0, "GPU": 1.0, "accelerator_type:L4": 1.0},
)
H100_NODE = NodeResources(
    "h100",
    "10.0.0.3",
    {"CPU": 96.0, "GPU": 4.0, "accelerator_type:H100": 1.0, "memory": 512 * GIB},
    {"CPU": 96.0, "GPU": 1.0, "accelerator_type:H100": 0.997},
)
NODES = [HEAD, L4_NODE, H100_NODE]


@pytest.mark.parametrize(
    ("ray_type", "model"),
    [
        ("L4", "nvidia-l4"),
        ("A100-80G", "nvidia-a100-80g"),
        ("H200", "nvidia-h200"),
        ("AMD-Instinct-MI300X-OAM", "amd-instinct-mi300x-oam"),
        ("Intel-GPU-Max-1550", "intel-gpu-max-1550"),
    ],
)
def test_ray_accelerator_types_map_to_lorafleet_gpu_models(ray_type: str, model: str) -> None:
    assert gpu_model_name(ray_type) == model


def test_gpu_request_uses_the_clusters_spelling_and_reserves_no_cpu() -> None:
    request = request_for("nvidia-h100", 2, 16, NODES)
    assert request.actor_options() == {
        "num_gpus": 2,
        "num_cpus": 0.0,
        "resources": {"accelerator_type:H100": 0.001},
    }


def test_cpu_request_reserves_its_cores_and_no_accelerator() -> None:
    assert request_for(None, 0, 2, NODES).actor_options() == {"num_gpus": 0, "num_cpus": 2.0, "resources": {}}


def test_unknown_gpu_model_is_impossible_and_the_message_lists_the_offer() -> None:
    reason = impossible_reason(request_for("nvidia-h200", 8, 1, NODES), NODES)
    assert reason == (
        "the Ray cluster cannot run 8 x nvidia-h200: no node has nvidia-h200 GPUs "
        "(accelerator_type:H200); 3 alive nodes offer cpu up to x96, nvidia-h100 up to x4, "
        "nvidia-l4 up to x1"
    )


def test_more_gpus_than_any_one_node_has_is_impossible() -> None:
    reason = impossible_reason(request_for("nvidia-h100", 8, 1, NODES), NODES)
    assert "no node has 8 nvidia-h100s (the most on one node is 4)" in reason


def test_request_that_fits_a_node_but_not_its_free_gpus_waits_for_capacity() -> None:
    request = request_for("nvidia-h100", 2, 1, NODES)
    assert impossible_reason(request, NODES) is None
    assert capacity_reason(request, NODES) == (
        "waiting for capacity: 2 x nvidia-h100 fits 1 node(s) of the Ray cluster, but none has it free now"
    )
    assert capacity_reason(request_for("nvidia-h100", 1, 1, NODES), NODES) is None


def test_sizes_are_powers_of_two_up_to_the_largest_node() -> None:
    assert power_of_two_sizes(1) == [1]
    assert power_of_two_sizes(8) == [1, 2, 4, 8]
    assert power_of_two_sizes(6) == [1, 2, 4, 6]
    assert power_of_two_sizes(0) == []


def test_detect_region_becomes_the_clusters_instance_types() -> None:
    data = {"vendors": [{"name": "local", "regions": [{"name": "local", "computes": "detect"}]}]}
    computes = {(c.instance_type, c.instance_size): c for c in cluster_catalog(data, NODES).instances()}
    assert sorted(computes) == sorted(
        [("nvidia-h100", "x1"), ("nvidia-h100", "x2"), ("nvidia-h100", "x4"), ("nvidia-l4", "x1")]
        + [("cpu", f"x{n}") for n in (1, 2, 4, 8, 16, 32, 64, 96)]
    )
    h100_x2 = computes[("nvidia-h100", "x2")]
    assert (h100_x2.gpu_model, h100_x2.num_accelerators, h100_x2.memory_gb, h100_x2.num_cpus) == (
        "nvidia-h100",
        2,
        256.0,
        48,
    )
    assert h100_x2.architecture == "NVIDIA H100"


def test_listed_region_keeps_only_what_the_cluster_can_run() -> None:
    listed = [
        {
            "instanceType": "nvidia-l4",
            "instanceSize": "x1",
            "accelerator": "gpu",
            "numAccelerators": 1,
            "gpuModel": "nvidia-l4",
        },
        {
            "instanceType": "nvidia-a10g",
            "instanceSize": "x1",
            "accelerator": "gpu",
            "numAccelerators": 1,
            "gpuModel": "nvidia-a10g",
        },
        {"instanceType": "intel-icl", "instanceSize": "x2", "accelerator": "cpu", "numCpus": 2},
    ]
    data = {"vendors": [{"name": "aws", "regions": [{"name": "us-east-1", "computes": listed}]}]}
    kept = [(c.vendor, c.region, c.instance_type) for c in cluster_catalog(data, NODES).instances()]
    assert kept == [("aws", "us-east-1", "nvidia-l4"), ("aws", "us-east-1", "intel-icl")]


def test_nothing_is_runnable_on_a_cluster_without_nodes() -> None:
    assert not runnable(InstanceType("local", "local", "cpu", "x1", "cpu", 0, None, num_cpus=1), [])
    assert impossible_reason(request_for(None, 0, 1, []), []).endswith("0 alive nodes offer no alive node")


def test_control_plane_with_the_process_launcher_never_imports_ray(tmp_path) -> None:
    script = (
        "import sys, lorafleet, lorafleet.controlplane.app\n"
        "from lorafleet.controlplane.launchers import create_launcher\n"
        "from lorafleet.controlplane.launchers import ray_catalog, ray_nodes\n"
        "from lorafleet.controlplane.settings import Settings\n"
        f"create_launcher(Settings(home={str(tmp_path)!r}, launcher='process'))\n"
        "assert 'ray' not in sys.modules, 'the default install must not need Ray'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
