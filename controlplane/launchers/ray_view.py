"""The launcher's view of the Ray cluster: alive nodes, their free resources, and our own actors.

Ray reports free resources per node with a short lag (raylets sync every ~100 ms), so two
placements decided back to back could both see the same free GPU. `ClusterView` therefore also
keeps a ledger of the resources its own actors hold and counts a node's free amount as the
smaller of Ray's figure and "total minus our ledger". Ray still does the placing; the view only
decides whether to try now or to report the endpoint as pending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import ray
from lorafleet.controlplane.launchers.ray_nodes import NodeResources

# Actor-assigned resources a ledger entry counts; the rest (memory, node:<ip>) is not ours to track.
_TRACKED = ("CPU", "GPU")


def _available_per_node() -> dict[str, dict[str, float]] | None:
    """Free resources per node id. Ray has no public per-node call without the dashboard's state
    API, so this uses the driver's GCS accessor (present since Ray 1.x) and degrades to None."""
    if ray.util.client.ray.is_connected():
        return None  # Ray Client drivers have no GCS accessor: the ledger alone bounds free resources
    try:
        from ray._private import state
        return state.available_resources_per_node()
    except (ImportError, AttributeError):  # pragma: no cover - a future Ray moved it
        return None


def is_placed(actor_id: str) -> bool:
    """Whether Ray has leased a worker on some node for the actor (its `__init__` may still run,
    e.g. while Ray builds its `runtime_env`). False when unknown (Ray Client, a future Ray)."""
    if ray.util.client.ray.is_connected():
        return False
    try:
        from ray._private import state
        address = state.actors(actor_id).get("Address") or {}
    except (ImportError, AttributeError):  # pragma: no cover - a future Ray moved it
        return False
    return bool(address.get("Port"))


class ClusterView:
    """Caches node snapshots briefly and owns the ledger of resources our actors hold.

    Args:
        connect: called before any Ray call (connects the driver once).
        ttl_s: how long a snapshot serves `nodes(fresh=False)` (catalog, validation).
    """

    def __init__(self, connect: Callable[[], None], ttl_s: float = 2.0) -> None:
        self._connect = connect
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._snapshot: list[NodeResources] = []
        self._taken_at = float("-inf")
        self._ledger: dict[str, tuple[str, dict[str, float]]] = {}  # actor name → (node id, held)

    def nodes(self, fresh: bool) -> list[NodeResources]:
        """The alive nodes; `fresh=False` may reuse a snapshot up to `ttl_s` old."""
        with self._lock:
            if not fresh and time.monotonic() - self._taken_at < self._ttl_s:
                return list(self._snapshot)
        self._connect()
        available = _available_per_node()
        snapshot = []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            total = dict(node.get("Resources", {}))
            free = available.get(node["NodeID"], total) if available is not None else total
            snapshot.append(NodeResources(node["NodeID"], node.get("NodeManagerAddress", ""), total, free))
        with self._lock:
            self._snapshot, self._taken_at = snapshot, time.monotonic()
        return list(snapshot)

    def with_reservations(self, nodes: list[NodeResources]) -> list[NodeResources]:
        """`nodes` with each free amount capped at total minus what our own actors hold there."""
        with self._lock:
            held: dict[str, dict[str, float]] = {}
            for node_id, resources in self._ledger.values():
                for name, amount in resources.items():
                    held.setdefault(node_id, {}).setdefault(name, 0.0)
                    held[node_id][name] += amount
        adjusted = []
        for node in nodes:
            free = dict(node.available)
            for name, amount in held.get(node.node_id, {}).items():
                free[name] = min(free.get(name, 0.0), node.total.get(name, 0.0) - amount)
            adjusted.append(NodeResources(node.node_id, node.address, node.total, free))
        return adjusted

    def reserve(self, actor_name: str, node_id: str, assigned: Mapping[str, float]) -> None:
        """Records what an actor of ours holds on `node_id` (from its assigned resources)."""
        tracked = {name: float(amount) for name, amount in assigned.items() if name in _TRACKED}
        with self._lock:
            self._ledger[actor_name] = (node_id, tracked)

    def release(self, actor_name: str) -> None:
        with self._lock:
            self._ledger.pop(actor_name, None)

    def used_gpus(self, accelerator_type: str, nodes: list[NodeResources]) -> int:
        """GPUs in use now on the nodes with `accelerator_type`."""
        used = 0.0
        for node in self.with_reservations(nodes):
            if accelerator_type in node.accelerator_types:
                used += node.total.get("GPU", 0.0) - node.available.get("GPU", 0.0)
        return round(used)
