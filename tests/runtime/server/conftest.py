"""A real `python -m lorafleet.runtime` on a free localhost port, and the engine as oracle.

Each test module starts its server once (module scope) with the tiny Mistral and the standard
adapters; the oracle is an in-process `Engine` on the same files, so server answers are
checked against the engine's own greedy results.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fixtures import standard_adapters, tiny_model

STARTUP_TIMEOUT_S = 180


@dataclass(frozen=True)
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path  # the process's stdout and stderr
    api_key: str | None = None
    log_file: Path | None = None  # --log-file/LOG_FILE, when set

    @property
    def headers(self) -> dict[str, str]:
        """What a client sends: the replica's key, when it has one."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample of `/metrics` (0 when absent)."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=30).text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def run_server(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    """Starts the runtime with `args`, waits for `/health` 200, stops it on exit."""
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lorafleet.runtime",
                "--hostname",
                "127.0.0.1",
                "--port",
                str(port),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    log_file = (env or {}).get("LOG_FILE")
    server = RunningServer(
        f"http://127.0.0.1:{port}",
        process,
        log_path,
        api_key=(env or {}).get("API_KEY"),
        log_file=Path(log_file) if log_file else None,
    )
    try:
        wait_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(server: RunningServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"server not healthy after {STARTUP_TIMEOUT_S}s:\n{server.log()}")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return tiny_model("mistral")


@pytest.fixture(scope="session")
def adapters(model_dir: Path) -> dict[str, Path]:
    return standard_adapters(model_dir)


def adapter_flag(adapters: dict[str, Path]) -> str:
    return ",".join(f"{name}={path}" for name, path in adapters.items())


@pytest.fixture(scope="module")
def server(
    model_dir: Path, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--model-id", str(model_dir), "--lora-adapters", adapter_flag(adapters)]
    with run_server(args, log_path) as running:
        yield running


SECURED_LOG_MAX_BYTES = 64 * 1024  # the smallest the runtime accepts: rotation shows quickly


@pytest.fixture(scope="module")
def secured_server(
    model_dir: Path, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The standard replica as the control plane runs it: its own API key and a rotated log file."""
    folder = tmp_path_factory.mktemp("secured")
    env = {
        "API_KEY": f"replica-key-{secrets.token_hex(16)}",
        "LOG_FILE": str(folder / "replica.log"),
        "LOG_MAX_BYTES": str(SECURED_LOG_MAX_BYTES),
    }
    args = ["--model-id", str(model_dir), "--lora-adapters", adapter_flag(adapters)]
    with run_server(args, folder / "stdout.log", env=env) as running:
        yield running


@pytest.fixture(scope="module")
def engine(model_dir: Path, adapters: dict[str, Path]):  # type: ignore[no-untyped-def]
    """The oracle: the engine itself, in this process, on the same files."""
    from lorafleet.runtime.engine import Engine

    oracle = Engine.from_pretrained(model_dir, adapters={k: str(v) for k, v in adapters.items()})
    with oracle:
        yield oracle
