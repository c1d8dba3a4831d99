"""`benchmarks/engine.py --shared-prefix`: the prefix cache on requests that share a system prompt.

64 requests (default) over 8 adapters, each a 512-token system prompt followed by its own
16-token question, 16 new tokens each, all submitted at once; the same run with the prefix cache
on and off, alternating, on the demo model. Reported: prompt tokens actually computed (the rest
came from the cache), wall time, and throughput (prompt + generated tokens per second).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams

from tests.fixtures import AdapterSpec, tiny_adapter, tiny_model


def run_shared_prefix(
    *, requests: int, adapters: int, system_tokens: int, question_tokens: int, new_tokens: int, repeats: int
) -> dict[str, Any]:
    model_dir = tiny_model("mistral", size="demo")
    adapter_dirs = {
        f"adapter-{i}": str(tiny_adapter(model_dir, AdapterSpec(r=8, target_modules=("q_proj", "v_proj"),
                                                                lora_alpha=16, seed=300 + i)))
        for i in range(adapters)
    }
    engines = {
        name: Engine.from_pretrained(model_dir, adapters=adapter_dirs, max_loaded_adapters=adapters,
                                     max_lora_rank=8, prefix_caching=enabled, progress=lambda _: None)
        for name, enabled in (("cache_on", True), ("cache_off", False))
    }
    corpus = (Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus.txt").read_text()
    ids = next(iter(engines.values())).tokenizer.encode(corpus * 4)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    names = list(adapter_dirs)

    def batch(repeat: int) -> list[GenerationRequest]:
        # A different system prompt each repeat (shifted start), so every repeat starts cold.
        system = ids[repeat * 11 :][:system_tokens]
        return [
            GenerationRequest(system + ids[system_tokens + 37 * i :][:question_tokens], params,
                              adapter_id=names[i % adapters])
            for i in range(requests)
        ]

    prompt_tokens = requests * (system_tokens + question_tokens)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    for engine in engines.values():
        engine.start()
    try:
        for repeat in range(repeats):
            for name, engine in engines.items():
                before = engine.stats().prefix_cache_hit_tokens
                start = time.perf_counter()
                results = engine.generate(batch(repeat))
                elapsed = time.perf_counter() - start
                generated = sum(len(r.tokens) for r in results)
                hit = engine.stats().prefix_cache_hit_tokens - before
                runs[name].append({
                    "seconds": elapsed,
                    "prompt_tokens_computed": prompt_tokens - hit,
                    "tokens_per_s": (prompt_tokens + generated) / elapsed,
                    "generated_tokens_per_s": generated / elapsed,
                })
    finally:
        for engine in engines.values():
            engine.shutdown()
    summary = {
        name: {key: statistics.median(run[key] for run in name_runs) for key in name_runs[0]}
        for name, name_runs in runs.items()
    }
    return {
        "benchmark": "engine-shared-prefix",
        "model": "tiny mistral demo",
        "requests": requests,
        "adapters": adapters,
        "system_tokens": system_tokens,
        "question_tokens": question_tokens,
        "new_tokens": new_tokens,
        "prompt_tokens": prompt_tokens,
        "results": summary,
        "runs": runs,
        "speedup": summary["cache_on"]["tokens_per_s"] / summary["cache_off"]["tokens_per_s"],
        "prompt_tokens_saved": 1 - summary["cache_on"]["prompt_tokens_computed"] / prompt_tokens,
    }
