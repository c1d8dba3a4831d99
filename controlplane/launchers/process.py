"""The `process` launcher: each replica is `python -m lorafleet.runtime` on this host.

A replica runs in its own session (process group), so it outlives the control plane and is
adopted by the next one through its handle file (`replica_files.py`). A PID is only trusted
together with the process start recorded at launch (PIDs are reused; see `process_identity.py`).
GPUs are reserved per replica from the ones `nvidia-smi` reports, by model, and passed as
`CUDA_VISIBLE_DEVICES`.

A replica runs a tenant's input: it starts from a minimal environment built here (never the
control plane's `os.environ`), listens on loopback behind its own `API_KEY`, and runs confined by
`sandbox.py` (bubblewrap, one unprivileged uid per namespace) where the host allows it.

Crash safety: the replica starts behind a gate (`sh` reading one line from a pipe) and the gate
opens only once the handle file is written. If the control plane dies between spawning and
writing the handle, the pipe closes, the gate reads end-of-file and exits: no replica outlives the
launcher without a handle that `adopt()` and `stop-all-replicas` find.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from lorafleet.controlplane.catalog.loader import HostGpu, detect_gpus
from lorafleet.controlplane.catalog.types import Catalog, InstanceType
from lorafleet.controlplane.launchers.base import (
    ImpossibleRequestError,
    NoCapacityError,
    ReplicaHandle,
    ReplicaSpec,
    ReplicaStatus,
    cpu_threads_env,
)
from lorafleet.controlplane.launchers.process_identity import is_same_process, start_marks
from lorafleet.controlplane.launchers.replica_files import ReplicaFiles, tail_lines
from lorafleet.controlplane.launchers.sandbox import (
    Isolation,
    Mounts,
    NamespaceUsers,
    detect,
    gpu_devices,
    owned_folder,
    python_paths,
    sandbox_command,
    stage_adapter_files,
)
from lorafleet.controlplane.settings import Settings

log = logging.getLogger("lorafleet.controlplane.launchers")

STOP_GRACE_S = 10.0
GATE = 'read -r go && [ "$go" = start ] && exec "$@"'  # $0 is a label, "$@" the replica's command
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ProcessConfig:
    """How this host runs replicas (from `Settings`).

    Args:
        command: the replica command (`python -m lorafleet.runtime`).
        home: the control plane's state folder: replicas' files go to `replicas/`, each
            namespace's home and Hub cache to `namespaces/<name>/`.
        host: the host name in replica URLs.
        isolation: what `sandbox.detect` found.
        read_only: host paths shown read-only in every sandbox besides the interpreter's.
        operator_env: the operator's environment for every replica (`LORAFLEET_REPLICA_ENV`).
        log_max_bytes: `LOG_MAX_BYTES`, where the runtime rotates its log file.
        output_max_bytes: cap of the captured stdout/stderr.
        max_processes: `RLIMIT_NPROC` of a namespace's uid.
        uid_base, uid_count: the uids namespaces get.
    """

    command: tuple[str, ...]
    home: Path
    host: str = "127.0.0.1"
    isolation: Isolation = Isolation(False, False, "not configured")
    read_only: tuple[str, ...] = ()
    operator_env: Mapping[str, str] | None = None
    log_max_bytes: int = 10_000_000
    output_max_bytes: int = 1_000_000
    max_processes: int = 8192
    uid_base: int = 2_000_000_000
    uid_count: int = 100_000

    @classmethod
    def from_settings(cls, settings: Settings) -> ProcessConfig:
        isolation = detect(settings.isolation)
        return cls(
            tuple(settings.replica_command), settings.home, settings.public_host, isolation,
            tuple(str(p) for p in settings.sandbox_path_list), dict(settings.replica_env),
            settings.replica_log_max_bytes, settings.replica_output_max_bytes,
            settings.replica_max_processes, settings.replica_uid_base, settings.replica_uid_count,
        )


class ProcessLauncher:
    """Runs replicas as local processes; owns the GPU reservations of this host."""

    name = "process"

    def __init__(self, config: ProcessConfig, gpus: list[HostGpu]) -> None:
        self._config = config
        self._state_dir = config.home / "replicas"
        self._gpus = gpus
        self._lock = threading.Lock()
        self._gpu_owner: dict[int, str] = {}  # GPU index → replica_key
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._users = NamespaceUsers(config.home / "replica-uids.json", config.uid_base, config.uid_count)
        self._python_paths: tuple[str, ...] | None = None  # listed at the first sandboxed start
        config.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._state_dir.mkdir(mode=0o700, exist_ok=True)
        (config.home / "namespaces").mkdir(mode=0o700, exist_ok=True)
        self.isolation = config.isolation

    @classmethod
    def from_settings(cls, settings: Settings) -> ProcessLauncher:
        config = ProcessConfig.from_settings(settings)
        isolation = config.isolation
        if isolation.note:  # something is missing: replicas can reach more than they should
            log.warning("replica isolation: %s (%s); see docs/security.md", isolation.label, isolation.note)
        else:
            log.info("replica isolation: %s", isolation.label)
        return cls(config, detect_gpus())

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
        try:
            return self._launch(spec, gpus)
        except BaseException:
            self._release(spec.replica_key)
            raise

    def _launch(self, spec: ReplicaSpec, gpus: list[int]) -> ReplicaHandle:
        files = ReplicaFiles(self._state_dir, spec.replica_key)
        uid = self._users.uid(spec.endpoint_namespace) if self.isolation.switch_user else None
        home = owned_folder(self._config.home / "namespaces" / spec.endpoint_namespace, uid)
        files.prepare(uid)
        port = free_port()
        command = self._command(spec, files, home, uid, gpus)
        output = files.open_output()
        try:
            child = subprocess.Popen(
                ["/bin/sh", "-c", GATE, f"lorafleet-{spec.replica_key}", *command],
                env=self._environment(spec, files, home, port, gpus),
                cwd=files.folder, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            files.remove()
            raise NoCapacityError(f"cannot start {command[0]}: {e}") from e
        finally:
            os.close(output)
        handle: ReplicaHandle = {
            "replica_key": spec.replica_key, "launcher": self.name, "pid": child.pid,
            **start_marks(child.pid), "port": port, "host": self._config.host, "gpus": gpus,
            "folder": str(files.folder), "uid": uid, "isolation": self.isolation.label, "digest": spec.digest,
        }
        with self._lock:
            self._children[spec.replica_key] = child
        try:
            files.write_handle(handle)  # before the gate opens: a started replica always has a handle
        except BaseException:
            child.kill()
            child.wait()
            raise
        _open_gate(child)
        return handle

    def _command(self, spec: ReplicaSpec, files: ReplicaFiles, home: Path, uid: int | None,
                 gpus: list[int]) -> list[str]:
        command = [*self._config.command, *spec.args]
        if not self.isolation.sandbox:
            return command
        if self._python_paths is None:
            self._python_paths = python_paths()
        mounts = Mounts(
            read_only=(*self._python_paths, *self._config.read_only), folders=spec.folders,
            writable=(str(home), str(files.folder)), devices=gpu_devices() if gpus else (),
        )
        return sandbox_command(command, mounts, cwd=str(files.folder), uid=uid,
                               max_processes=self._config.max_processes)

    def _environment(self, spec: ReplicaSpec, files: ReplicaFiles, home: Path, port: int,
                     gpus: list[int]) -> dict[str, str]:
        """Minimal: the operator's defaults, the tenant's checked settings, then the launcher's own."""
        env = {**BASE_ENV, **cpu_threads_env(spec.instance), **(self._config.operator_env or {}), **spec.env}
        env.update({
            "HOME": str(home), "HF_HOME": str(home / "huggingface"), "TMPDIR": str(files.tmp),
            "PORT": str(port), "HOSTNAME": "127.0.0.1", "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
            "LOG_FILE": str(files.log), "LOG_MAX_BYTES": str(self._config.log_max_bytes),
            # The runtime splits the model over every GPU reserved for it (tensor parallelism).
            "NUM_SHARD": str(max(len(gpus), 1)),
        })
        if spec.api_key:
            env["API_KEY"] = spec.api_key
        return env

    def status(self, handle: ReplicaHandle) -> ReplicaStatus:
        url = f"http://{handle['host']}:{handle['port']}"
        files = ReplicaFiles.of(handle)
        if files is not None:
            files.cap_output(self._config.output_max_bytes)
        with self._lock:
            child = self._children.get(handle["replica_key"])
        if child is not None:
            code = child.poll()
            if code is None:
                return ReplicaStatus("running", url)
            return ReplicaStatus("exited", url, code, f"process exited with code {code}")
        if is_same_process(handle):
            return ReplicaStatus("running", url)
        return ReplicaStatus("exited", url, None, "process is gone")

    def stop(self, handle: ReplicaHandle) -> None:
        key = handle["replica_key"]
        with self._lock:
            child = self._children.pop(key, None)
        if child is not None or is_same_process(handle):
            _terminate_group(handle["pid"], child)
        self._release(key)
        files = ReplicaFiles.of(handle)
        if files is not None:
            files.remove()
        (self._state_dir / f"{key}.json").unlink(missing_ok=True)

    def logs(self, handle: ReplicaHandle, tail: int = 100) -> list[str]:
        files = ReplicaFiles.of(handle)
        if files is not None:
            return files.tail(tail)
        return tail_lines(Path(handle["log"]), tail) if handle.get("log") else []

    def adapter_path(self, handle: ReplicaHandle, folder: str) -> str:
        """A sandbox shows only the folders named at launch, so an adapter added later is copied
        into the replica's own folder (a fresh subfolder per load: a running load never sees its
        files change), owned by the replica's uid; unconfined replicas read the folder itself."""
        if not str(handle.get("isolation", "")).startswith("sandbox"):  # how it was started
            return folder
        return stage_adapter_files(Path(folder), Path(handle["folder"]) / "adapters", handle.get("uid"))

    def adopt(self) -> list[ReplicaHandle]:
        alive = []
        for path in sorted(self._state_dir.glob("*.json")):
            handle = _read_handle(path)
            if handle is None or not is_same_process(handle):
                path.unlink(missing_ok=True)  # its files stay until the reconciler stops the replica
                continue
            with self._lock:
                for index in handle.get("gpus", []):
                    self._gpu_owner[index] = handle["replica_key"]
            alive.append(handle)
        return alive

    def close(self) -> None:
        with self._lock:
            self._children.clear()  # replicas keep running; the next control plane adopts them


def _read_handle(path: Path) -> dict[str, Any] | None:
    try:
        handle = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return handle if isinstance(handle, dict) else None


def _open_gate(child: subprocess.Popen[bytes]) -> None:
    """Lets the gated replica exec; a gate that already died shows as `exited` at the next status."""
    assert child.stdin is not None
    try:
        child.stdin.write(b"start\n")
        child.stdin.close()
    except OSError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the process group: a sandboxed replica's
    server outlives the sandbox's first process for as long as its graceful shutdown takes."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
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
            if child is not None:
                child.poll()  # reap the group's leader, so its zombie does not count
            if not _group_alive(pid):
                return
            time.sleep(0.1)
    if child is not None:
        child.poll()
