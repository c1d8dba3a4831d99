"""The engine split over 2 GPUs (NCCL) against one GPU, on the tiny model of `gpu_engine.py`.

fp32, the base and four adapters mixed in one batch: greedy tokens must be identical; tokens/s of
a 32-request batch both ways, and the sharded engine's all-reduce and step-broadcast shares of
that batch's wall time. `gpu_check.sh` runs it when 2+ GPUs are visible.

    python benchmarks/gpu_sharded.py --json-out $OUT/sharded.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` when run as a script
from benchmarks.gpu_engine import NAMES, NEW_TOKENS, PROMPTS  # noqa: E402
from benchmarks.gpu_model import TINY, build_adapters, build_model  # noqa: E402


def run(model_dir: Path, adapters: dict[str, Path], num_shard: int) -> dict[str, Any]:
    from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams

    engine = Engine.from_pretrained(
        model_dir, adapters={k: str(v) for k, v in adapters.items()}, device="cuda", dtype="float32",
        max_input_tokens=400, max_total_tokens=448, max_batch_prefill_tokens=320, num_kv_blocks=512,
        max_loaded_adapters=4, max_lora_rank=16, max_batch_size=32, num_shard=num_shard,
        progress=lambda _: None)
    greedy = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    with engine:
        results = engine.generate([GenerationRequest(p, greedy, adapter_id=a)
                                   for p, a in zip(PROMPTS, NAMES, strict=True)])
        many = [GenerationRequest(PROMPTS[i % 8][:16], SamplingParams(max_new_tokens=32, ignore_eos=True),
                                  adapter_id=f"a{i % 4}" if i % 5 else None) for i in range(32)]
        reduce_before, broadcast_before = _collectives(engine)
        began = time.perf_counter()
        done = engine.generate(many)
        wall = time.perf_counter() - began
        reduce_after, broadcast_after = _collectives(engine)
    return {
        "tokens": [[t.id for t in r.tokens] for r in results],
        "tokens_per_s": sum(len(r.tokens) for r in done) / wall,
        "all_reduce_share": (reduce_after - reduce_before) / wall,
        "broadcast_share": (broadcast_after - broadcast_before) / wall,
    }


def _collectives(engine: Any) -> tuple[float, float]:
    if engine.shards is None:
        return 0.0, 0.0
    engine.shards.reduce.sync = True  # time each all-reduce to its end on the device
    return engine.shards.reduce.seconds, engine.loop.runner.broadcast_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        model_dir = build_model(Path(root) / "model", TINY)
        adapters = build_adapters(Path(root) / "adapters", model_dir, TINY, count=4, rank=16)
        one, two = run(model_dir, adapters, 1), run(model_dir, adapters, 2)
    report = {
        "greedy_identical": one["tokens"] == two["tokens"],
        "tokens_per_s": {"1": one["tokens_per_s"], "2": two["tokens_per_s"]},
        "two_over_one": two["tokens_per_s"] / one["tokens_per_s"],
        "all_reduce_share": two["all_reduce_share"],
        "broadcast_share": two["broadcast_share"],
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["greedy_identical"] else 1)


if __name__ == "__main__":
    main()
