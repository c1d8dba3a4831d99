"""The contract between the reconciler and whatever runs replicas (a local process, a Ray actor).

The reconciler owns *what* should run (rows in the `replicas` table); a launcher owns *how* it
runs. Everything a launcher needs to start a replica is in one frozen `ReplicaSpec`; everything it
needs to find the replica again, even from another control-plane process after a restart, is in
the JSON-serialisable `ReplicaHandle` it returns (the reconciler stores it in the database).

Capacity has two questions, asked at different times:

* `validate(instance)` at create/update time: can this instance type *ever* run here? A launcher
  raises `ImpossibleRequestError` (rendered as HTTP 400) for, say, 8 GPUs on a cluster whose
  largest node has 4.
* `start()` at reconcile time: is there room *now*? A launcher raises `NoCapacityError` whose
  message the endpoint shows while it stays `pending` ("fits the cluster but no free GPU now").

A launcher may describe the hardware itself (`catalog()`, e.g. Ray derives it from cluster nodes);
returning None means "use the catalog file".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from lorafleet.controlplane.catalog.types import Catalog, InstanceType
from lorafleet.controlplane.errors import ControlPlaneError

ReplicaHandle = dict[str, Any]
"""Launcher-specific JSON object that identifies a running replica; always holds `replica_key`."""

ReplicaPhase = Literal["starting", "running", "exited"]


class LauncherError(ControlPlaneError):
    """Root of launcher errors."""


class ImpossibleRequestError(LauncherError):
    """The instance type can never run on this launcher's hardware (HTTP 400 at create time)."""

    status_code = 400


class NoCapacityError(LauncherError):
    """The instance fits the hardware, but not now: the endpoint stays `pending` with this message."""

    status_code = 409


@dataclass(frozen=True)
class LocalFolder:
    """A host folder a replica may read: at `path` (as the spec names it), really at `real`."""

    path: str
    real: str


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything needed to start one runtime replica.

    Args:
        replica_key: unique, stable name of this replica (`rep-<hex>`); a launcher embeds it in
            the handle and in whatever it creates (file names, Ray actor names) so `adopt()` can
            tell which replica a survivor is.
        endpoint_namespace: namespace of the endpoint the replica serves.
        endpoint_name: name of the endpoint.
        instance: the resolved catalog entry (GPU model and count, or CPU).
        env: the tenant's part of the environment of `python -m lorafleet.runtime` (TGI names:
            `MODEL_ID`, `LORA_ADAPTERS`, `MAX_INPUT_LENGTH`, ..., plus the endpoint's decrypted
            secrets), already checked against `endpoints/env_policy.py`. A launcher starts the
            replica from a minimal environment of its own, never its own `os.environ`, and sets
            `PORT`, `HOSTNAME`, `CUDA_VISIBLE_DEVICES`, `API_KEY` (and its log file) itself.
        args: extra command-line arguments for the runtime (the endpoint's `model.args`, checked).
        health_route: path that answers 200 once the replica is ready (e.g. `/health`).
        api_key: the replica's own key (`API_KEY`): every route but `/health` wants it as a
            bearer token. Not part of the digest; never logged.
        folders: the local model and adapter folders the spec names (under `LOCAL_ROOTS`), the only
            host files a sandboxed replica reads besides its interpreter.
        digest: the endpoint spec's replica digest (`EndpointSpec.replica_digest`, also on the
            replica's row): equal digests mean interchangeable replicas. A launcher that finds a
            replica already running under this key reuses it only if the digest matches.
    """

    replica_key: str
    endpoint_namespace: str
    endpoint_name: str
    instance: InstanceType
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    health_route: str = "/health"
    api_key: str = field(default="", repr=False)
    folders: tuple[LocalFolder, ...] = ()
    digest: str = ""


def cpu_threads_env(instance: InstanceType) -> dict[str, str]:
    """`OMP_NUM_THREADS` for a replica of a CPU instance: the instance's cores, not the host's.

    The engine's OpenMP workers busy-wait between a step's operations (docs/runtime.md, "CPU
    threads"), so a replica using every core of a shared host would fight its neighbours. A
    launcher puts this under the operator's environment, which may set its own value. Empty for
    GPU instances and CPU instances of unknown size.
    """
    if instance.accelerator != "cpu" or not instance.num_cpus:
        return {}
    return {"OMP_NUM_THREADS": str(instance.num_cpus)}


@dataclass(frozen=True)
class ReplicaStatus:
    """What a launcher knows about a replica right now.

    Args:
        phase: `starting` (placed, not yet known to serve), `running` (the process/actor is
            alive; the reconciler still probes the health route before calling it ready) or
            `exited` (gone for good).
        url: base URL the replica serves on (`http://host:port`), once known.
        exit_code: the process exit code when `exited` and known.
        message: a human-readable reason (why it exited, where it is pending).
    """

    phase: ReplicaPhase
    url: str | None = None
    exit_code: int | None = None
    message: str = ""


@runtime_checkable
class Launcher(Protocol):
    """Runs replicas. Implementations: `process` (this host) and `ray` (a Ray cluster).

    All methods are called from the reconciler's worker thread (and `logs`/`catalog`/`validate`
    also from request threads), so implementations must be thread-safe. None of them may block
    for long: `start` returns once the replica is *placed*; readiness is probed separately.
    """

    name: str

    def catalog(self) -> Catalog | None:
        """The hardware this launcher offers, or None to use the catalog file."""
        ...

    def validate(self, instance: InstanceType) -> None:
        """Raises `ImpossibleRequestError` if `instance` can never run here."""
        ...

    def used_accelerators(self, instance: InstanceType) -> int:
        """How many accelerators of `instance`'s kind are in use now (the catalog's quota)."""
        ...

    def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Places a replica and returns its handle; raises `NoCapacityError` when full now."""
        ...

    def status(self, handle: ReplicaHandle) -> ReplicaStatus:
        """Reports on a replica; an unknown or vanished replica is `exited`."""
        ...

    def stop(self, handle: ReplicaHandle) -> None:
        """Stops a replica (gracefully, then forcibly) and releases its resources. Idempotent."""
        ...

    def logs(self, handle: ReplicaHandle, tail: int = 100) -> list[str]:
        """The replica's last `tail` log lines (empty when none are available)."""
        ...

    def adapter_path(self, handle: ReplicaHandle, folder: str) -> str:
        """Where a running replica reads a local adapter folder (under `LOCAL_ROOTS`, already
        approved) that was not among the folders it was started with: the folder itself where the
        replica sees the host's files, or a copy it can read (see `ProcessLauncher`)."""
        ...

    def adopt(self) -> list[ReplicaHandle]:
        """Handles of every live replica this launcher can find (after a control-plane restart).

        The reconciler keeps those whose `replica_key` it has in the database and stops the rest,
        so a restart leaves no duplicates and no orphans.
        """
        ...

    def close(self) -> None:
        """Releases the launcher's own resources; replicas keep running (they are adopted later)."""
        ...
