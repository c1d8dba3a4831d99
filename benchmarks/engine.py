"""Engine throughput: 32 requests over 32 different adapters vs. the same 32 requests on the base.

Demo-size tiny Mistral (`tests.fixtures.tiny_model("mistral", size="demo")`), adapters built
with `tests.fixtures.tiny_adapter` (different seeds). Each scenario submits its 32 requests in
one `Engine.generate` call (one continuous batch), with `ignore_eos` so every request generates
exactly `--new-tokens` tokens; throughput is generated tokens over wall time, median of
`--repeats` runs after a warm-up. Scenarios:

    base          every request on the base model
    one_adapter   every request on the same adapter
    multi         request i on adapter i (32 adapters in one batch)

JSON on stdout; JSON + PNG under benchmarks/results/.

    python benchmarks/engine.py [--repeats 3] [--new-tokens 64] [--rank 16] [--targets all]
    python benchmarks/engine.py --shape qwen2.5-0.5b --num-shard 2 [--device cpu]   (engine_sharded.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams  # noqa: E402

from tests.fixtures import ALL_LINEAR, AdapterSpec, tiny_adapter, tiny_model  # noqa: E402

TARGETS = {"all": ALL_LINEAR, "attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "qv": ("q_proj", "v_proj")}


def run_scenarios(
    engine: Engine,
    prompts: list[list[int]],
    scenarios: dict[str, list[str | None]],
    new_tokens: int,
    repeats: int,
) -> dict[str, dict[str, float | list[float]]]:
    """Tokens/s per scenario; runs alternate between scenarios so load changes hit them alike."""
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    batches = {
        name: [GenerationRequest(p, params, adapter_id=a) for p, a in zip(prompts, adapters, strict=True)]
        for name, adapters in scenarios.items()
    }
    for requests in batches.values():
        engine.generate(requests)  # warm-up (also places the adapters in their slots)
    rates: dict[str, list[float]] = {name: [] for name in batches}
    cpu_rates: dict[str, list[float]] = {name: [] for name in batches}
    for _ in range(repeats):
        for name, requests in batches.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            results = engine.generate(requests)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            tokens = sum(len(r.tokens) for r in results)
            rates[name].append(tokens / elapsed)
            cpu_rates[name].append(tokens / cpu)
    return {
        name: {
            "tokens_per_s": statistics.median(rates[name]),
            "tokens_per_cpu_s": statistics.median(cpu_rates[name]),
            "runs": rates[name],
            "cpu_runs": cpu_rates[name],
        }
        for name in batches
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", choices=sorted(TARGETS), default="qv")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--num-shard", type=int,
                        help="with --shape: the engine split over this many processes vs one "
                             "(benchmarks/engine_sharded.py)")
    parser.add_argument("--device", help="with --num-shard: the engine's device (default: CUDA if present)")
    parser.add_argument("--shared-prefix", action="store_true",
                        help="the prefix-cache scenario instead (benchmarks/engine_prefix.py)")
    parser.add_argument("--shape", choices=("smollm2-135m", "qwen2.5-0.5b"),
                        help="a real-sized model vs server, transformers+peft and the linear bound "
                             "(benchmarks/engine_shapes.py); --repeats rounds")
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.shared_prefix:
        shared_prefix(args)
        return
    if args.shape and args.num_shard:
        sharded(args)
        return
    if args.shape:
        real_shape(args)
        return

    model_dir = tiny_model("mistral", size="demo")
    adapter_dirs = {
        f"adapter-{i}": str(
            tiny_adapter(
                model_dir,
                AdapterSpec(
                    r=args.rank, target_modules=TARGETS[args.targets], lora_alpha=2 * args.rank, seed=100 + i
                ),
            )
        )
        for i in range(args.requests)
    }
    engine = Engine.from_pretrained(
        model_dir,
        adapters=adapter_dirs,
        max_loaded_adapters=args.requests,
        max_lora_rank=args.rank,
        progress=lambda _: None,
    )
    corpus = (REPO / "tests" / "fixtures" / "corpus.txt").read_text()
    ids = engine.tokenizer.encode(corpus)
    span = max(1, len(ids) - args.prompt_tokens)
    prompts = [ids[i * 17 % span :][: args.prompt_tokens] for i in range(args.requests)]
    names = list(adapter_dirs)
    scenarios = {
        "base": [None] * args.requests,
        "one_adapter": [names[0]] * args.requests,
        "multi": names,
    }
    with engine:
        results = run_scenarios(engine, prompts, scenarios, args.new_tokens, args.repeats)
    base = results["base"]["tokens_per_s"]
    report = {
        "benchmark": "engine",
        "device": str(engine.info.device),
        "dtype": engine.info.dtype,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "model": "tiny mistral demo (hidden 256, 4 layers, 8 heads / 4 kv heads)",
        "requests": args.requests,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "adapter": {"rank": args.rank, "targets": list(TARGETS[args.targets])},
        "results": results,
        "multi_over_base": results["multi"]["tokens_per_s"] / base,
        "one_adapter_over_base": results["one_adapter"]["tokens_per_s"] / base,
        # Tokens per CPU-second of this process: steadier than wall time on a shared machine.
        "multi_over_base_cpu": results["multi"]["tokens_per_cpu_s"] / results["base"]["tokens_per_cpu_s"],
        "one_adapter_over_base_cpu": results["one_adapter"]["tokens_per_cpu_s"]
        / results["base"]["tokens_per_cpu_s"],
        "load_average": os.getloadavg()[0],
        "target_multi_over_base": 0.8,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"engine-{report['device'].split(':')[0]}-r{args.rank}-{args.targets}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / f"{stem}.png")
    print(json.dumps(report, indent=2))


def real_shape(args: argparse.Namespace) -> None:
    from engine_shapes import run_shape

    report = run_shape(args.shape, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"engine-{args.shape}.json").write_text(json.dumps(report, indent=2))
    _plot_shape(report, args.out / f"engine-{args.shape}.png")
    print(json.dumps(report, indent=2))


def sharded(args: argparse.Namespace) -> None:
    from engine_sharded import plot as plot_sharded
    from engine_sharded import run_sharded

    report = run_sharded(args.shape, args.num_shard, args.repeats, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"engine-{args.shape}-{args.num_shard}shards-{report['device'].split(':')[0]}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    plot_sharded(report, args.out / f"{stem}.png")
    print(json.dumps(report, indent=2))


def _plot_shape(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = ["engine", "server", "peft"]
    rates = report["tokens_per_s"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.38
    for offset, scenario, color in ((-width / 2, "base", "#888888"), (width / 2, "mixed", "#dd8452")):
        bars = ax.bar([i + offset for i in range(len(systems))], [rates[s][scenario] for s in systems],
                      width, label=scenario, color=color)
        ax.bar_label(bars, fmt="%.0f")
    ax.axhline(rates["bound"]["base"], color="#4c72b0", linestyle="--", label="linear-layer bound")
    ax.set_xticks(range(len(systems)), systems)
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"{report['shape']}: {report['requests']} requests x {report['new_tokens']} tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def shared_prefix(args: argparse.Namespace) -> None:
    from engine_prefix import run_shared_prefix

    report = run_shared_prefix(requests=64, adapters=8, system_tokens=512, question_tokens=16,
                               new_tokens=16, repeats=args.repeats)
    report["load_average"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine-shared-prefix.json").write_text(json.dumps(report, indent=2))
    _plot_prefix(report, args.out / "engine-shared-prefix.png")
    print(json.dumps(report, indent=2))


def _plot_prefix(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in ((axes[0], "prompt_tokens_computed", "prompt tokens computed"),
                           (axes[1], "tokens_per_s", "(prompt + output) tokens / s")):
        bars = ax.bar(names, [report["results"][n][key] for n in names], color=["#4c72b0", "#888888"])
        ax.bar_label(bars, fmt="%.0f")
        ax.set_title(label)
    fig.suptitle(f"{report['requests']} requests, {report['system_tokens']}-token shared prompt, "
                 f"{report['adapters']} adapters (speed-up {report['speedup']:.2f}x)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    values = [report["results"][n]["tokens_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, values, color=["#888888", "#4c72b0", "#dd8452"])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylim(0, max(values) * 1.15)
    ax.set_ylabel("generated tokens / s")
    ax.set_title(
        f"{report['requests']} requests x {report['new_tokens']} tokens, {report['device']} "
        f"(multi/base = {report['multi_over_base']:.2f})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
