"""A real two-node Ray cluster on this machine, for the `ray` launcher's tests and benchmark.

`ray.cluster_utils.Cluster` starts a head node and worker nodes as separate raylets on this
host and, on shutdown, ends exactly the processes it started (never other Ray clusters). The
head has 1 CPU and no GPU; the worker has 1 CPU and advertises one NVIDIA L4 (`num_gpus=1`,
`accelerator_type:L4`), which the runtime serves on the CPU when CUDA is absent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import ray
from ray.cluster_utils import Cluster

NODE_MEMORY = 100 * 2**20  # object store per node: replicas exchange no objects


@dataclass(frozen=True)
class RayTestCluster:
    """Addresses of a running test cluster.

    Args:
        address: GCS address (`ip:port`) for `ray.init(address=...)` / `LORAFLEET_RAY_ADDRESS`.
        head_node_id: Ray node id of the head (no GPU).
        gpu_node_ids: Ray node ids of the nodes advertising GPUs, in the order they were added.
    """

    address: str
    head_node_id: str
    gpu_node_ids: tuple[str, ...]
    cluster: Cluster = field(repr=False, compare=False)

    @contextlib.contextmanager
    def extra_gpu_node(self, accelerator_type: str, num_gpus: int = 1) -> Iterator[str]:
        """Adds a node (1 CPU, `num_gpus` GPUs of `accelerator_type`) for the block; yields its id.
        The test may kill it first with `kill_node(id)` (a host lost); otherwise it is removed."""
        node = self.cluster.add_node(num_cpus=1, num_gpus=num_gpus, object_store_memory=NODE_MEMORY,
                                     resources={f"accelerator_type:{accelerator_type}": 1})
        self.cluster.wait_for_nodes()
        try:
            yield node.node_id
        finally:
            if node in self.cluster.worker_nodes:
                self.cluster.remove_node(node, allow_graceful=False)

    def kill_node(self, node_id: str) -> None:
        """Ends a node's processes abruptly, as when a host dies."""
        node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
        self.cluster.remove_node(node, allow_graceful=False)


@contextlib.contextmanager
def ray_cluster(
    num_gpu_nodes: int = 1, gpus_per_node: int = 1, accelerator_type: str = "L4"
) -> Iterator[RayTestCluster]:
    """Starts a head node (1 CPU) and `num_gpu_nodes` nodes (1 CPU, `gpus_per_node` GPUs of
    `accelerator_type`, which the runtime serves on the CPU when CUDA is absent).

    Yields:
        The cluster's address and node ids; on exit every node this call started is shut down.
    """
    lean = {"object_store_memory": NODE_MEMORY, "include_dashboard": False, "num_cpus": 1}
    cluster = Cluster(initialize_head=True, head_node_args=lean, shutdown_at_exit=True)
    try:
        workers = [
            cluster.add_node(
                num_cpus=1,
                num_gpus=gpus_per_node,
                resources={f"accelerator_type:{accelerator_type}": 1},
                object_store_memory=NODE_MEMORY,
            )
            for _ in range(num_gpu_nodes)
        ]
        cluster.wait_for_nodes()
        yield RayTestCluster(
            cluster.address, cluster.head_node.node_id, tuple(worker.node_id for worker in workers), cluster
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def wait_for(
    predicate: Callable[[], object],
    timeout_s: float = 120.0,
    interval_s: float = 0.25,
    what: str = "condition",
) -> object:
    """Polls `predicate` until it returns something truthy; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def free_gpus(node_id: str) -> float:
    """Free GPUs on `node_id` as Ray sees them (the driver must be connected)."""
    from ray._private import state

    return state.available_resources_per_node().get(node_id, {}).get("GPU", 0.0)
