"""`benchmarks/engine.py --shape NAME --num-shard N`: the engine split over N processes vs one.

The real-sized shape and the workload of `engine_shapes.py` (32 requests x 64 new tokens, `base`
and `mixed` scenarios), run by the engine with `num_shard=1` and `num_shard=N`, each in a fresh
process, rounds interleaved, medians. For the sharded engine it also reports where rank 0's step
time went: the all-reduces (two per layer, timed around `dist.all_reduce`) and the step messages
(one `broadcast_object_list` per step), as shares of the scenario's wall time.

On the CPU (gloo) the N processes split the host's cores (torch threads = cores / N each), so
this measures the protocol's overhead, not a speed-up: sharding pays off on N GPUs, where each
shard has its own device (`gpu_check.sh` runs the 2-GPU case).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def run_worker(shape: str, num_shard: int, device: str | None) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(REPO))
    from engine_shapes import NEW_TOKENS, prompts_and_adapters
    from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams
    from shapes import real_shape_adapters, real_shape_model

    model_dir = real_shape_model(shape)
    adapters = {name: str(path) for name, path in real_shape_adapters(model_dir).items()}
    engine = Engine.from_pretrained(model_dir, adapters=adapters, max_loaded_adapters=4, num_shard=num_shard,
                                    device=device, progress=lambda _: None)
    work = prompts_and_adapters(engine.tokenizer.encode, engine.tokenizer.decode)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    out: dict[str, Any] = {"threads": _threads()}
    with engine:
        engine.generate([GenerationRequest(work["prompts"][0], params)])  # warm-up
        for scenario in ("base", "mixed"):
            requests = [GenerationRequest(p, params, adapter_id=a)
                        for p, a in zip(work["prompts"], work[scenario], strict=True)]
            before = _collective_seconds(engine)
            start = time.perf_counter()
            results = engine.generate(requests)
            elapsed = time.perf_counter() - start
            after = _collective_seconds(engine)
            out[scenario] = sum(len(r.tokens) for r in results) / elapsed
            out[f"{scenario}_all_reduce_share"] = (after[0] - before[0]) / elapsed
            out[f"{scenario}_broadcast_share"] = (after[1] - before[1]) / elapsed
            out[f"{scenario}_all_reduces"] = after[2] - before[2]
    return out


def _collective_seconds(engine: Any) -> tuple[float, float, int]:
    if engine.shards is None:
        return 0.0, 0.0, 0
    runner = engine.loop.runner
    return engine.shards.reduce.seconds, runner.broadcast_seconds, engine.shards.reduce.calls


def run_sharded(shape: str, num_shard: int, rounds: int, device: str | None = None) -> dict[str, Any]:
    """One shard and `num_shard` shards, each once per round in its own process; medians."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    runs: dict[int, list[dict[str, Any]]] = {1: [], num_shard: []}
    for _ in range(rounds):
        for shards in runs:
            command = [sys.executable, str(BENCH / "engine_sharded.py"), shape, str(shards), device or ""]
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise RuntimeError(f"{shards}-shard worker failed:\n{done.stderr[-3000:]}")
            runs[shards].append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = {shards: {key: statistics.median(run[key] for run in shard_runs) for key in shard_runs[0]}
              for shards, shard_runs in runs.items()}
    one, many = median[1], median[num_shard]
    return {
        "benchmark": "engine-sharded",
        "shape": shape,
        "device": device or "default",
        "num_shard": num_shard,
        "tokens_per_s": {str(k): {"base": v["base"], "mixed": v["mixed"]} for k, v in median.items()},
        "sharded_over_single": {s: many[s] / one[s] for s in ("base", "mixed")},
        "all_reduce_share": {s: many[f"{s}_all_reduce_share"] for s in ("base", "mixed")},
        "broadcast_share": {s: many[f"{s}_broadcast_share"] for s in ("base", "mixed")},
        "threads_per_process": {str(k): v["threads"] for k, v in median.items()},
        "runs": {str(k): v for k, v in runs.items()},
        "load_average": os.getloadavg()[0],
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    labels = list(report["tokens_per_s"])
    for offset, scenario, color in ((-0.2, "base", "#888888"), (0.2, "mixed", "#dd8452")):
        heights = [report["tokens_per_s"][k][scenario] for k in labels]
        bars = left.bar([i + offset for i in range(len(labels))], heights, 0.38, label=scenario, color=color)
        left.bar_label(bars, fmt="%.0f")
    left.set_xticks(range(len(labels)), [f"{k} shard(s)" for k in labels])
    left.set_ylabel("generated tokens / s")
    left.legend(fontsize=8)
    scenarios = ["base", "mixed"]
    reduce = [report["all_reduce_share"][s] for s in scenarios]
    broadcast = [report["broadcast_share"][s] for s in scenarios]
    right.bar(scenarios, reduce, label="all-reduce", color="#4c72b0")
    right.bar(scenarios, broadcast, bottom=reduce, label="step broadcast", color="#55a868")
    right.set_ylabel(f"share of wall time ({report['num_shard']} shards)")
    right.legend(fontsize=8)
    fig.suptitle(f"{report['shape']} on {report['device']}: {report['num_shard']} shards vs 1")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":  # a worker: `engine_sharded.py SHAPE NUM_SHARD [DEVICE]` prints one JSON line
    print(json.dumps(run_worker(sys.argv[1], int(sys.argv[2]), (sys.argv[3:] or [""])[0] or None)))
