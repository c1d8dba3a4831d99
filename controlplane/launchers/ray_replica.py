"""The Ray actor that runs one runtime replica on the node Ray placed it on.

`RayLauncher` ships this module to the cluster by value (`cloudpickle.register_pickle_by_value`),
so it imports nothing from lorafleet: a worker node needs `ray` and `lorafleet[runtime]` only,
never the control plane's dependencies. The actor owns exactly one child process,
`python -m lorafleet.runtime`, started with the interpreter the actor itself runs on (the node's
preinstalled environment, or the virtualenv a Ray `runtime_env` built for it).

The child dies with the actor: it is started with `PR_SET_PDEATHSIG`, so even `ray.kill`, which
SIGKILLs the actor's worker process without running any Python, takes the server down with it.

The child runs a tenant's input, so it starts from a minimal environment: the few variables of
the node that locate its software (`NODE_ENV`), the environment the launcher sends (the operator's
and the tenant's checked settings, the replica's `API_KEY`), and what this actor decides: the port,
the node's own address to listen on (never 0.0.0.0: one interface, behind the key), the GPUs Ray
assigned, and a private home and Hub cache. Nothing of Ray's own (`RAY_*`, the GCS address) or of
the worker's environment passes.
"""

from __future__ import annotations

import collections
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import ray

RUNTIME_MODULE = "lorafleet.runtime"
LOG_LINES = 2000  # the ring buffer `logs()` reads; the control plane shows the tail
NODE_ENV = ("PATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "CONDA_PREFIX")
LAUNCHER_ENV = ("PORT", "HOSTNAME", "CUDA_VISIBLE_DEVICES", "NUM_SHARD", "HOME", "TMPDIR")
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    """Returns a TCP port that is free on this node right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it when the actor process dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ReplicaServer:
    """A runtime replica served from the node this actor lives on.

    Args:
        command: the server command; None runs `python -m lorafleet.runtime` with this actor's
            interpreter, which is the node's lorafleet environment (or the `runtime_env`'s).
        env: the server's settings from the launcher (TGI names: `MODEL_ID`, `LORA_ADAPTERS`,
            `MAX_INPUT_LENGTH`, ..., and `API_KEY`). `PORT`, `HOSTNAME`, `CUDA_VISIBLE_DEVICES`,
            `HOME` and `TMPDIR` are set here: a free port of this node, its address, the GPUs Ray
            assigned, a folder of this replica's own, which also holds the Hub cache unless the
            operator's environment names a shared `HF_HOME` (tenants cannot set it).
        args: extra command-line arguments (the endpoint's `model.args`).
        spec_digest: fingerprint of the replica spec, so that a launcher finding this actor
            by name can tell whether it still runs the spec it wants.
    """

    def __init__(self, command: list[str] | None, args: list[str], env: dict[str, str],
                 spec_digest: str) -> None:
        self._spec_digest = spec_digest
        self._port = _free_port()
        self._host = ray.util.get_node_ip_address()
        self._gpu_ids = [str(gpu) for gpu in ray.get_gpu_ids()]
        self._log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._started_at = time.time()
        self._folder = tempfile.mkdtemp(prefix="lorafleet-replica-")  # 0700
        child_env = {k: os.environ[k] for k in NODE_ENV if k in os.environ}
        child_env.update({k: v for k, v in env.items() if k not in LAUNCHER_ENV})
        child_env.update(PORT=str(self._port), HOSTNAME=self._host, HOME=self._folder, TMPDIR=self._folder)
        child_env.setdefault("HF_HOME", os.path.join(self._folder, "huggingface"))
        # Without GPUs from Ray the replica must not grab a GPU some other actor holds.
        child_env["CUDA_VISIBLE_DEVICES"] = ",".join(self._gpu_ids)
        child_env["NUM_SHARD"] = str(max(len(self._gpu_ids), 1))  # one shard per GPU Ray gave the actor
        command = [*(command or [sys.executable, "-m", RUNTIME_MODULE]), *args]
        # Popen runs on the actor's main thread, which lives as long as the actor: the
        # parent-death signal fires when the creating *thread* exits, so this matters.
        self._process = subprocess.Popen(
            command,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._read_output, name="replica-log", daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            self._log.append(raw.decode("utf-8", errors="replace").rstrip("\n"))

    def describe(self) -> dict[str, Any]:
        """Where the replica serves and whether its server still runs.

        Returns:
            `node_id`, `host` (this node's IP), `port`, `pid`, `gpu_ids`, `spec_digest`,
            `started_at` (epoch seconds), `exit_code` (None while the server runs) and
            `assigned` (the resources Ray granted this actor, e.g. `{"GPU": 1.0, ...}`).
        """
        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "assigned": dict(context.get_assigned_resources()),
            "host": self._host,
            "port": self._port,
            "pid": self._process.pid,
            "gpu_ids": list(self._gpu_ids),
            "spec_digest": self._spec_digest,
            "started_at": self._started_at,
            "exit_code": self._process.poll(),
        }

    def logs(self, tail: int = 200) -> list[str]:
        """The last `tail` lines the server wrote to stdout and stderr."""
        lines = list(self._log)
        return lines[-tail:] if tail > 0 else []

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Stops the server: SIGTERM to its process group, SIGKILL after `grace_s`.

        Returns:
            The server's exit code.
        """
        if self._process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._process.wait(timeout=grace_s)
        self._reader.join(timeout=1.0)
        shutil.rmtree(self._folder, ignore_errors=True)
        return self._process.returncode

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self._process.pid, signum)
        except ProcessLookupError:
            pass  # already gone
