"""Adapter memory: cold vs warm loads, decoding during loads, and Zipf traffic under a byte budget.

On the demo model (`tests.fixtures.tiny_model("mistral", size="demo")`), in-process `Engine`:

1. **cold vs warm TTFT** for adapters of rank 8, 16 and 64 on every projection: the first request
   of a newly registered adapter (its files read and validated, its pages written by the loader
   thread) against the next request of the same adapter (resident);
2. **decoding during cold loads**: the time per output token of a long running request while a
   series of cold adapters is loaded next to it, over the same without loads (target <= 1.2);
3. **Zipf traffic**: 256 adapters (rank 8, q/v), requests drawn Zipf(1) over them, 32 in flight,
   under an adapter budget that holds 32 adapters vs one that holds all 256: adapter loads per
   1,000 requests and throughput.

JSON on stdout; JSON + PNG under benchmarks/results/.

    python benchmarks/adapters.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from lorafleet.kernels import pages_for_rank  # noqa: E402
from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams  # noqa: E402

from tests.fixtures import ALL_LINEAR, AdapterSpec, tiny_adapter, tiny_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def _engine(**options) -> Engine:  # type: ignore[no-untyped-def]
    return Engine.from_pretrained(tiny_model("mistral", size="demo"), progress=lambda _: None, **options)


async def _ttft(engine: Engine, prompt: list[int], name: str) -> float:
    start = time.perf_counter()
    prepared = await asyncio.to_thread(
        engine.prepare, GenerationRequest(prompt, SamplingParams(max_new_tokens=1), adapter_id=name)
    )
    async for _ in engine.stream(prepared):
        break
    return time.perf_counter() - start


async def cold_vs_warm(rounds: int) -> dict[str, dict[str, float]]:
    model = tiny_model("mistral", size="demo")
    out: dict[str, dict[str, float]] = {}
    with _engine(max_loaded_adapters=8) as engine:
        prompt = engine.tokenizer.encode("the quick brown fox jumps over the lazy dog")
        for rank in (8, 16, 64):
            folder = tiny_adapter(
                model, AdapterSpec(r=rank, target_modules=ALL_LINEAR, lora_alpha=2 * rank, seed=500 + rank)
            )
            cold, warm = [], []
            for i in range(rounds):
                name = f"r{rank}-{i}"
                engine.register_adapter(name, str(folder))
                cold.append(await _ttft(engine, prompt, name))
                warm.append(await _ttft(engine, prompt, name))
            out[f"rank{rank}"] = {
                "cold_ttft_ms": 1000 * statistics.median(cold),
                "warm_ttft_ms": 1000 * statistics.median(warm),
            }
    return out


async def decode_during_loads(loads: int, shape: str = "demo") -> dict[str, float | str]:
    """Median inter-token time of a long stream alone, while adapters are loaded beside it
    (`load_adapter`: read, validated, written by the loader thread), and while requests for
    cold adapters arrive (their load plus their own prefill and decode in the batch)."""
    if shape == "demo":
        model = tiny_model("mistral", size="demo")
    else:
        from shapes import real_shape_model

        model = real_shape_model(shape)
    folder = tiny_adapter(model, AdapterSpec(r=64, target_modules=ALL_LINEAR, lora_alpha=64, seed=600))
    with Engine.from_pretrained(model, max_loaded_adapters=4, progress=lambda _: None) as engine:
        prompt = engine.tokenizer.encode("a long story about adapters")
        params = SamplingParams(max_new_tokens=2000, ignore_eos=True)

        async def loads_only() -> None:
            for i in range(loads):
                await asyncio.to_thread(engine.load_adapter, f"loaded-{i}-{time.monotonic_ns()}", str(folder))

        async def cold_requests() -> None:
            for i in range(loads):
                name = f"cold-{i}-{time.monotonic_ns()}"
                engine.register_adapter(name, str(folder))
                await _ttft(engine, prompt, name)

        async def gaps(beside) -> list[float]:  # type: ignore[no-untyped-def]
            times: list[float] = []
            stream = engine.stream(GenerationRequest(prompt, params))
            async for _ in stream:
                times.append(time.perf_counter())
                if len(times) == 20:
                    break
            task = asyncio.create_task(beside()) if beside is not None else None
            async for _ in stream:
                times.append(time.perf_counter())
                if (task is not None and task.done()) or (task is None and len(times) >= 400):
                    break
            await stream.aclose()
            if task is not None:
                await task
            return [b - a for a, b in zip(times[20:], times[21:], strict=False)]

        normal = statistics.median(await gaps(None))
        loading = statistics.median(await gaps(loads_only))
        cold = statistics.median(await gaps(cold_requests))
    return {
        "tpot_ms_alone": 1000 * normal,
        "tpot_ms_during_loads": 1000 * loading,
        "tpot_ms_during_cold_requests": 1000 * cold,
        "ratio_during_loads": loading / normal,
        "ratio_during_cold_requests": cold / normal,
        "target_ratio": 1.2,
        "loads": loads,
        "adapter": "rank 64, every projection",
        "model": shape,
    }


async def zipf_traffic(
    requests: int, adapters: int, resident: int, concurrency: int
) -> dict[str, dict[str, float]]:
    model = tiny_model("mistral", size="demo")
    folders = [
        tiny_adapter(
            model, AdapterSpec(r=8, target_modules=("q_proj", "v_proj"), lora_alpha=16, seed=700 + i)
        )
        for i in range(16)
    ]
    rng = random.Random(0)
    weights = [1 / (k + 1) for k in range(adapters)]
    picks = rng.choices(range(adapters), weights=weights, k=requests)
    results = {}
    for label, slots in (("budget_holds_32", resident), ("all_resident", adapters)):
        with _engine(max_loaded_adapters=slots) as probe:
            page_bytes = dict(probe.config.adapter_page_bytes)
        # Every group's pool has the same page count: `slots` rank-8 adapters need `slots` pages of each.
        budget = slots * pages_for_rank(8) * sum(page_bytes.values())
        with _engine(max_loaded_adapters=slots, max_lora_rank=8, adapter_memory=budget) as engine:
            for i in range(adapters):
                engine.register_adapter(f"a{i}", str(folders[i % len(folders)]))
            prompts = [engine.tokenizer.encode(f"request {j} about topic {j % 17}") for j in range(requests)]
            loads = engine.stats().adapter_loads
            start = time.perf_counter()
            tokens = await _drive(engine, list(zip(prompts, picks, strict=True)), concurrency)
            elapsed = time.perf_counter() - start
            results[label] = {
                "loads_per_1000_requests": 1000 * (engine.stats().adapter_loads - loads) / requests,
                "tokens_per_s": tokens / elapsed,
                "adapter_budget_bytes": engine.config.adapter_bytes,
            }
    results["throughput_ratio"] = {
        "value": results["budget_holds_32"]["tokens_per_s"] / results["all_resident"]["tokens_per_s"]
    }
    return results


async def _drive(engine: Engine, queue: list[tuple[list[int], int]], concurrency: int) -> int:
    """Runs the (prompt, adapter index) requests with `concurrency` in flight; returns tokens generated."""
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    counts: list[int] = []

    async def worker() -> None:
        while queue:
            prompt, k = queue.pop()
            request = GenerationRequest(prompt, params, adapter_id=f"a{k}")
            prepared = await asyncio.to_thread(engine.prepare, request)
            counts.append(len([e async for e in engine.stream(prepared)]))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sum(counts)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    ranks = list(report["cold_vs_warm"])
    for offset, key, color in ((-0.2, "cold_ttft_ms", "#dd8452"), (0.2, "warm_ttft_ms", "#4c72b0")):
        axes[0].bar(
            [i + offset for i in range(len(ranks))],
            [report["cold_vs_warm"][r][key] for r in ranks],
            0.4,
            label=key.split("_")[0],
            color=color,
        )
    axes[0].set_xticks(range(len(ranks)), ranks)
    axes[0].set_ylabel("TTFT ms")
    axes[0].legend(fontsize=8)
    during = report["decode_during_loads"]
    axes[1].bar(
        ["alone", "loads beside", "cold requests"],
        [during["tpot_ms_alone"], during["tpot_ms_during_loads"], during["tpot_ms_during_cold_requests"]],
        color=["#888888", "#dd8452", "#c44e52"],
    )
    axes[1].set_title(f"time per output token (loads: {during['ratio_during_loads']:.2f}x)")
    zipf = report["zipf"]
    labels = ["budget_holds_32", "all_resident"]
    axes[2].bar(labels, [zipf[label]["tokens_per_s"] for label in labels], color=["#dd8452", "#4c72b0"])
    axes[2].set_title("Zipf traffic, 256 adapters: tokens/s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--shape", default="smollm2-135m", help="real-sized shape for the loads-beside-decode case"
    )
    args = parser.parse_args()
    rounds, requests = (3, 400) if args.quick else (8, 1000)
    report = {
        "benchmark": "adapters",
        "model": "tiny mistral demo",
        "cold_vs_warm": asyncio.run(cold_vs_warm(rounds)),
        "decode_during_loads": asyncio.run(decode_during_loads(loads=rounds * 2)),
        "decode_during_loads_real_shape": asyncio.run(decode_during_loads(loads=4, shape=args.shape)),
        "zipf": asyncio.run(zipf_traffic(requests, adapters=256, resident=32, concurrency=32)),
        "load_average": os.getloadavg()[0],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adapters.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "adapters.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
