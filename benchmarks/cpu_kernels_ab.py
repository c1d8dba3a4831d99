"""What each of the CPU path's own kernels is worth in the engine: an in-process A/B.

Builds the engine once on `--shape` (random weights, `shapes.py`) with issue 18's three adapters and
runs the base and the mixed batch of `benchmarks/engine.py --shape` (32 requests x 64 new tokens,
prefix cache off) `--rounds` times with the chosen kernel on and off, alternating which goes first,
so that the machine's drift (this one is shared) falls on both alike. Off means the layers find no
such kernel (`kernels/native_cpu.py`) and take their torch forms, as on a machine without a build:

    attention   decode attention reading the paged blocks in place (`csrc/attention_cpu.cpp`)
    norm_rope   RMSNorm with the residual add before it, and RoPE (`csrc/layers_cpu.cpp`)
    lora        the LoRA of decode rows (`csrc/lora_cpu.cpp`)

    python benchmarks/cpu_kernels_ab.py --kernel attention [--shape smollm2-135m] [--rounds 6]

JSON on stdout (tokens/s of every round, medians, on ÷ off); JSON + PNG under
benchmarks/results/cpu-kernels-ab-<kernel>-<shape>.*.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from engine_shapes import NEW_TOKENS, shape_engine  # noqa: E402
from lorafleet.kernels import native_cpu, torch_lora  # noqa: E402
from lorafleet.runtime.engine import GenerationRequest, SamplingParams  # noqa: E402
from lorafleet.runtime.layers import attention, norms, rotary  # noqa: E402

# kernel -> (the modules whose `native_cpu` is swapped, the lookup that finds no kernel when off)
SWITCHES: dict[str, tuple[tuple[types.ModuleType, ...], str]] = {
    "attention": ((attention,), "attention_kernel"),
    "norm_rope": ((norms, rotary), "norm_rope_kernel"),
    "lora": ((torch_lora,), "lora_kernel"),
}


def switch(kernel: str, on: bool) -> None:
    owners, lookup = SWITCHES[kernel]
    without = types.SimpleNamespace(**{lookup: lambda: None})
    for owner in owners:
        owner.native_cpu = native_cpu if on else without  # type: ignore[attr-defined]


def measure(shape: str, kernel: str, rounds: int) -> dict[str, Any]:
    if getattr(native_cpu, SWITCHES[kernel][1])() is None:
        raise SystemExit(f"no CPU {kernel} kernel on this machine (`make setup` builds the kernels)")
    engine, work = shape_engine(shape)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    runs: dict[str, list[float]] = {f"{scenario} {state}": [] for scenario in ("base", "mixed")
                                    for state in ("off", "on")}
    try:
        with engine:
            warm_up = SamplingParams(max_new_tokens=4, ignore_eos=True)
            for scenario in ("base", "mixed"):  # the mixed one loads the adapters
                engine.generate([GenerationRequest(p, warm_up, adapter_id=a)
                                 for p, a in zip(work["prompts"], work[scenario], strict=True)])
            for round_ in range(rounds):
                for on in (False, True) if round_ % 2 == 0 else (True, False):
                    switch(kernel, on)
                    for scenario in ("base", "mixed"):
                        requests = [GenerationRequest(p, params, adapter_id=a)
                                    for p, a in zip(work["prompts"], work[scenario], strict=True)]
                        start = time.perf_counter()
                        results = engine.generate(requests)
                        tokens = sum(len(r.tokens) for r in results)
                        key = f"{scenario} {'on' if on else 'off'}"
                        runs[key].append(round(tokens / (time.perf_counter() - start), 1))
    finally:
        switch(kernel, True)
    medians = {key: statistics.median(values) for key, values in runs.items()}
    return {"benchmark": "cpu-kernels-ab", "kernel": kernel, "shape": shape, "rounds": rounds,
            "tokens_per_s": runs, "medians": medians,
            "on_over_off": {s: round(medians[f"{s} on"] / medians[f"{s} off"], 3) for s in ("base", "mixed")}}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, values in report["tokens_per_s"].items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=key)
    ax.set(xlabel="round", ylabel="tokens/s",
           title=f"{report['kernel']} kernel on/off, {report['shape']} (32 requests x {NEW_TOKENS} tokens)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=sorted(SWITCHES), required=True)
    parser.add_argument("--shape", choices=("smollm2-135m", "qwen2.5-0.5b"), default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    report = measure(args.shape, args.kernel, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cpu-kernels-ab-{args.kernel}-{args.shape}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(report, stem.with_suffix(".png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
