"""The `ray` launcher: every replica is a detached, named Ray actor serving on its node.

Ray is the scheduler: it knows the nodes, their GPUs and accelerator types, and places each
actor (`num_gpus` = the instance's GPU count, `accelerator_type:<TYPE>` as a custom resource,
Ray's own convention). The actor (`ray_replica.ReplicaServer`) starts `python -m
lorafleet.runtime` on its node and reports the node's address and the server's port.

Actors are detached and named `<namespace>/<endpoint>/<replica_key>` in one Ray namespace
(`lorafleet` by default), so they outlive the control plane, and a restarted control plane finds
them again with `adopt()`: no duplicates (start is idempotent per name), no orphans (the
reconciler stops survivors it has no row for).

The control plane is a Ray *driver*: it connects with `ray.init(address=...)` once, lazily, and
never imports Ray unless this launcher is chosen (`pip install 'lorafleet[ray]'`).
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from pathlib import Path
from typing import Any

import ray
import ray.cloudpickle
from lorafleet.controlplane.catalog.types import Catalog, InstanceType
from lorafleet.controlplane.launchers import ray_replica
from lorafleet.controlplane.launchers.base import (
    ImpossibleRequestError,
    LauncherError,
    NoCapacityError,
    ReplicaHandle,
    ReplicaSpec,
    ReplicaStatus,
    cpu_threads_env,
)
from lorafleet.controlplane.launchers.ray_catalog import cluster_catalog, read_catalog_file
from lorafleet.controlplane.launchers.ray_nodes import (
    ResourceRequest,
    capacity_reason,
    impossible_reason,
    request_for,
)
from lorafleet.controlplane.launchers.ray_view import ClusterView, is_placed
from ray.exceptions import GetTimeoutError, RayActorError, RayError

DEFAULT_RAY_NAMESPACE = "lorafleet"


class RayUnavailableError(LauncherError):
    """The Ray cluster cannot be reached (HTTP 503: try again once it is back)."""

    status_code = 503


class RayLauncher:
    """Runs replicas as detached named actors on a Ray cluster.

    Args:
        address: what `ray.init(address=...)` takes: `auto` (the cluster this host belongs to),
            `ray://head:10001` (Ray Client) or a GCS address `head:6379`.
        ray_namespace: Ray namespace of the replica actors; one per control plane sharing a cluster.
        catalog_path: the catalog file (None: the built-in default, whose `detect` region becomes
            the cluster's own instance types).
        command: the replica command on the node; None runs `python -m lorafleet.runtime` with
            the actor's own interpreter (the node's environment or the `runtime_env`'s).
        runtime_env: a Ray `runtime_env` for the actors (e.g. `{"pip": ["lorafleet[runtime]"]}`)
            when worker nodes do not have lorafleet preinstalled. Its `env_vars` reach the replica.
        replica_env: the operator's environment for every replica (`LORAFLEET_REPLICA_ENV`).
        placement_timeout_s: how long `start` waits for Ray to place an actor before giving the
            capacity back and reporting the replica as pending.
        call_timeout_s: how long a call that does work on the actor (logs, stop) may take.
        status_timeout_s: how long `status`/`adopt` wait for an actor's answer before reporting
            it as still starting (an actor answers in milliseconds once its `__init__` is done).
        stop_grace_s: time the server gets to exit on SIGTERM before SIGKILL.
    """

    name = "ray"

    def __init__(self, *, address: str = "auto", ray_namespace: str = DEFAULT_RAY_NAMESPACE,
                 catalog_path: Path | None = None, command: list[str] | None = None,
                 runtime_env: dict[str, Any] | None = None, replica_env: dict[str, str] | None = None,
                 placement_timeout_s: float = 120.0,
                 call_timeout_s: float = 30.0, status_timeout_s: float = 5.0,
                 stop_grace_s: float = 10.0) -> None:
        self._address = address
        self._ray_namespace = ray_namespace
        self._catalog_data = read_catalog_file(catalog_path)
        self._command = list(command) if command else None
        self._runtime_env = runtime_env
        # The replica starts from a minimal environment (ray_replica.py): the operator's variables
        # are the only ones of this side that reach it, with the tenant's checked ones on top.
        self._operator_env = {**((runtime_env or {}).get("env_vars") or {}), **(replica_env or {})}
        self._placement_timeout_s = placement_timeout_s
        self._call_timeout_s = call_timeout_s
        self._status_timeout_s = status_timeout_s
        self._stop_grace_s = stop_grace_s
        self._connect_lock = threading.Lock()
        self._start_lock = threading.Lock()  # one placement decision at a time
        self._connected = False
        self._actor_class: Any = None
        self._view = ClusterView(self._connect)

    @classmethod
    def from_settings(cls, settings: Any) -> RayLauncher:
        """Builds the launcher from `Settings` (`LORAFLEET_RAY_ADDRESS`, `LORAFLEET_CATALOG`, ...)."""
        command = shlex.split(settings.runtime_command) if settings.runtime_command else None
        # Optional Settings fields (LORAFLEET_RAY_NAMESPACE, LORAFLEET_RAY_RUNTIME_ENV as JSON):
        # without them, the defaults apply.
        return cls(address=settings.ray_address, catalog_path=settings.catalog, command=command,
                   ray_namespace=getattr(settings, "ray_namespace", None) or DEFAULT_RAY_NAMESPACE,
                   runtime_env=getattr(settings, "ray_runtime_env", None),
                   replica_env=dict(getattr(settings, "replica_env", None) or {}))

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> None:
        """Connects this process to the cluster once; every Ray call goes through here first."""
        if self._connected:
            return
        with self._connect_lock:
            if self._connected:
                return
            if not ray.is_initialized():
                try:
                    ray.init(address=self._address, namespace=self._ray_namespace,
                             log_to_driver=False, logging_level=logging.WARNING)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise RayUnavailableError(
                        f"cannot connect to the Ray cluster at {self._address!r} "
                        f"(LORAFLEET_RAY_ADDRESS): {e}") from e
            # Ship the actor's module by value: worker nodes need ray and lorafleet[runtime],
            # not the control plane's packages.
            ray.cloudpickle.register_pickle_by_value(ray_replica)
            self._actor_class = ray.remote(ray_replica.ReplicaServer)
            self._connected = True

    def close(self) -> None:
        """Disconnects from the cluster; the detached replica actors keep running."""
        with self._connect_lock:
            if self._connected and ray.is_initialized():
                ray.shutdown()
            self._connected = False

    # -- catalog and capacity ---------------------------------------------------------------

    def catalog(self) -> Catalog | None:
        """Instance types derived from the cluster's nodes, under the catalog file's names."""
        return cluster_catalog(self._catalog_data, self._view.nodes(fresh=False))

    def _request(self, instance: InstanceType, fresh: bool) -> tuple[ResourceRequest, list[Any]]:
        nodes = self._view.nodes(fresh=fresh)
        num_gpus = instance.num_accelerators if instance.gpu_model else 0
        return request_for(instance.gpu_model, num_gpus, instance.num_cpus or 1, nodes), nodes

    def validate(self, instance: InstanceType) -> None:
        """Refuses an instance no node of the cluster can ever hold."""
        request, nodes = self._request(instance, fresh=False)
        reason = impossible_reason(request, nodes)
        if reason:
            raise ImpossibleRequestError(reason, instance=instance.id)

    def used_accelerators(self, instance: InstanceType) -> int:
        """GPUs of `instance`'s model in use on the cluster now (by anyone)."""
        if not instance.gpu_model:
            return 0
        request, nodes = self._request(instance, fresh=False)
        return self._view.used_gpus(request.accelerator_type or "", nodes)

    # -- replicas ---------------------------------------------------------------------------

    def _actor_name(self, spec: ReplicaSpec) -> str:
        return f"{spec.endpoint_namespace}/{spec.endpoint_name}/{spec.replica_key}"

    def _find_actor(self, name: str) -> Any | None:
        self._connect()
        try:
            return ray.get_actor(name, namespace=self._ray_namespace)
        except ValueError:
            return None  # no such live actor

    def _describe(self, actor: Any, timeout_s: float) -> dict[str, Any]:
        return ray.get(actor.describe.remote(), timeout=timeout_s)

    def _handle(self, name: str, actor: Any, info: dict[str, Any] | None) -> ReplicaHandle:
        handle: ReplicaHandle = {
            "replica_key": name.rsplit("/", 1)[-1], "launcher": self.name, "actor_name": name,
            "ray_namespace": self._ray_namespace, "actor_id": actor._actor_id.hex(),
        }
        if info:
            handle.update(node_id=info["node_id"], host=info["host"], port=info["port"],
                          pid=info["pid"], gpu_ids=info["gpu_ids"], spec_digest=info["spec_digest"],
                          url=f"http://{info['host']}:{info['port']}")
        return handle

    def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Places the replica's actor and returns once Ray has started it on a node.

        Idempotent per replica: an actor already running this spec under the replica's name
        (e.g. started just before a control-plane crash) is returned, not duplicated.

        Raises:
            ImpossibleRequestError: no node can ever hold the instance.
            NoCapacityError: the cluster could hold it, but not now (the endpoint stays pending).
            LauncherError: Ray could not create the actor (e.g. its `runtime_env` failed).
        """
        name = self._actor_name(spec)
        with self._start_lock:
            request, nodes = self._request(spec.instance, fresh=True)
            reason = impossible_reason(request, nodes)
            if reason:
                raise ImpossibleRequestError(reason, instance=spec.instance.id)
            existing = self._find_actor(name)
            if existing is not None:
                adopted = self._reuse(name, existing, spec)
                if adopted is not None:
                    return adopted
            reason = capacity_reason(request, self._view.with_reservations(nodes))
            if reason:
                raise NoCapacityError(reason)
            actor = self._create_actor(name, spec, request)
            info = self._await_placement(name, actor, request)
            if info is not None:
                self._view.reserve(name, info["node_id"], info["assigned"])
            return self._handle(name, actor, info)

    def _reuse(self, name: str, actor: Any, spec: ReplicaSpec) -> ReplicaHandle | None:
        """The handle of a live actor already running `spec`; anything else there is killed."""
        try:
            info = self._describe(actor, self._status_timeout_s)
        except RayActorError:
            info = None
        except GetTimeoutError:
            if is_placed(actor._actor_id.hex()):
                return self._handle(name, actor, None)  # still starting on its node: same replica
            info = None
        if info and info["spec_digest"] == spec.digest and info["exit_code"] is None:
            return self._handle(name, actor, info)
        self._kill(name, actor)
        self._await_death(name)
        return None

    def _create_actor(self, name: str, spec: ReplicaSpec, request: ResourceRequest) -> Any:
        env = {**cpu_threads_env(spec.instance), **self._operator_env, **spec.env}
        if spec.api_key:  # ray_replica binds the node's address: the key is what guards the replica
            env["API_KEY"] = spec.api_key
        options: dict[str, Any] = {
            "name": name, "namespace": self._ray_namespace, "lifetime": "detached",
            "max_restarts": 0,  # the reconciler restarts replicas, with backoff and a limit
            **request.actor_options(),
        }
        if self._runtime_env:
            options["runtime_env"] = self._runtime_env
        try:
            return self._actor_class.options(**options).remote(
                self._command, list(spec.args), env, spec.digest)
        except (RayError, ValueError) as e:
            raise LauncherError(f"Ray refused the replica actor {name!r}: {e}") from e

    def _await_placement(self, name: str, actor: Any, request: ResourceRequest) -> dict[str, Any] | None:
        """The actor's `describe()` once it runs; None if it is placed but still starting.

        Raises:
            NoCapacityError: Ray did not place it within `placement_timeout_s` (it is killed).
            LauncherError: the actor failed to start (e.g. its `runtime_env` could not be built).
        """
        ref = actor.describe.remote()
        deadline = time.monotonic() + self._placement_timeout_s
        while True:
            ready, _ = ray.wait([ref], timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            if ready:
                try:
                    return ray.get(ref)
                except RayActorError as e:
                    self._kill(name, actor)
                    raise LauncherError(
                        f"the replica actor {name!r} failed to start: {_first_line(e)}") from e
            if time.monotonic() >= deadline:
                break
        if is_placed(actor._actor_id.hex()):
            return None  # on a node, still in __init__ (building its runtime_env): status follows it
        self._kill(name, actor)
        reason = capacity_reason(request, self._view.nodes(fresh=True))
        raise NoCapacityError(reason or f"Ray did not place {request.describe()} within "
                              f"{self._placement_timeout_s:g} s; retrying")

    def status(self, handle: ReplicaHandle) -> ReplicaStatus:
        """`running` with the URL while the actor and its server live, `exited` once either is gone."""
        name = handle["actor_name"]
        actor = self._find_actor(name)
        if actor is None or actor._actor_id.hex() != handle.get("actor_id", actor._actor_id.hex()):
            self._view.release(name)
            return ReplicaStatus("exited",
                                 message=f"the Ray actor {name!r} is gone (killed, or its node died)")
        try:
            info = self._describe(actor, self._status_timeout_s)
        except RayActorError as e:
            self._view.release(name)
            return ReplicaStatus("exited", message=f"the Ray actor {name!r} died: {_first_line(e)}")
        except GetTimeoutError:
            placed = is_placed(actor._actor_id.hex())
            where = "starting on its node" if placed else "waiting for Ray to place it"
            return ReplicaStatus("starting", message=f"the Ray actor {name!r} is {where}")
        url = f"http://{info['host']}:{info['port']}"
        if info["exit_code"] is not None:
            return ReplicaStatus("exited", url=url, exit_code=info["exit_code"],
                                 message=f"the runtime exited with code {info['exit_code']} "
                                         f"on Ray node {info['node_id']}")
        return ReplicaStatus("running", url=url)

    def stop(self, handle: ReplicaHandle) -> None:
        """Stops the server (SIGTERM, then SIGKILL) and kills the actor, freeing its GPUs."""
        name = handle["actor_name"]
        actor = self._find_actor(name)
        if actor is not None and actor._actor_id.hex() == handle.get("actor_id", actor._actor_id.hex()):
            try:
                # Only an actor past its __init__ can stop its server gracefully; one still pending
                # or starting would queue the call, so it is killed right away (nothing serves yet).
                self._describe(actor, self._status_timeout_s)
                ray.get(actor.stop.remote(self._stop_grace_s),
                        timeout=self._stop_grace_s * 2 + self._call_timeout_s)
            except (RayActorError, GetTimeoutError):
                pass  # dead, stuck or not started: ray.kill ends the actor, and its server with it
            self._kill(name, actor)
            self._await_death(name)
        self._view.release(name)

    def _await_death(self, name: str) -> None:
        """Waits (bounded) until Ray has the actor dead, so its GPUs are free on return."""
        deadline = time.monotonic() + self._call_timeout_s
        while self._find_actor(name) is not None and time.monotonic() < deadline:
            time.sleep(0.1)

    def _kill(self, name: str, actor: Any) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except (RayError, ValueError):
            pass  # already dead
        self._view.release(name)

    def logs(self, handle: ReplicaHandle, tail: int = 100) -> list[str]:
        """The server's last `tail` output lines, kept by the actor on its node."""
        actor = self._find_actor(handle["actor_name"])
        if actor is None:
            return []
        try:
            return ray.get(actor.logs.remote(tail), timeout=self._call_timeout_s)
        except (RayActorError, GetTimeoutError):
            return []

    def adapter_path(self, handle: ReplicaHandle, folder: str) -> str:
        """Ray workers read the host's files as they are (no sandbox): the folder itself."""
        return folder

    def adopt(self) -> list[ReplicaHandle]:
        """Handles of every replica actor in this launcher's Ray namespace."""
        self._connect()
        handles = []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] != self._ray_namespace:
                continue
            actor = self._find_actor(entry["name"])
            if actor is None:
                continue
            try:
                info = self._describe(actor, self._status_timeout_s)
            except RayActorError:
                continue  # died meanwhile
            except GetTimeoutError:
                info = None  # not placed yet: still ours to keep or stop
            handle = self._handle(entry["name"], actor, info)
            if info:
                self._view.reserve(entry["name"], info["node_id"], info["assigned"])
            handles.append(handle)
        return handles


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def create_launcher(settings: Any) -> RayLauncher:
    """Entry point `launchers.create_launcher` calls for `LORAFLEET_LAUNCHER=ray`."""
    return RayLauncher.from_settings(settings)
