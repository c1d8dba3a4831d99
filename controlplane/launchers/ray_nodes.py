"""What a Ray cluster offers, read from its nodes' resources; no scheduling of our own.

Ray already knows every node's GPUs and accelerator type (`accelerator_type:L4` is the
resource a node advertises for its NVIDIA L4 GPUs). This module turns that into lorafleet
terms: GPU models (`L4` → `nvidia-l4`), the largest replica one node can hold, and, for one
request, whether no node can *ever* run it (refused at create time) or whether it only has to
wait for free capacity (the endpoint stays `pending` with the reason). Ray places the actor;
these checks only decide what to tell the user.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ACCELERATOR_PREFIX = "accelerator_type:"
# Ray names NVIDIA GPUs by model alone (`L4`, `A100-80G`, `H200`); other vendors carry a prefix.
_OTHER_VENDOR_PREFIXES = ("amd-", "intel-", "aws-", "tpu-", "m1", "m2", "m3", "apple-")


def gpu_model_name(ray_accelerator_type: str) -> str:
    """Maps a Ray accelerator type to lorafleet's GPU model name.

    Example:
        >>> gpu_model_name("L4"), gpu_model_name("A100-80G"), gpu_model_name("AMD-Instinct-MI300X")
        ('nvidia-l4', 'nvidia-a100-80g', 'amd-instinct-mi300x')
    """
    lowered = ray_accelerator_type.lower()
    if lowered.startswith(_OTHER_VENDOR_PREFIXES):
        return lowered
    return f"nvidia-{lowered}"


@dataclass(frozen=True)
class NodeResources:
    """One alive Ray node.

    Args:
        node_id: Ray's hex node id.
        address: the node's IP address.
        total: the node's resources (`CPU`, `GPU`, `memory` in bytes, `accelerator_type:L4`, ...).
        available: what is free right now.
    """

    node_id: str
    address: str
    total: Mapping[str, float]
    available: Mapping[str, float] = field(default_factory=dict)

    @property
    def num_gpus(self) -> int:
        return int(self.total.get("GPU", 0))

    @property
    def num_cpus(self) -> int:
        return int(self.total.get("CPU", 0))

    @property
    def accelerator_types(self) -> tuple[str, ...]:
        """Ray accelerator types of this node's GPUs (normally one)."""
        return tuple(k[len(ACCELERATOR_PREFIX):] for k in self.total if k.startswith(ACCELERATOR_PREFIX))

    @property
    def gpu_models(self) -> tuple[str, ...]:
        return tuple(gpu_model_name(t) for t in self.accelerator_types)


@dataclass(frozen=True)
class ResourceRequest:
    """What one replica asks Ray for.

    GPU replicas are placed by GPUs alone (`num_cpus=0`): Ray's CPU count on a GPU node says
    nothing useful about a server whose work runs on the GPU, and reserving CPUs would make
    small clusters refuse replicas that run fine. CPU replicas reserve their cores.

    Args:
        num_gpus: whole GPUs (`num_gpus` of the actor).
        num_cpus: CPU cores (`num_cpus` of the actor).
        accelerator_type: Ray accelerator type the GPUs must be (`L4`), None for any or CPU.
        gpu_model: the lorafleet name of that type, for messages.
    """

    num_gpus: int
    num_cpus: float
    accelerator_type: str | None = None
    gpu_model: str | None = None

    @property
    def resources(self) -> dict[str, float]:
        """Custom resources: Ray's own convention for "runs on this accelerator type"."""
        if self.accelerator_type is None:
            return {}
        return {f"{ACCELERATOR_PREFIX}{self.accelerator_type}": 0.001}

    def actor_options(self) -> dict[str, Any]:
        return {"num_gpus": self.num_gpus, "num_cpus": self.num_cpus, "resources": self.resources}

    def describe(self) -> str:
        if self.num_gpus:
            return f"{self.num_gpus} x {self.gpu_model or 'GPU'}"
        return f"{self.num_cpus:g} CPU"

    def fits(self, resources: Mapping[str, float]) -> bool:
        """Whether `resources` (a node's total or free resources) can hold this request."""
        wanted = {"GPU": float(self.num_gpus), "CPU": float(self.num_cpus), **self.resources}
        return all(resources.get(name, 0.0) + 1e-9 >= amount for name, amount in wanted.items() if amount)


def request_for(gpu_model: str | None, num_gpus: int, num_cpus: float, nodes: list[NodeResources]) -> (
    ResourceRequest
):
    """Builds the Ray request for an instance, naming the cluster's accelerator type.

    Args:
        gpu_model: lorafleet GPU model (`nvidia-l4`), None for a CPU instance.
        num_gpus: GPUs per replica (0 for CPU).
        num_cpus: CPU cores per replica (used for CPU instances only).
        nodes: the cluster's nodes; the accelerator type is spelled as they spell it.
    """
    if not num_gpus:
        return ResourceRequest(num_gpus=0, num_cpus=max(float(num_cpus), 1.0))
    if gpu_model is None:
        return ResourceRequest(num_gpus=num_gpus, num_cpus=0.0)
    for node in nodes:
        for ray_type in node.accelerator_types:
            if gpu_model_name(ray_type) == gpu_model.lower():
                return ResourceRequest(num_gpus, 0.0, ray_type, gpu_model)
    # No node has it: keep the usual spelling so the message (and Ray, if asked) are clear.
    ray_type = gpu_model[len("nvidia-"):].upper() if gpu_model.startswith("nvidia-") else gpu_model
    return ResourceRequest(num_gpus, 0.0, ray_type, gpu_model)


def offer_summary(nodes: list[NodeResources]) -> str:
    """One line of what the cluster can run, for error messages: `nvidia-l4 up to x1, cpu up to x2`."""
    largest: dict[str, int] = {}
    for node in nodes:
        for model in node.gpu_models:
            largest[model] = max(largest.get(model, 0), node.num_gpus)
        if node.num_cpus:
            largest["cpu"] = max(largest.get("cpu", 0), node.num_cpus)
    if not largest:
        return "no alive node"
    return ", ".join(f"{name} up to x{count}" for name, count in sorted(largest.items()))


def impossible_reason(request: ResourceRequest, nodes: list[NodeResources]) -> str | None:
    """Why no node of the cluster can ever hold `request`, or None when one can."""
    if any(request.fits(node.total) for node in nodes):
        return None
    alive = f"{len(nodes)} alive node{'s' if len(nodes) != 1 else ''}"
    if request.accelerator_type and not any(request.accelerator_type in n.accelerator_types for n in nodes):
        what = f"no node has {request.gpu_model} GPUs ({ACCELERATOR_PREFIX}{request.accelerator_type})"
    elif request.num_gpus:
        most = max((n.num_gpus for n in nodes if request.fits({**n.total, "GPU": 1e9})), default=0)
        model = request.gpu_model or "GPU"
        what = f"no node has {request.num_gpus} {model}s (the most on one node is {most})"
    else:
        most = max((n.num_cpus for n in nodes), default=0)
        what = f"no node has {request.num_cpus:g} CPUs (the most on one node is {most})"
    return f"the Ray cluster cannot run {request.describe()}: {what}; {alive} offer {offer_summary(nodes)}"


def capacity_reason(request: ResourceRequest, nodes: list[NodeResources]) -> str | None:
    """Why `request` cannot be placed *now* although the cluster could hold it; None when it can."""
    if any(request.fits(node.available) for node in nodes):
        return None
    able = [n for n in nodes if request.fits(n.total)]
    return (
        f"waiting for capacity: {request.describe()} fits {len(able)} node(s) of the Ray cluster, "
        f"but none has it free now"
    )


def power_of_two_sizes(largest: int) -> list[int]:
    """Replica sizes offered up to `largest` per node: 1, 2, 4, 8, ... and `largest` itself."""
    sizes, size = [], 1
    while size <= largest:
        sizes.append(size)
        size *= 2
    if largest and sizes[-1] != largest:
        sizes.append(largest)
    return sizes
