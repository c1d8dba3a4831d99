"""Control plane on Ray: create→running overhead vs. the process launcher, and placing 20 endpoints.

Everything is real: a control plane subprocess (`tests.controlplane.live`), a local Ray cluster
started with `ray.cluster_utils.Cluster`, endpoints created with the SDK.

    overhead   one endpoint (tiny Mistral + one LoRA adapter, the real runtime) created and waited
               for `running`, `--repeats` times, with `LORAFLEET_LAUNCHER=process` (cpu x1) and
               with `ray` (nvidia-l4 x1 on a 2-node cluster whose second node advertises an L4).
    placement  `--endpoints` endpoints (nvidia-l4 x1) on a 3-node cluster (head + 2 nodes with
               `--endpoints/2` L4s each): time until each replica actor is placed on a node, and
               until each endpoint is `running`. The replicas run a minimal HTTP health server
               (`LORAFLEET_RUNTIME_COMMAND`) so that 20 replicas fit a small machine and the figure
               is placement, not 20 model loads; `--real-runtime` runs the real runtime instead.

JSON on stdout; JSON + PNG under benchmarks/results/.

    python benchmarks/controlplane_ray.py [--repeats 3] [--endpoints 20] [--real-runtime]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lorafleet  # noqa: E402
from lorafleet.controlplane.launchers.ray import DEFAULT_RAY_NAMESPACE  # noqa: E402

from tests.controlplane.live import live_controlplane  # noqa: E402
from tests.controlplane.ray_cluster import ray_cluster, wait_for  # noqa: E402
from tests.fixtures import standard_adapters, tiny_model  # noqa: E402

HEALTH_SERVER = """
import http.server, os
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ["HOSTNAME"], int(os.environ["PORT"])), Health).serve_forever()
"""


def endpoint_args(instance_type: str, accelerator: str) -> dict:
    model_dir = tiny_model("mistral")
    adapter = standard_adapters(model_dir)["r8-qv"]
    return {"repository": str(model_dir), "framework": "pytorch", "accelerator": accelerator,
            "instance_size": "x1", "instance_type": instance_type, "region": "local", "vendor": "local",
            "env": {"LORA_ADAPTERS": f"r8-qv={adapter}", "MAX_TOTAL_TOKENS": "256"}}


def time_create_to_running(client: lorafleet.Client, name: str, args: dict) -> float:
    start = time.perf_counter()
    endpoint = lorafleet.create_inference_endpoint(name, client=client, **args)
    endpoint.wait(timeout=600, refresh_every=0.1)
    elapsed = time.perf_counter() - start
    endpoint.delete()
    wait_for(lambda: _gone(client, name), timeout_s=120, what=f"{name} to be deleted")
    return elapsed


def _gone(client: lorafleet.Client, name: str) -> bool:
    try:
        lorafleet.get_inference_endpoint(name, client=client)
    except lorafleet.EndpointNotFound:
        return True
    return False


@contextlib.contextmanager
def controlplane(launcher: str, **kwargs) -> Iterator[lorafleet.Client]:
    env = {"HF_HUB_OFFLINE": "1", **kwargs.pop("env", {})}
    with live_controlplane(launcher=launcher, env=env, startup_timeout_s=120, **kwargs) as cp:
        with lorafleet.Client(cp.url, cp.token) as client:
            yield client


def bench_overhead(repeats: int) -> dict:
    """Median create→running seconds per launcher, same model, same machine."""
    runs: dict[str, list[float]] = {"process": [], "ray": []}
    with controlplane("process") as client:
        args = endpoint_args("cpu", "cpu")
        runs["process"] = [time_create_to_running(client, f"proc-{i}", args) for i in range(repeats)]
    with ray_cluster() as cluster:
        with controlplane("ray", env={"LORAFLEET_RAY_ADDRESS": cluster.address}) as client:
            args = endpoint_args("nvidia-l4", "gpu")
            runs["ray"] = [time_create_to_running(client, f"ray-{i}", args) for i in range(repeats)]
    medians = {k: statistics.median(v) for k, v in runs.items()}
    return {"create_to_running_s": medians, "runs_s": runs,
            "ray_overhead_s": medians["ray"] - medians["process"]}


def placed_actors() -> dict[str, str]:
    """Endpoint name → node id of its placed replica actor."""
    placed = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != DEFAULT_RAY_NAMESPACE:
            continue
        with contextlib.suppress(ValueError, ray.exceptions.RayError):
            actor = ray.get_actor(entry["name"], namespace=DEFAULT_RAY_NAMESPACE)
            info = ray.get(actor.describe.remote(), timeout=0.5)
            placed[entry["name"].split("/")[1]] = info["node_id"]
    return placed


class PlacementWatch:
    """Records, from a thread, when each endpoint's actor is first placed and when it first runs."""

    def __init__(self, client: lorafleet.Client, start: float) -> None:
        self.client, self.start = client, start
        self.placed_at: dict[str, float] = {}
        self.running_at: dict[str, float] = {}
        self.nodes: dict[str, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = time.perf_counter() - self.start
            for name, node in placed_actors().items():
                self.placed_at.setdefault(name, now)
                self.nodes[name] = node
            for endpoint in lorafleet.list_inference_endpoints(client=self.client):
                if endpoint.status == "running":
                    self.running_at.setdefault(endpoint.name, now)
            self.done.wait(0.1)


def bench_placement(num_endpoints: int, real_runtime: bool) -> dict:
    """Seconds from the first create until each of `num_endpoints` replicas is placed / running."""
    gpus_per_node = (num_endpoints + 1) // 2
    cluster_context = ray_cluster(num_gpu_nodes=2, gpus_per_node=gpus_per_node)
    with tempfile.TemporaryDirectory() as tmp, cluster_context as cluster:
        server = Path(tmp) / "health_server.py"
        server.write_text(HEALTH_SERVER)
        command = None if real_runtime else f"{sys.executable} {server}"
        env = {"LORAFLEET_RAY_ADDRESS": cluster.address}
        with controlplane("ray", env=env, runtime_command=command) as client:
            ray.init(address=cluster.address, namespace=DEFAULT_RAY_NAMESPACE, log_to_driver=False,
                     logging_level="WARNING")
            names = [f"ep-{i:02d}" for i in range(num_endpoints)]
            created_at: dict[str, float] = {}
            start = time.perf_counter()
            watch = PlacementWatch(client, start)
            watcher = threading.Thread(target=watch.run, daemon=True)
            watcher.start()
            for name in names:
                lorafleet.create_inference_endpoint(name, client=client, **endpoint_args("nvidia-l4", "gpu"))
                created_at[name] = time.perf_counter() - start
            wait_for(lambda: len(watch.running_at) == num_endpoints, timeout_s=900, interval_s=0.5,
                     what="every endpoint to run")
            watch.done.set()
            watcher.join()
            for name in names:
                lorafleet.delete_inference_endpoint(name, client=client)
            wait_for(lambda: not placed_actors(), timeout_s=300, what="every replica actor to be gone")
    per_node = {node: list(watch.nodes.values()).count(node) for node in set(watch.nodes.values())}
    create_to_placed = [watch.placed_at[n] - created_at[n] for n in names]
    return {"endpoints": num_endpoints, "nodes": 3, "gpus_per_worker_node": gpus_per_node,
            "replica": "lorafleet.runtime" if real_runtime else "minimal HTTP health server",
            "create_calls_s": max(created_at.values()), "all_placed_s": max(watch.placed_at.values()),
            "all_running_s": max(watch.running_at.values()),
            "create_to_placed_s": {"p50": statistics.median(create_to_placed), "max": max(create_to_placed)},
            "created_s": [created_at[n] for n in names], "placed_s": [watch.placed_at[n] for n in names],
            "running_s": [watch.running_at[n] for n in names], "replicas_per_node": sorted(per_node.values())}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    overhead = result["overhead"]["create_to_running_s"]
    left.bar(list(overhead), list(overhead.values()), color=["#888", "#2a7"])
    left.set_ylabel("create → running (s, median)")
    left.set_title("one endpoint, tiny model")
    placement = result["placement"]
    for key, label in (("created_s", "create call returned"), ("placed_s", "actor placed"),
                       ("running_s", "endpoint running")):
        times = sorted(t for t in placement[key] if t is not None)
        right.step(times, range(1, len(times) + 1), where="post", label=label)
    right.set_xlabel("seconds since the first create")
    right.set_ylabel("endpoints")
    right.set_title(f"{placement['endpoints']} endpoints on a 3-node Ray cluster")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--real-runtime", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "controlplane-ray")
    args = parser.parse_args(argv)
    standard_adapters(tiny_model("mistral"))  # build fixtures before any clock starts
    result = {"machine": {"python": platform.python_version(), "ray": ray.__version__,
                          "cpus": os.cpu_count()},
              "overhead": bench_overhead(args.repeats),
              "placement": bench_placement(args.endpoints, args.real_runtime)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
