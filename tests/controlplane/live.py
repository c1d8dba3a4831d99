"""A real control plane in a subprocess, for tests across the project (SDK, dashboard, Ray, e2e).

Example:
    >>> from tests.controlplane.live import live_controlplane
    >>> with live_controlplane() as cp:
    ...     httpx.get(f"{cp.url}/v2/endpoint/{cp.namespace}", headers=cp.headers)
    ...     cp.restart()                     # same database, same replicas (adopted)
    ...     with cp.sibling() as other:      # a second server process on the same database
    ...         httpx.get(f"{other.url}/health")

It runs `python -m lorafleet.controlplane serve` on a free localhost port with a fresh, migrated
SQLite database in a temporary folder (or `database_url`), creates a token through the CLI, and
waits for `/health`. At exit it stops the server and then every replica its launcher can still
find (`stop-all-replicas`), so nothing outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from tests.fixtures import fixtures_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveControlPlane:
    """A running control plane. `url`, `token`, `namespace`, `env` (to run more processes, e.g.
    the CLI, against the same database), `headers`, `home`, `restart()`, `cli(...)`, `sibling()`,
    `pid`."""

    def __init__(
        self,
        home: Path,
        env: dict[str, str],
        namespace: str,
        startup_timeout_s: float,
        log_name: str = "controlplane.log",
    ) -> None:
        self.home = home
        self.env = env
        self.namespace = namespace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.log_path = home / log_name
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    @property
    def local_models(self) -> Path:
        """A folder under the control plane's LOCAL_ROOTS for a test's own models and adapters."""
        return self.home / "local-models"

    @property
    def endpoints_url(self) -> str:
        """The base for `huggingface_hub.constants.INFERENCE_ENDPOINTS_ENDPOINT`."""
        return f"{self.url}/v2"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs `python -m lorafleet.controlplane *args` against this control plane's database."""
        result = subprocess.run(
            [sys.executable, "-m", "lorafleet.controlplane", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"`controlplane {' '.join(args)}` failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def create_token(self, namespace: str) -> str:
        return self.cli("create-token", "--namespace", namespace).stdout.strip().splitlines()[-1]

    def start(self) -> None:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lorafleet.controlplane",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"control plane exited with {self._process.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"control plane not healthy after {self._startup_timeout_s} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stops the server only; its replicas keep running (as after a crash or an upgrade)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    @property
    def pid(self) -> int | None:
        """The server process's PID while it runs."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    @contextlib.contextmanager
    def sibling(self) -> Iterator[LiveControlPlane]:
        """A second, started control-plane process on the same database, home (replica handle
        files), settings and token, on its own port and log file; stopped at exit (its replicas
        are left to `live_controlplane`'s clean-up). Two such processes elect one reconciler."""
        # One public URL for both, as behind a load balancer: endpoints' URLs do not depend on
        # which process leads (the docs say to give every process the same LORAFLEET_PUBLIC_URL).
        env = {**self.env, "LORAFLEET_PUBLIC_URL": self.env.get("LORAFLEET_PUBLIC_URL", self.url)}
        other = LiveControlPlane(
            self.home, env, self.namespace, self._startup_timeout_s, f"controlplane-{free_port()}.log"
        )
        other.token = self.token
        try:
            other.start()
            yield other
        finally:
            other.stop()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stops the server (SIGTERM, or SIGKILL to simulate a crash) and starts it again on the same
        port and database; the new process adopts the replicas that are still alive."""
        self.stop(sig)
        self.start()

    def reconciler(self) -> dict[str, object]:
        """`{"passes": n, "leading": bool}` from `/health`: finished reconciler loop iterations."""
        return httpx.get(f"{self.url}/health", timeout=10).json()["reconciler"]

    def wait_passes(self, count: int, timeout_s: float = 120.0) -> None:
        """Returns once this process has finished `count` more reconciler loop iterations (a test
        that must see that nothing happens waits for passes, not for a guessed time)."""
        target = int(self.reconciler()["passes"]) + count  # type: ignore[call-overload]
        deadline = time.monotonic() + timeout_s
        while int(self.reconciler()["passes"]) < target:  # type: ignore[call-overload]
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.url} did not finish {count} reconciler passes in {timeout_s} s")
            time.sleep(0.1)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def live_controlplane(
    *,
    namespace: str = "alice",
    launcher: str = "process",
    catalog: Path | None = None,
    database_url: str | None = None,
    runtime_command: str | None = None,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    startup_timeout_s: float = 60.0,
) -> Iterator[LiveControlPlane]:
    """Starts a control plane; yields it; stops it and all its replicas at exit.

    Args:
        namespace: namespace of the token created for `cp.token`.
        launcher: `LORAFLEET_LAUNCHER` (`process` or `ray`).
        catalog: `LORAFLEET_CATALOG` file (default: the built-in catalog of this host).
        database_url: default a fresh SQLite file in the temporary home; the database must be empty
            or migrated (`migrate` runs on it either way).
        runtime_command: `LORAFLEET_RUNTIME_COMMAND` (default `python -m lorafleet.runtime`).
        env: more environment for the server (and `cp.env`), e.g. `{"LORAFLEET_MAX_RESTARTS": "0"}`.
        home: `LORAFLEET_HOME` (default: a temporary folder removed at exit).

    Replicas may read models under `LORAFLEET_LOCAL_ROOTS`: the fixtures folder and
    `cp.local_models`; they never reach the Hub (`LORAFLEET_REPLICA_ENV` sets `HF_HUB_OFFLINE=1`).
    """
    own_home = home is None
    home = Path(tempfile.mkdtemp(prefix="lorafleet-cp-")) if home is None else home
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    server_env.update(
        {
            "LORAFLEET_HOME": str(home),
            "LORAFLEET_LAUNCHER": launcher,
            "LORAFLEET_DATABASE_URL": database_url or f"sqlite:///{home / 'controlplane.db'}",
            "LORAFLEET_SECRET_KEY": "live-controlplane-test-key",
            "LORAFLEET_RECONCILE_INTERVAL_S": "0.5",
            "LORAFLEET_LOCAL_ROOTS": os.pathsep.join([str(fixtures_dir()), str(home / "local-models")]),
            "LORAFLEET_REPLICA_ENV": '{"HF_HUB_OFFLINE": "1"}',
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key in ("LORAFLEET_FIXTURES_DIR", "LORAFLEET_TEST_DATABASE_URL"):
        if key in os.environ:
            server_env[key] = os.environ[key]
    if catalog is not None:
        server_env["LORAFLEET_CATALOG"] = str(catalog)
    if runtime_command is not None:
        server_env["LORAFLEET_RUNTIME_COMMAND"] = runtime_command
    server_env.update(env or {})
    cp = LiveControlPlane(home, server_env, namespace, startup_timeout_s)
    cp.local_models.mkdir(parents=True, exist_ok=True)
    try:
        cp.cli("migrate")
        cp.token = cp.create_token(namespace)
        cp.start()
        yield cp
    finally:
        cp.stop()
        cp.cli("stop-all-replicas", check=False)
        if own_home:
            shutil.rmtree(home, ignore_errors=True)
