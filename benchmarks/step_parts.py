"""Where an engine step's wall time goes on a real-sized model: base matmuls, LoRA, attention, ...

Builds the engine on `--shape` (random weights, `shapes.py`) with issue 18's three adapters, runs
the base and the mixed batch of `benchmarks/engine.py --shape` (32 requests x 64 new tokens,
prefix cache off), and times, around each call, the parts of every step: the LoRA layers' base
matmuls, their LoRA deltas, the LM head, decode attention, the RMS norms, RoPE, and sampling
(the wall time of each call, summed; a part called inside another of the same name counts once).
The prefill step (32 prompts, ~1 000 tokens) and the decode steps (32 rows) are reported apart,
in ms per step; `rest` is the step minus its named parts: the residual adds, the MLP's
activation, views, embedding, the layers' Python. Each scenario runs `--repeats` times after a
warm-up, alternating; the median run per scenario is reported.

Unlike `lora_step.py`, which replays one step's calls alone, this measures the parts where they
run, after the base matmuls have streamed hundreds of MB of weights through the caches: a norm
that costs ~18 µs alone costs ~50-75 µs there, and a LoRA GEMM ~3x its in-cache time.

    python benchmarks/step_parts.py [--shape smollm2-135m] [--repeats 3]

JSON on stdout; JSON + PNG under benchmarks/results/step-parts-<shape>.*.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from engine_shapes import NEW_TOKENS, shape_engine  # noqa: E402
from lorafleet.runtime.engine import GenerationRequest, SamplingParams, loop, model_runner  # noqa: E402
from lorafleet.runtime.layers import lora_linear, norms, rotary  # noqa: E402
from lorafleet.runtime.models import decoder  # noqa: E402

# (owner, attribute, part): the calls timed. `step` is the model runner's whole step.
TIMED = (
    (model_runner.ModelRunner, "execute", "step"),
    (lora_linear, "linear", "base matmuls"),
    (lora_linear.LoRABuffers, "add_lora", "lora"),
    (decoder.DecoderModel, "compute_logits", "lm head"),
    (decoder, "paged_attention", "attention"),
    (norms.RMSNorm, "forward", "norms"),
    (norms.RMSNorm, "add_and_norm", "norms"),
    (rotary.RotaryEmbedding, "forward", "rope"),
    (loop, "sample", "sampling"),
)
PARTS = ("base matmuls", "lm head", "lora", "attention", "norms", "rope", "sampling", "rest")


class StepClock:
    """Sums the wall time of each timed part, per kind of step (prefill or decode)."""

    def __init__(self) -> None:
        self.seconds: dict[str, Counter[str]] = {"prefill": Counter(), "decode": Counter()}
        self.steps: Counter[str] = Counter()
        self.kind = "decode"
        self._open: Counter[str] = Counter()

    def timed(self, fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._open[part]:  # nested in a call of the same part: counted there
                return fn(*args, **kwargs)
            if part == "step":
                batch = args[1]
                self.kind = "prefill" if any(item.num_tokens > 1 for item in batch.items) else "decode"
                self.steps[self.kind] += 1
            self._open[part] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[self.kind][part] += time.perf_counter() - start
                self._open[part] -= 1

        return call

    def per_step(self) -> dict[str, dict[str, float]]:
        """ms per step of each part, by kind of step; sampling follows its step, so it is added."""
        out = {}
        for kind, seconds in self.seconds.items():
            steps = max(1, self.steps[kind])
            inside = sum(seconds[p] for p in PARTS if p not in ("rest", "sampling"))
            parts = {p: seconds[p] for p in PARTS if p != "rest"}
            parts["rest"] = seconds["step"] - inside
            parts["total"] = seconds["step"] + seconds["sampling"]
            out[kind] = {p: round(v / steps * 1e3, 2) for p, v in parts.items()}
            out[kind]["steps"] = self.steps[kind]
        return out


@contextmanager
def timing(clock: StepClock) -> Iterator[None]:
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in TIMED]
    try:
        for (owner, name, original), (_, _, part) in zip(saved, TIMED, strict=True):
            setattr(owner, name, clock.timed(original, part))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def measure(shape: str, repeats: int) -> dict[str, Any]:
    engine, work = shape_engine(shape)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "mixed": []}
    with engine:
        for scenario in [*runs] * (repeats + 1):  # the first round warms up
            requests = [GenerationRequest(p, params, adapter_id=a)
                        for p, a in zip(work["prompts"], work[scenario], strict=True)]
            clock = StepClock()
            with timing(clock):
                start = time.perf_counter()
                results = engine.generate(requests)
                elapsed = time.perf_counter() - start
            tokens = sum(len(r.tokens) for r in results)
            runs[scenario].append({"tokens_per_s": tokens / elapsed, **clock.per_step()})
    report: dict[str, Any] = {"benchmark": "step-parts", "shape": shape, "requests": len(work["prompts"]),
                              "new_tokens": NEW_TOKENS, "repeats": repeats}
    for scenario, measured in runs.items():
        timed = measured[1:]
        median = statistics.median(run["tokens_per_s"] for run in timed)
        chosen = min(timed, key=lambda run: abs(run["tokens_per_s"] - median))
        report[scenario] = {**chosen, "runs_tokens_per_s": [round(run["tokens_per_s"], 1) for run in timed]}
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    scenarios = ("base", "mixed")
    bottoms = [0.0, 0.0]
    for part in PARTS:
        values = [report[s]["decode"][part] for s in scenarios]
        ax.barh(scenarios, values, left=bottoms, label=part)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_xlabel("ms per decode step (32 rows)")
    ax.set_title(f"Where a decode step goes, {report['shape']}")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("smollm2-135m", "qwen2.5-0.5b"), default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    report = measure(args.shape, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"step-parts-{args.shape}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(report, stem.with_suffix(".png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
