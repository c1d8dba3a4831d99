"""Gateway benchmark: its cost over calling replicas directly, and adapter-affine vs round-robin routing.

Run: `.venv/bin/python benchmarks/gateway.py [--rounds 7 --streams 32 --tokens 128 --requests 400]`.
Prints JSON and writes benchmarks/results/gateway.json and gateway.png.

1. Overhead: one endpoint with 2 real replicas (tiny Mistral, 8 adapters preloaded), `--streams`
   concurrent `/generate_stream` requests over the 8 adapters, in rounds that alternate between
   the gateway's URL and the replicas themselves (round-robin, with their keys): tokens per second
   of the whole round, and each stream's time to first token as the client sees it. Then the
   latency one request adds when nothing else runs: sequential 1-token requests, both ways.
2. Routing: 16 adapters served on demand from an offline Hub cache (`ALLOW_HUB_ADAPTERS`,
   `MAX_LOADED_ADAPTERS=8` slots per replica), 2 replicas, `--requests` short requests with
   uniformly random adapters, 8 at a time, through a `lorafleet gateway serve` process routing by
   adapter (bounded consistent hashing, `GATEWAY_LOAD_FACTOR` 1.5 and 2) or round-robin, each on
   fresh replicas. Adapter loads into slots (the replicas' `lorafleet_adapter_loads`) per 1,000
   requests, and requests per second.

Everything runs on this machine: the load generator, the control plane and both replicas share
its cores, as they do in CI (2 cores); the figures compare the modes within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.controlplane.conftest import SEED_CATALOG  # noqa: E402
from tests.controlplane.live import LiveControlPlane, free_port, live_controlplane  # noqa: E402
from tests.controlplane.replicas import EndpointView, api_key_of, gone, real_body, wait_for  # noqa: E402
from tests.fixtures import standard_adapters, tiny_model  # noqa: E402
from tests.runtime.hub_cache import put_in_hub_cache  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Hello there, how are you"
Target = tuple[str, dict[str, str]]  # a base URL and the headers to call it with


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_stream(
    client: httpx.AsyncClient, target: Target, adapter: str, tokens: int
) -> tuple[float, int]:
    """(time to first token, tokens received) of one `/generate_stream`."""
    url, headers = target
    body = {"inputs": PROMPT, "parameters": {"adapter_id": adapter, "max_new_tokens": tokens}}
    started, first, count = time.perf_counter(), None, 0
    async with client.stream("POST", f"{url}/generate_stream", json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                first = first if first is not None else time.perf_counter() - started
                count += 1
    assert first is not None
    return first, count


async def stream_round(
    targets: list[Target], adapters: list[str], streams: int, tokens: int
) -> dict[str, Any]:
    """`streams` concurrent streams (adapters and targets in turn); throughput and TTFTs."""
    limits = httpx.Limits(max_connections=streams * 2, max_keepalive_connections=streams * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(
            one_stream(client, targets[i % len(targets)], adapters[i % len(adapters)], tokens)
            for i in range(streams)))
        wall = time.perf_counter() - started
    return {"tokens_per_s": sum(n for _, n in results) / wall, "ttfts": [t for t, _ in results]}


def replica_targets(cp: LiveControlPlane, view: EndpointView) -> list[Target]:
    return [(url, {"Authorization": f"Bearer {api_key_of(cp, url)}"}) for url in view.replica_urls().values()]


def create(cp: LiveControlPlane, name: str, env: dict[str, str]) -> EndpointView:
    body = real_body(name, MAX_INPUT_LENGTH="64", MAX_TOTAL_TOKENS="480", **env)
    body["compute"]["scaling"] = {"minReplica": 2, "maxReplica": 2}  # type: ignore[index]
    response = httpx.post(f"{cp.url}/v2/endpoint/{cp.namespace}", json=body, headers=cp.headers, timeout=30)
    response.raise_for_status()
    view = EndpointView(cp, name)
    wait_for(lambda: view.get()["status"]["readyReplica"] == 2, 600, f"{name}: two ready replicas")
    view.wait_running(600)
    wait_for(lambda: len(view.replica_urls()) == 2, 60, f"{name}: two replica handles")
    return view


def delete(cp: LiveControlPlane, view: EndpointView) -> None:
    pids = list(view.pids().values())
    httpx.delete(view.path, headers=cp.headers, timeout=30).raise_for_status()
    wait_for(lambda: all(gone(pid) for pid in pids), 120, f"{view.name} stopped")


def overhead(cp: LiveControlPlane, args: argparse.Namespace) -> dict[str, Any]:
    adapter_dirs = list(standard_adapters(tiny_model("mistral")).values())
    adapters = [f"a{i}" for i in range(8)]
    lora = ",".join(f"{name}={adapter_dirs[i % len(adapter_dirs)]}" for i, name in enumerate(adapters))
    view = create(cp, "bench-overhead", {"LORA_ADAPTERS": lora})
    gateway: list[Target] = [(view.get()["status"]["url"], cp.headers)]
    direct = replica_targets(cp, view)
    asyncio.run(stream_round(gateway, adapters, args.streams, args.tokens))  # warm-up (both replicas)
    runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "direct": []}
    for _ in range(args.rounds):  # interleaved, so drift on the shared machine hits both
        for mode, targets in (("direct", direct), ("gateway", gateway)):
            runs[mode].append(asyncio.run(stream_round(targets, adapters, args.streams, args.tokens)))
    sequential = {"direct": one_token_latency(direct[0]), "gateway": one_token_latency(gateway[0])}
    delete(cp, view)
    out: dict[str, Any] = {"added_latency_unloaded_p50_ms": sequential["gateway"] - sequential["direct"],
                           "latency_unloaded_p50_ms": sequential}
    for mode, rounds in runs.items():
        ttfts = [t for r in rounds for t in r["ttfts"]]
        out[mode] = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rounds),
                     "ttft_p50_ms": percentile(ttfts, 0.5) * 1000,
                     "ttft_p99_ms": percentile(ttfts, 0.99) * 1000}
    # Paired rounds (each gateway round with the direct round just before it): the machine's load
    # from other work drifts over a run, and pairs cancel most of it.
    pairs = list(zip(runs["direct"], runs["gateway"], strict=True))
    out["throughput_ratio"] = statistics.median(g["tokens_per_s"] / d["tokens_per_s"] for d, g in pairs)
    out["added_ttft_p50_ms"] = statistics.median(
        (statistics.median(g["ttfts"]) - statistics.median(d["ttfts"])) * 1000 for d, g in pairs)
    return out


def one_token_latency(target: Target, count: int = 200) -> float:
    """p50 of `count` back-to-back 1-token `/generate` requests, in ms."""
    url, headers = target
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 1}}
    times = []
    with httpx.Client(timeout=60) as client:
        for i in range(count + 20):  # the first 20 warm the connections up
            started = time.perf_counter()
            assert client.post(f"{url}/generate", json=body, headers=headers).status_code == 200
            if i >= 20:
                times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def metric(target: Target, name: str) -> float:
    url, headers = target
    for line in httpx.get(f"{url}/metrics", headers=headers, timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def short_requests(targets: list[Target], adapters: list[str], count: int, concurrency: int,
                         seed: int) -> float:
    """`count` requests with random adapters, `concurrency` at a time, round-robin over `targets`;
    returns requests per second."""
    rng = random.Random(seed)
    picks = [rng.choice(adapters) for _ in range(count)]
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in enumerate(picks):
        queue.put_nowait(item)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i, adapter = queue.get_nowait()
            url, headers = targets[i % len(targets)]
            body = {"inputs": PROMPT, "parameters": {"adapter_id": adapter, "max_new_tokens": 4}}
            response = await client.post(f"{url}/generate", json=body, headers=headers)
            assert response.status_code == 200, response.text

    async with httpx.AsyncClient(timeout=300) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


@contextlib.contextmanager
def gateway_process(cp: LiveControlPlane, **settings: str) -> Iterator[str]:
    """A `lorafleet gateway serve` on the control plane's database, with these settings; its URL."""
    port = free_port()
    env = {**cp.env, **{f"LORAFLEET_{k.upper()}": v for k, v in settings.items()}}
    command = [sys.executable, "-m", "lorafleet.cli", "gateway", "serve", "--port", str(port),
               "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/health"), 60, "the gateway process")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def routing(cp: LiveControlPlane, hub_cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    adapter_dirs = list(standard_adapters(tiny_model("mistral")).values())
    adapters = [f"bench/lora-{i:02d}" for i in range(16)]
    for i, repo in enumerate(adapters):
        put_in_hub_cache(hub_cache, repo, adapter_dirs[i % len(adapter_dirs)])
    env = {"ALLOW_HUB_ADAPTERS": "true", "MAX_LOADED_ADAPTERS": "8", "LORA_ADAPTERS": ""}
    modes = {"affinity_c1.5": {"gateway_routing": "affinity", "gateway_load_factor": "1.5"},
             "affinity_c2": {"gateway_routing": "affinity", "gateway_load_factor": "2"},
             "round_robin": {"gateway_routing": "round_robin"}}
    out: dict[str, Any] = {}
    for mode, settings in modes.items():
        view = create(cp, f"bench-{mode.replace('_', '-').replace('.', '')}", env)
        direct = replica_targets(cp, view)
        with gateway_process(cp, **settings) as gateway:
            targets = [(f"{gateway}/endpoints/{cp.namespace}/{view.name}", cp.headers)]
            asyncio.run(short_requests(targets, adapters, 32, 8, seed=1))  # warm-up: the CPU caches
            loads = sum(metric(t, "lorafleet_adapter_loads_total") for t in direct)
            rps = asyncio.run(short_requests(targets, adapters, args.requests, 8, seed=2))
            loads = sum(metric(t, "lorafleet_adapter_loads_total") for t in direct) - loads
        out[mode] = {"adapter_loads_per_1000": 1000 * loads / args.requests, "requests_per_s": rps}
        delete(cp, view)
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o, r = result["overhead"], result["routing"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [
        ("tokens/s, 32 streams", ["direct", "gateway"],
         [o["direct"]["tokens_per_s"], o["gateway"]["tokens_per_s"]]),
        ("TTFT p50 (ms)", ["direct", "gateway"], [o["direct"]["ttft_p50_ms"], o["gateway"]["ttft_p50_ms"]]),
        ("adapter loads / 1,000 requests", ["affinity c=1.5", "affinity c=2", "round-robin"],
         [r[m]["adapter_loads_per_1000"] for m in ("affinity_c1.5", "affinity_c2", "round_robin")]),
        ("requests/s, 16 adapters", ["affinity c=1.5", "affinity c=2", "round-robin"],
         [r[m]["requests_per_s"] for m in ("affinity_c1.5", "affinity_c2", "round_robin")]),
    ]
    for ax, (title, labels, values) in zip(axes, panels, strict=True):
        ax.bar(labels, values, color=["#8ea2ff", "#3a4fd7", "#151a2d"][: len(values)])
        ax.set_title(title, fontsize=10)
        for i, value in enumerate(values):
            ax.text(i, value, f"{value:.1f}", ha="center", va="bottom", fontsize=9)
    fig.suptitle("lorafleet gateway: cost over direct calls, and adapter-affine routing (2 replicas)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--part", choices=["all", "overhead", "routing"], default="all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lorafleet-hub-") as cache:
        env = {"LORAFLEET_ISOLATION": "none",  # replicas read the offline Hub cache below
               "LORAFLEET_REPLICA_ENV": json.dumps({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache}),
               "LORAFLEET_QUOTA_REPLICAS": "16", "LORAFLEET_RECONCILE_INTERVAL_S": "0.5",
               "LORAFLEET_GATEWAY_REFRESH_S": "0.5"}
        with live_controlplane(catalog=SEED_CATALOG, env=env, startup_timeout_s=120) as cp:
            result: dict[str, Any] = {"config": vars(args)}
            if args.part in ("all", "overhead"):
                result["overhead"] = overhead(cp, args)
            if args.part in ("all", "routing"):
                result["routing"] = routing(cp, Path(cache), args)
    print(json.dumps(result, indent=2))
    if args.part == "all":
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "gateway.json").write_text(json.dumps(result, indent=2))
        plot(result, RESULTS / "gateway.png")


if __name__ == "__main__":
    main()
