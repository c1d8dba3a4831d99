"""`make demo`: one base model, three trained LoRA adapters, one endpoint, answers side by side.

The seed article's workflow, end to end on this machine:

1. start the control plane on a fresh SQLite database (`python -m lorafleet.controlplane serve`),
2. create an API token for the namespace `demo`,
3. build (or reuse) the trained demo model and its adapters (`tests/fixtures/trained.py`),
4. `lorafleet.create_inference_endpoint(...)` with the article's `custom_image` payload, `wait()`,
5. ask the base model and every adapter the same prompts, concurrently, through the endpoint's URL
   (the gateway), and print the answers, then the usage the gateway metered per adapter,
6. print the dashboard URL and keep the control plane up until Ctrl-C; then stop it and its replicas.

Environment: `DEMO_PORT` (control plane port, default 8000), `DEMO_EXIT=1` (stop right after the
table), `DEMO_DIR` (state folder, default `<repo>/.cache/demo`), `DEMO_WAIT_TIMEOUT` (seconds for
the endpoint to come up, default 600). Exit status 0 when every answer is the adapter's task.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python scripts/demo.py` without PYTHONPATH works too
    sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures import fixtures_dir  # noqa: E402
from tests.fixtures.trained import DEMO_INPUTS, TASKS, demo_prompt, expected_answer, trained_demo  # noqa: E402

NAMESPACE = "demo"
ENDPOINT_NAME = "demo-multi-lora"
NUM_STEPS = 6
MAX_NEW_TOKENS = 16


class DemoError(Exception):
    """A step of the demo failed; the message says which and where its logs are."""


@dataclass(frozen=True)
class DemoConfig:
    port: int
    exit_after_table: bool
    demo_dir: Path
    wait_timeout_s: float

    @classmethod
    def from_env(cls) -> DemoConfig:
        try:
            port = int(os.environ.get("DEMO_PORT", "8000"))
            wait_timeout_s = float(os.environ.get("DEMO_WAIT_TIMEOUT", "600"))
        except ValueError as e:
            raise DemoError(f"DEMO_PORT and DEMO_WAIT_TIMEOUT must be numbers: {e}") from e
        demo_dir = Path(os.environ.get("DEMO_DIR", REPO_ROOT / ".cache" / "demo")).resolve()
        return cls(port, os.environ.get("DEMO_EXIT", "") not in ("", "0"), demo_dir, wait_timeout_s)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Progress:
    """Numbered steps with their duration: `[2/6] Creating a token ... 0.4 s`."""

    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self.step = 0
        self.started = time.monotonic()

    @contextmanager
    def __call__(self, title: str) -> Iterator[None]:
        self.step += 1
        print(f"[{self.step}/{self.num_steps}] {title} ...", flush=True)
        begun = time.monotonic()
        yield
        print(f"      done in {time.monotonic() - begun:.1f} s", flush=True)

    def note(self, text: str) -> None:
        print(f"      {text}", flush=True)


class ControlPlane:
    """Owns the control-plane process of the demo and every replica it launched."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.log_path = config.demo_dir / "controlplane.log"
        self.env = {
            **os.environ,
            "LORAFLEET_HOME": str(config.demo_dir / "home"),
            "LORAFLEET_DATABASE_URL": f"sqlite:///{config.demo_dir / 'controlplane.db'}",
            "LORAFLEET_LAUNCHER": "process",
            # The demo's model and adapters are local folders: the control plane serves only
            # those under its LOCAL_ROOTS (docs/security.md).
            "LORAFLEET_LOCAL_ROOTS": os.environ.get("LORAFLEET_LOCAL_ROOTS") or str(fixtures_dir()),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def _cli(self, *args: str, timeout: float = 120) -> str:
        command = [sys.executable, "-m", "lorafleet.controlplane", *args]
        try:
            result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise DemoError(f"`lorafleet controlplane {' '.join(args)}` took over {timeout:.0f} s") from e
        if result.returncode != 0:
            raise DemoError(
                f"`lorafleet controlplane {' '.join(args)}` exited with {result.returncode}:\n"
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def reset(self) -> None:
        """A fresh database: replicas a crashed earlier demo left behind are stopped first."""
        if (self.config.demo_dir / "controlplane.db").exists():
            try:
                self._cli("stop-all-replicas", timeout=60)
            except DemoError as e:
                print(f"      (could not stop an earlier demo's replicas: {e})", flush=True)
        for name in ("controlplane.db", "home", "controlplane.log"):
            path = self.config.demo_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        self.config.demo_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        _require_free_port(self.config.port)
        self._cli("migrate")
        command = [sys.executable, "-m", "lorafleet.controlplane", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.config.port), "--log-level", "warning"]
        with self.log_path.open("ab") as log:
            # Its own session: Ctrl-C reaches the demo, which then stops things in order.
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_healthy(timeout=60)

    def _wait_healthy(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.raise_if_exited()
            try:
                if httpx.get(f"{self.config.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise DemoError(
            f"the control plane did not answer /health within {timeout:.0f} s; see {self.log_path}"
        )

    def raise_if_exited(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(
                f"the control plane exited with {self.process.returncode}:\n{_tail(self.log_path)}"
            )

    def create_token(self) -> str:
        lines = self._cli("create-token", "--namespace", NAMESPACE, "--description", "make demo").splitlines()
        if not lines or not lines[-1].strip():
            raise DemoError("`create-token` printed no token")
        return lines[-1].strip()

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after 20 s), then every replica it launched."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if (self.config.demo_dir / "controlplane.db").exists():
            print(f"      {self._cli('stop-all-replicas', timeout=60).strip()}", flush=True)


def _require_free_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            raise DemoError(f"port {port} is in use (another demo?); choose one with DEMO_PORT=...") from e


def _tail(path: Path, num_lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])


def _cpu_compute(url: str, token: str) -> dict[str, str]:
    """The smallest CPU instance of the catalog (`GET /v2/provider`): the demo model is tiny."""
    import httpx

    response = httpx.get(f"{url}/v2/provider", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    if response.status_code != 200:
        raise DemoError(f"GET /v2/provider answered {response.status_code}: {response.text[:300]}")
    for vendor in response.json().get("vendors", []):
        for region in vendor.get("regions", []):
            for compute in region.get("computes", []):
                if compute.get("accelerator") == "cpu":
                    return {
                        "vendor": vendor["name"],
                        "region": region["name"],
                        "accelerator": "cpu",
                        "instance_type": compute["instanceType"],
                        "instance_size": compute["instanceSize"],
                    }
    raise DemoError(f"the catalog has no CPU instance type: {response.text[:300]}")


def create_endpoint(url: str, token: str, model_dir: Path, adapters: dict[str, Path]):  # type: ignore[no-untyped-def]
    """The seed article's `create_inference_endpoint` call, with our catalog's CPU instance."""
    import lorafleet

    # The article's custom image, verbatim but for our local model and adapters.
    custom_image = {
        "health_route": "/health",
        "url": "ghcr.io/huggingface/text-generation-inference:2.1.1",
        "env": {
            "LORA_ADAPTERS": ",".join(f"{name}={path}" for name, path in adapters.items()),
            "MAX_BATCH_PREFILL_TOKENS": "2048",
            "MAX_INPUT_LENGTH": "1024",
            "MAX_TOTAL_TOKENS": "1512",
            "MODEL_ID": "/repository",
        },
    }
    client = lorafleet.Client(url, token=token)
    return lorafleet.create_inference_endpoint(
        ENDPOINT_NAME,
        repository=str(model_dir),
        framework="pytorch",
        min_replica=1,
        max_replica=1,
        task="text-generation",
        custom_image=custom_image,
        namespace=NAMESPACE,
        client=client,
        **_cpu_compute(url, token),
    )


def wait_for(endpoint, progress: Progress, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """`endpoint.wait()`, printing each state the endpoint passes through."""
    seen: list[str] = []
    begun = time.monotonic()

    def show(current) -> None:  # type: ignore[no-untyped-def]
        if not seen or seen[-1] != current.status:
            seen.append(current.status)
            progress.note(f"{time.monotonic() - begun:5.1f} s  {current.status}")

    endpoint.wait(timeout=timeout, refresh_every=0.5, on_update=show)
    progress.note(f"{time.monotonic() - begun:5.1f} s  healthy at {endpoint.url}")


Row = tuple[str, str, str, str]  # (model, prompt, answer, expected)


def ask_everyone(endpoint) -> list[Row]:  # type: ignore[no-untyped-def]
    """Every (model, prompt) pair at once, so the replica batches the adapters together."""
    models: list[str | None] = [None, *TASKS]
    jobs = [(model, list(items)) for items in DEMO_INPUTS for model in models]

    def ask(job: tuple[str | None, list[str]]) -> Row:
        model, items = job
        prompt = demo_prompt(items)
        answer = endpoint.client.text_generation(prompt, adapter_id=model, max_new_tokens=MAX_NEW_TOKENS)
        return (model or "base", prompt, answer.strip(), expected_answer(model, items))

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(ask, jobs))


def print_usage(endpoint, expected_requests: int, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """The gateway's per-adapter usage, once every request is metered (written every few seconds)."""
    deadline = time.monotonic() + timeout
    usage = endpoint.usage()
    while time.monotonic() < deadline and not (
        len(usage.adapters) == 1 + len(TASKS) and all(a.requests == expected_requests for a in usage.adapters)
        and all(a.output_tokens for a in usage.adapters)
    ):
        time.sleep(0.5)
        usage = endpoint.usage()
    print("  usage    requests  input tokens  output tokens  latency p50")
    for a in usage.adapters:
        latency = "-" if a.latency_p50_ms is None else f"{a.latency_p50_ms:.0f} ms"
        name = a.adapter or "base"
        print(f"  {name:<8} {a.requests:>8}  {a.input_tokens:>12}  {a.output_tokens:>13}  {latency:>11}")
    print(flush=True)


def print_table(rows: list[Row]) -> bool:
    """Prints the answers side by side; returns whether every answer is the expected one."""
    headers = ("model", "prompt", "answer", "")
    marks = ["ok" if answer == expected else f"expected: {expected}" for _, _, answer, expected in rows]
    cells = [(m, p, a, mark) for (m, p, a, _), mark in zip(rows, marks, strict=True)]
    widths = [max(len(headers[i]), *(len(c[i]) for c in cells)) for i in range(3)]
    line = "  ".join("-" * w for w in widths)
    print("\n  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)))
    print("  " + line)
    previous_prompt = cells[0][1]
    for model, prompt, answer, mark in cells:
        if prompt != previous_prompt:
            print("  " + line)
            previous_prompt = prompt
        print(f"  {model.ljust(widths[0])}  {prompt.ljust(widths[1])}  {answer.ljust(widths[2])}  {mark}")
    print(flush=True)
    return all(mark == "ok" for mark in marks)


def run_demo(config: DemoConfig, control_plane: ControlPlane) -> bool:
    """Steps 1-6; returns whether every adapter answered with its own task."""
    progress = Progress(NUM_STEPS)
    with progress("Starting the control plane on a fresh SQLite database"):
        control_plane.reset()
        control_plane.start()
        progress.note(f"{config.url}  (log: {control_plane.log_path})")
    with progress(f"Creating an API token for the namespace {NAMESPACE!r}"):
        token = control_plane.create_token()
    with progress("Building the trained demo model and adapters (about a minute once, then cached)"):
        model_dir, adapters = trained_demo()
        progress.note(f"base model: {model_dir}")
        for name, path in adapters.items():
            progress.note(f"adapter {name!r}: {path}")
    with progress(f"Creating the endpoint {NAMESPACE}/{ENDPOINT_NAME} with create_inference_endpoint()"):
        endpoint = create_endpoint(config.url, token, model_dir, adapters)
        compute = endpoint.raw.get("compute", {})
        progress.note(
            f"{compute.get('instanceType')} {compute.get('instanceSize')}, status {endpoint.status}"
        )
    with progress("Waiting for a replica to serve (endpoint.wait())"):
        wait_for(endpoint, progress, config.wait_timeout_s)
    with progress(f"Asking the base model and its {len(TASKS)} adapters the same prompts, all at once"):
        rows = ask_everyone(endpoint)
    all_ok = print_table(rows)
    print_usage(endpoint, expected_requests=len(DEMO_INPUTS))
    if not all_ok:
        print("Some answers are not the adapter's task: the replica disagrees with transformers + peft.")
    print(f"Dashboard: {config.url}/dashboard  (sign in with the token below)")
    print(f"Token:     {token}")
    print(
        f"Try it:    curl {endpoint.url}/generate -H 'Authorization: Bearer {token}' "
        "-H 'Content-Type: application/json' "
        f"""-d '{{"inputs": "{demo_prompt(["rose", "4", "king"])}", """
        """"parameters": {"adapter_id": "reverse", "max_new_tokens": 16}}'"""
    )
    return all_ok


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    try:
        config = DemoConfig.from_env()
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C does
    control_plane = ControlPlane(config)
    status = 0
    try:
        status = 0 if run_demo(config, control_plane) else 1
        if not config.exit_after_table:
            print("\nThe control plane keeps running; press Ctrl-C to stop it and its replicas.", flush=True)
            while True:
                control_plane.raise_if_exited()
                time.sleep(1)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    except Exception as e:  # every failure ends the same way: a message, then a clean shutdown
        print(f"\ndemo failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        print(f"control plane log: {control_plane.log_path}", file=sys.stderr, flush=True)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan replicas
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("Stopping the control plane and its replicas ...", flush=True)
        try:
            control_plane.stop()
        except DemoError as e:
            print(f"demo: {e}", file=sys.stderr, flush=True)
            status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
