"""Where a mixed decode step's LoRA time goes, on a real-sized model (issue 18's profile, repeatable).

Builds the engine on `--shape` (random weights, `shapes.py`) with issue 18's three adapters, runs
the mixed batch (32 requests: 8 on the base, 8 on each adapter) for a few decode steps while
recording every layer call of one 32-row decode step, then replays that step's calls alone, on
1 and 2 threads, best of `--repeats`:

- `base_linears`: the step's base matmuls (`F.linear` of every LoRA-capable layer, LM head not
  included);
- `lora`: the step's LoRA calls exactly as the engine makes them (`LoRABuffers.add_lora`: the
  planned grouped form on each layer's `SlotWeights`, or the gathered form, by the rule);
- `lora_pages`: the same calls reading the pages as they are (no `SlotWeights`: the engine before
  the planned form);
- `lora_minimal`: the same FLOPs in the fewest ops — per layer and adapter one shrink matmul on
  contiguous weights and one `addmm_` per slice into the output — what the LoRA path would cost
  with no per-call overhead (a floor for the CPU path, not a correct computation: random weights);
- per projection group: the engine's LoRA time, and with each form forced (planned / grouped on
  the pages / gathered).

Also prints the bytes the step's adapters read against the base weights' bytes, the reason a
decode step at batch 32 cannot get its adapters for their FLOPs alone.

    python benchmarks/lora_step.py [--shape smollm2-135m] [--repeats 15]

JSON on stdout; JSON + PNG under benchmarks/results/lora-step-<shape>.*.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from engine_shapes import prompts_and_adapters  # noqa: E402
from lorafleet.kernels import backend_for, torch_lora  # noqa: E402
from lorafleet.kernels.torch_slot_weights import SlotWeights  # noqa: E402
from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams  # noqa: E402
from lorafleet.runtime.layers import lora_linear  # noqa: E402
from shapes import real_shape_adapters, real_shape_model  # noqa: E402

ROWS = 32  # the decode batch: one row per request


def capture_step(shape: str) -> tuple[list[tuple], list[tuple]]:
    """One 32-row decode step's LoRA calls (layer, out, x, meta, pages) and base linears (layer, x)."""
    model_dir = real_shape_model(shape)
    adapters = {name: str(path) for name, path in real_shape_adapters(model_dir).items()}
    engine = Engine.from_pretrained(
        model_dir, adapters=adapters, max_loaded_adapters=4, progress=lambda _: None
    )
    work = prompts_and_adapters(engine.tokenizer.encode, engine.tokenizer.decode)
    lora_calls: list[tuple] = []
    linears: list[tuple] = []
    add_lora, forward = lora_linear.LoRABuffers.add_lora, lora_linear.LoRALinear.forward

    def spy_add(self, out, x, meta, pages, backend):  # type: ignore[no-untyped-def]
        if x.shape[0] == ROWS:
            lora_calls.append((self, out.clone(), x.clone(), meta, pages))
        return add_lora(self, out, x, meta, pages, backend)

    def spy_forward(self, x, lora):  # type: ignore[no-untyped-def]
        if x.shape[0] == ROWS:
            linears.append((self, x.clone()))
        return forward(self, x, lora)

    lora_linear.LoRABuffers.add_lora, lora_linear.LoRALinear.forward = spy_add, spy_forward
    try:
        params = SamplingParams(max_new_tokens=2, ignore_eos=True)  # prefill, then one decode step
        with engine:
            engine.generate([GenerationRequest(p, params, adapter_id=a)
                             for p, a in zip(work["prompts"], work["mixed"], strict=True)])
    finally:
        lora_linear.LoRABuffers.add_lora, lora_linear.LoRALinear.forward = add_lora, forward
    return lora_calls, linears


def best_ms(fn: Callable[[], None], repeats: int) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times) * 1e3


def minimal_form(lora_calls: list[tuple]) -> Callable[[], None]:
    """The step's LoRA FLOPs as one shrink + one addmm_ per slice per adapter, on contiguous weights."""
    prepared = []
    for layer, out, x, meta, pages in lora_calls:
        offsets = torch_lora.offsets_of(layer.slice_widths)
        _, segments, _ = meta.derived(("segments", pages), torch_lora._segments, meta, pages)
        for slot, lo, hi in segments:
            rank, slices = pages.slot_ranks[slot], len(layer.slice_widths)
            a = torch.randn(layer.in_features, slices * rank)
            b = [torch.randn(rank, offsets[s + 1] - offsets[s]) for s in range(slices)]
            views = [out[lo:hi, offsets[s] : offsets[s + 1]] for s in range(slices)]
            prepared.append((x[lo:hi], a, b, views, rank))

    def run() -> None:
        for rows, a, b, views, rank in prepared:
            shrunk = rows @ a
            for s, view in enumerate(views):
                view.addmm_(shrunk[:, s * rank : (s + 1) * rank], b[s], alpha=0.5)

    return run


FORMS = {  # name -> (path, whether the layer's SlotWeights are passed)
    "planned": ("grouped", True), "grouped": ("grouped", False), "gathered": ("gathered", False)}


def engine_calls(lora_calls: list[tuple]) -> Callable[[], None]:
    """The calls as the engine makes them: `add_lora` on the CPU backend."""
    backend = backend_for(torch.device("cpu"))

    def run() -> None:
        for layer, out, x, meta, pages in lora_calls:
            layer.add_lora(out, x, meta, pages, backend)

    return run


def forced(lora_calls: list[tuple], path: str | None, planned: bool) -> Callable[[], None]:
    """The calls with one form forced (path None: the rule), on the layers' SlotWeights or not."""
    def run() -> None:
        for layer, out, x, meta, pages in lora_calls:
            weights: SlotWeights | None = layer.slot_weights if planned else None
            torch_lora.apply_paged(out, x, layer.lora_a, layer.lora_b, layer.lora_scales,
                                   layer.slice_widths, meta, pages, path=path, slot_weights=weights)

    return run


def per_group(lora_calls: list[tuple], repeats: int) -> dict[str, dict[str, float]]:
    """Per projection group: the engine's LoRA ms per step, and each form forced."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    groups = sorted({layer.group for layer, *_ in lora_calls})
    for group in groups:
        calls = [c for c in lora_calls if c[0].group == group]
        out[group]["engine"] = round(best_ms(engine_calls(calls), repeats), 2)
        for name, (path, planned) in FORMS.items():
            out[group][name] = round(best_ms(forced(calls, path, planned), repeats), 2)
    return dict(out)


def weight_bytes(lora_calls: list[tuple], linears: list[tuple]) -> dict[str, int]:
    """Bytes the step reads: the base weights, and each live adapter's A and B rank rows."""
    base = sum(layer.weight.numel() * layer.weight.element_size() for layer, _ in linears)
    lora = 0
    for layer, _, _, meta, pages in lora_calls:
        _, segments, _ = meta.derived(("segments", pages), torch_lora._segments, meta, pages)
        per_rank_row = len(layer.slice_widths) * layer.in_features + layer.out_features
        lora += sum(pages.slot_ranks[slot] * per_rank_row * 4 for slot, _, _ in segments)
    return {"base_linear_bytes": base, "lora_bytes": lora}


def measure(shape: str, repeats: int) -> dict[str, Any]:
    lora_calls, linears = capture_step(shape)
    minimal = minimal_form(lora_calls)
    engine_lora, pages_lora = engine_calls(lora_calls), forced(lora_calls, None, planned=False)

    def base() -> None:
        for layer, x in linears:
            torch.nn.functional.linear(x, layer.weight, layer.bias)

    threads: dict[str, dict[str, float]] = {}
    for count in (1, 2):
        torch.set_num_threads(count)
        threads[str(count)] = {name: round(best_ms(fn, repeats), 2)
                               for name, fn in (("base_linears", base), ("lora", engine_lora),
                                                ("lora_pages", pages_lora), ("lora_minimal", minimal))}
    torch.set_num_threads(1)
    return {"benchmark": "lora-step", "shape": shape, "rows": ROWS, "lora_calls": len(lora_calls),
            "ms_per_step": threads, "per_group_ms_1_thread": per_group(lora_calls, repeats),
            **weight_bytes(lora_calls, linears)}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("base_linears", "lora", "lora_pages", "lora_minimal")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, count in enumerate(("1", "2")):
        values = [report["ms_per_step"][count][n] for n in names]
        ax.bar([j + i * 0.4 for j in range(len(names))], values, width=0.4, label=f"{count} thread(s)")
    ax.set_xticks([j + 0.2 for j in range(len(names))], names)
    ax.set_ylabel("ms per decode step (32 rows)")
    ax.set_title(f"LoRA cost of one mixed decode step, {report['shape']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("smollm2-135m", "qwen2.5-0.5b"), default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    report = measure(args.shape, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"lora-step-{args.shape}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(report, stem.with_suffix(".png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
