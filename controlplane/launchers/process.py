"""The `process` launcher: each replica is `python -m lorafleet.runtime` on this host.

A replica runs in its own session (process group), so it outlives the control plane and is
adopted by the next one: its handle is also written to `<home>/replicas/<key>.json`, and its
stdout/stderr go to `<home>/replicas/<key>.log`. A PID is only trusted together with the
process start time recorded at launch (PIDs are reused). GPUs are reserved per replica from the
ones `nvidia-smi` reports, by model, and passed as `CUDA_VISIBLE_DEVICES`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
from lorafleet.controlplane.catalog.loader import HostGpu, detect_gpus
from lorafleet.controlplane.catalog.types import Catalog, InstanceType
from lorafleet.controlplane.launchers.base import (
    ImpossibleRequestError,
    NoCapacityError,
    ReplicaHandle,
    ReplicaSpec,
    ReplicaStatus,
)
from lorafleet.controlplane.settings import Settings

STOP_GRACE_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail_lines(path: Path, count: int, block: int = 65536) -> list[str]:
    """The last `count` lines of a file, reading backwards in blocks (logs can be large)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = position = handle.tell()
            data = b""
            while position > 0 and data.count(b"\n") <= count:
                position = max(0, position - block)
                handle.seek(position)
                data = handle.read(end - position)
    except FileNotFoundError:
        return []
    return [line for line in data.decode("utf-8", errors="replace").splitlines()][-count:]


class ProcessLauncher:
    """Runs replicas as local processes; owns the GPU reservations of this host."""

    name = "process"

    def __init__(self, command: list[str], state_dir: Path, host: str, gpus: list[HostGpu]) -> None:
        self._command = command
        self._state_dir = state_dir
        self._host = host
        self._gpus = gpus
        self._lock = threading.Lock()
        self._gpu_owner: dict[int, str] = {}  # GPU index → replica_key
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        state_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProcessLauncher:
        return cls(settings.replica_command, settings.home / "replicas", settings.public_host, detect_gpus())

    # --- capacity -------------------------------------------------------------------------

    def catalog(self) -> Catalog | None:
        return None

    def validate(self, instance: InstanceType) -> None:
        if instance.gpu_model is None:
            return
        have = sum(1 for g in self._gpus if g.model == instance.gpu_model)
        if have < instance.num_accelerators:
            raise ImpossibleRequestError(
                f"{instance.instance_type} {instance.instance_size} needs {instance.num_accelerators} "
                f"{instance.gpu_model} GPU(s); this host has {have}",
                field="compute.instanceSize",
            )

    def used_accelerators(self, instance: InstanceType) -> int:
        with self._lock:
            return sum(1 for i in self._gpu_owner if self._gpus[i].model == instance.gpu_model)

    def _reserve(self, spec: ReplicaSpec) -> list[int]:
        instance = spec.instance
        if instance.gpu_model is None or instance.num_accelerators == 0:
            return []
        with self._lock:
            free = [
                i
                for i, g in enumerate(self._gpus)
                if g.model == instance.gpu_model and i not in self._gpu_owner
            ]
            if len(free) < instance.num_accelerators:
                total = sum(1 for g in self._gpus if g.model == instance.gpu_model)
                raise NoCapacityError(
                    f"waiting for GPUs: needs {instance.num_accelerators} {instance.gpu_model}, "
                    f"{len(free)} of {total} free on this host"
                )
            chosen = free[: instance.num_accelerators]
            for index in chosen:
                self._gpu_owner[index] = spec.replica_key
            return chosen

    def _release(self, replica_key: str) -> None:
        with self._lock:
            for index in [i for i, key in self._gpu_owner.items() if key == replica_key]:
                del self._gpu_owner[index]

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        gpus = self._reserve(spec)
        port = free_port()
        log_path = self._state_dir / f"{spec.replica_key}.log"
        env = {
            **os.environ,
            **spec.env,
            "PORT": str(port),
            "HOSTNAME": "127.0.0.1",
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpus),
        }
        command = [*self._command, *spec.args]
        try:
            with log_path.open("ab") as log:
                child = subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as e:
            self._release(spec.replica_key)
            raise NoCapacityError(f"cannot start {command[0]}: {e}") from e
        handle: ReplicaHandle = {
            "replica_key": spec.replica_key,
            "launcher": self.name,
            "pid": child.pid,
            "started": _create_time(child.pid),
            "port": port,
            "host": self._host,
            "gpus": gpus,
            "log": str(log_path),
            "digest": spec.digest,
        }
        with self._lock:
            self._children[spec.replica_key] = child
        self._handle_path(spec.replica_key).write_text(json.dumps(handle))
        return handle

    def status(self, handle: ReplicaHandle) -> ReplicaStatus:
        url = f"http://{handle['host']}:{handle['port']}"
        with self._lock:
            child = self._children.get(handle["replica_key"])
        if child is not None:
            code = child.poll()
            if code is None:
                return ReplicaStatus("running", url)
            return ReplicaStatus("exited", url, code, f"process exited with code {code}")
        if _matches(handle):
            return ReplicaStatus("running", url)
        return ReplicaStatus("exited", url, None, "process is gone")

    def stop(self, handle: ReplicaHandle) -> None:
        key = handle["replica_key"]
        with self._lock:
            child = self._children.pop(key, None)
        if child is not None or _matches(handle):
            _terminate_group(handle["pid"], child)
        self._release(key)
        self._handle_path(key).unlink(missing_ok=True)

    def logs(self, handle: ReplicaHandle, tail: int = 100) -> list[str]:
        return tail_lines(Path(handle["log"]), tail) if handle.get("log") else []

    def adopt(self) -> list[ReplicaHandle]:
        alive = []
        for path in sorted(self._state_dir.glob("*.json")):
            try:
                handle = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                path.unlink(missing_ok=True)
                continue
            if not _matches(handle):
                path.unlink(missing_ok=True)
                continue
            with self._lock:
                for index in handle.get("gpus", []):
                    self._gpu_owner[index] = handle["replica_key"]
            alive.append(handle)
        return alive

    def close(self) -> None:
        with self._lock:
            self._children.clear()  # replicas keep running; the next control plane adopts them

    def _handle_path(self, replica_key: str) -> Path:
        return self._state_dir / f"{replica_key}.json"


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def _matches(handle: ReplicaHandle) -> bool:
    """Whether the handle's PID is still the process we started (same start time, not a zombie)."""
    try:
        process = psutil.Process(int(handle["pid"]))
        same = abs(process.create_time() - float(handle.get("started", 0))) < 1.0
        return same and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, ValueError):
        return False


def _alive(pid: int) -> bool:
    """Whether `pid` still runs: a zombie (dead, waiting for a parent that is not us to reap it,
    e.g. a stray whose parent is another process) has exited and counts as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _terminate_group(pid: int, child: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the replica's process group, SIGKILL after the grace period, reap if ours."""
    for signum, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                return
            if child is None and not _alive(pid):
                return
            time.sleep(0.1)
    if child is not None:
        child.poll()
