"""Control-plane benchmark: create→running overhead, API latency at 1,000 endpoints, reconciler pass.

Run: `.venv/bin/python benchmarks/controlplane.py [--endpoints 1000 --clients 50 --requests 2000]`.
Writes benchmarks/results/controlplane.json and controlplane.png.

* create→running: the seed-like payload on the tiny test model with the real runtime, minus the
  runtime's own start→healthy time measured standalone on the same model: what remains is the
  control plane's share (API, reconciler wake-up, launch, health probing).
* API p50/p99: `--clients` concurrent clients alternating list and get among `--endpoints`.
* reconciler pass: one pass over `--endpoints` running endpoints, each with a live replica row
  (all pointing at one real replica process, so every probe is a real HTTP health check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorafleet.controlplane.auth.service import create_token  # noqa: E402
from lorafleet.controlplane.db import migrate  # noqa: E402
from lorafleet.controlplane.endpoints.schemas import EndpointCreate  # noqa: E402
from lorafleet.controlplane.endpoints.spec_view import EndpointSpec  # noqa: E402
from lorafleet.controlplane.launchers.base import ReplicaSpec  # noqa: E402
from lorafleet.controlplane.models import Endpoint, Replica  # noqa: E402

from tests.controlplane.conftest import SEED_CATALOG, endpoint_body, make_settings, serve_app  # noqa: E402
from tests.controlplane.live import free_port, live_controlplane  # noqa: E402

# A stand-in runtime for the 1,000-endpoint reconciler pass only (see fake_runtime.py); tests
# run the real one.
FAKE_RUNTIME = f"{sys.executable} {Path(__file__).with_name('fake_runtime.py')}"
from tests.fixtures import standard_adapters, tiny_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def runtime_start_to_healthy(model_dir: Path, adapters: str) -> float:
    port = free_port()
    env = {
        **os.environ,
        "MODEL_ID": str(model_dir),
        "LORA_ADAPTERS": adapters,
        "PORT": str(port),
        "HOSTNAME": "127.0.0.1",
    }
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "lorafleet.runtime"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=30)


def create_to_running() -> dict[str, float]:
    model_dir = tiny_model("mistral")
    adapters = standard_adapters(model_dir)
    spec = f"a={adapters['r8-qv']},b={adapters['r16-all']}"
    runtime_start_to_healthy(model_dir, spec)  # warm-up: first import/compile caches
    body = endpoint_body("bench", env={"LORA_ADAPTERS": spec, "MODEL_ID": "/repository"})
    body["model"]["repository"] = str(model_dir)  # type: ignore[index]
    with live_controlplane(catalog=SEED_CATALOG) as cp:
        start = time.monotonic()
        httpx.post(f"{cp.url}/v2/endpoint/alice", json=body, headers=cp.headers).raise_for_status()
        while (
            httpx.get(f"{cp.url}/v2/endpoint/alice/bench", headers=cp.headers).json()["status"]["state"]
            != "running"
        ):
            time.sleep(0.05)
        total = time.monotonic() - start
    standalone = min(runtime_start_to_healthy(model_dir, spec) for _ in range(2))
    return {
        "create_to_running_s": total,
        "runtime_start_to_healthy_s": standalone,
        "control_plane_share_s": max(0.0, total - standalone),
    }


def _seed(server_app, count: int) -> None:  # type: ignore[no-untyped-def]
    service = server_app.state.endpoint_service
    from lorafleet.controlplane.auth.service import authenticate

    with server_app.state.database.session() as session:
        _, token = create_token(session, namespace="alice")
        principal = authenticate(session, f"Bearer {token}")
        for i in range(count):
            service.create(session, principal, EndpointCreate.model_validate(endpoint_body(f"ep-{i:04d}")))
    return token


async def _api_load(url: str, token: str, clients: int, requests: int, count: int) -> dict[str, float]:
    latencies: dict[str, list[float]] = {"list": [], "get": []}
    headers = {"authorization": f"Bearer {token}"}
    counter = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            kind = "list" if i % 10 == 0 else "get"
            path = "/v2/endpoint/alice" if kind == "list" else f"/v2/endpoint/alice/ep-{i % count:04d}"
            start = time.perf_counter()
            response = await client.get(path, headers=headers)
            latencies[kind].append(time.perf_counter() - start)
            response.raise_for_status()

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    out = {}
    for kind, values in latencies.items():
        values.sort()
        out[f"{kind}_p50_ms"] = 1000 * statistics.median(values)
        out[f"{kind}_p99_ms"] = 1000 * values[int(0.99 * (len(values) - 1))]
    return out


def api_and_reconciler(count: int, clients: int, requests: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="lorafleet-bench-"))
    url_db = f"sqlite:///{tmp / 'cp.db'}"
    migrate(url_db)
    # Quotas sized for the benchmark's one namespace; the sandbox shows the fake runtime's file.
    settings = make_settings(tmp, url_db, reconciler_enabled=False, runtime_command=FAKE_RUNTIME,
                             sandbox_paths=FAKE_RUNTIME.split()[-1], quota_endpoints=count,
                             quota_replicas=count, quota_accelerators=count)
    for _url, app in serve_app(settings):
        _seed(app, count)
        results = _reconciler_pass(app)
    # The API is measured in its own server process (as deployed), so the load generator's
    # GIL does not count against it.
    with live_controlplane(
        catalog=SEED_CATALOG, database_url=url_db, env={"LORAFLEET_RECONCILER_ENABLED": "false"}
    ) as cp:
        results.update(asyncio.run(_api_load(cp.url, cp.token, clients, requests, count)))
    return results


def _reconciler_pass(app) -> dict[str, float]:  # type: ignore[no-untyped-def]
    reconciler, launcher, hardware = app.state.reconciler, app.state.launcher, app.state.hardware
    instance = hardware.resolve(
        vendor="aws", region="us-east-1", instance_type="intel-icl", instance_size="x2"
    )
    handle = launcher.start(ReplicaSpec("rep-shared", "alice", "bench", instance))
    time.sleep(1.5)
    try:
        with app.state.database.session() as session:
            for i, endpoint in enumerate(session.query(Endpoint).all()):
                session.add(
                    Replica(
                        replica_key=f"rep-{i:05d}",
                        endpoint_id=endpoint.id,
                        launcher="process",
                        spec_digest=EndpointSpec.from_stored(endpoint.spec).replica_digest({}),
                        state="ready",
                        handle={**handle, "replica_key": f"rep-{i:05d}"},
                        url="http://x",
                    )
                )
        reconciler.lease.try_acquire()
        passes = [reconciler.run_pass() for _ in range(3)]
        assert not passes[-1].errors, passes[-1].errors[:3]
        assert passes[-1].started == 0, "benchmark set-up should need no new replicas"
        return {"reconciler_pass_s": statistics.median(p.seconds for p in passes)}
    finally:
        launcher.stop(handle)
        reconciler.close()


def main() -> None:
    if ray_launcher_requested(sys.argv[1:]):
        run_ray_launcher_benchmark(sys.argv[1:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--skip-runtime", action="store_true", help="skip the create→running measurement")
    args = parser.parse_args()
    results: dict[str, object] = {
        "endpoints": args.endpoints,
        "clients": args.clients,
        "requests": args.requests,
    }
    if not args.skip_runtime:
        results.update(create_to_running())
    results.update(api_and_reconciler(args.endpoints, args.clients, args.requests))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "controlplane.json").write_text(json.dumps(results, indent=2))
    _plot(results)
    print(json.dumps(results, indent=2))


def _plot(results: dict[str, object]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("list_p50_ms", "list_p99_ms", "get_p50_ms", "get_p99_ms") if k in results]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(keys, [float(results[k]) for k in keys])  # type: ignore[arg-type]
    ax.set_ylabel("ms")
    ax.set_title(f"API latency, {results['clients']} clients, {results['endpoints']} endpoints")
    fig.tight_layout()
    fig.savefig(RESULTS / "controlplane.png")


# --- `--launcher ray` -------------------------------------------------------------------------
# Owned by the Ray launcher's engineer; the figures come from benchmarks/controlplane_ray.py.


def ray_launcher_requested(argv: list[str]) -> bool:
    """Whether the command line asks for `--launcher ray` (or `--launcher=ray`)."""
    return "--launcher=ray" in argv or any(
        a == "--launcher" and b == "ray" for a, b in zip(argv, argv[1:], strict=False)
    )


def run_ray_launcher_benchmark(argv: list[str]) -> None:
    """`--launcher ray`: create→running with the ray launcher vs. the process launcher, and the
    placement time of 20 endpoints on a 3-node local Ray cluster. Other flags (`--repeats`,
    `--endpoints`, `--real-runtime`, `--out`) pass through to benchmarks/controlplane_ray.py."""
    import importlib.util

    path = Path(__file__).with_name("controlplane_ray.py")
    module_spec = importlib.util.spec_from_file_location("controlplane_ray", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    rest, skip = [], False
    for i, arg in enumerate(argv):
        if skip or arg == "--launcher=ray":
            skip = False
            continue
        if arg == "--launcher" and argv[i + 1 : i + 2] == ["ray"]:
            skip = True
            continue
        rest.append(arg)
    module.main(rest)


if __name__ == "__main__":
    main()
