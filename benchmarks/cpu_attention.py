"""Decode attention on the CPU: the runtime's layer (`runtime/layers/attention.py`) by its parts.

A decode step of issue 18's benchmark: 32 sequences, one new token each, on the real shapes'
attention (SmolLM2-135M: 9 query / 3 KV heads; Qwen2.5-0.5B: 14 / 2; head_dim 64), blocks of 16
tokens scattered over the pool, fp32. Every call reads another layer's cache (as many layers as the
model has), so the figures come from memory, not from a cache that the previous call warmed.
Timed per call, forms alternated, fastest round of each:

    gather      the two copies of the sequences' blocks into padded runs (both forms do this)
    gqa         gather + SDPA with `enable_gqa` (one query row per head, a bool mask): the form
                before issue 18's sixth pass
    grouped     gather + SDPA with each KV head's query heads as its rows and the additive mask
                built once per step: the layer's torch form (issue 18's sixth pass)
    layer       `paged_attention` as it is (the layer itself, its KV write included): where
                `make setup` built the CPU kernels, the decode attention kernel reading the blocks
                in place (`kernels/csrc/attention_cpu.cpp`); else the grouped form

    python benchmarks/cpu_attention.py [--rounds N] [--json-out PATH]

JSON lines while running; the report goes to PATH (default benchmarks/results/cpu_attention.json)
and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from lorafleet.kernels import native_cpu
from lorafleet.runtime.layers.attention import AttentionMetadata, DecodeGroup, paged_attention

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {"smollm2-135m": (9, 3, 30), "qwen2.5-0.5b": (14, 2, 24)}  # query heads, KV heads, layers
BATCH, HEAD_DIM, BLOCK_SIZE = 32, 64, 16
CONTEXTS = (96, 512)  # issue 18's requests at their end (32 + 64 tokens); a longer conversation


def case(shape: str, context: int, rounds: int) -> dict:
    num_heads, num_kv_heads, layers = SHAPES[shape]
    gen = torch.Generator().manual_seed(context)
    per_seq = math.ceil(context / BLOCK_SIZE)
    pool = BATCH * per_seq
    caches = [torch.randn(2, pool, BLOCK_SIZE, num_kv_heads, HEAD_DIM, generator=gen) for _ in range(layers)]
    tables = torch.randperm(pool, generator=gen).view(BATCH, per_seq)
    lens = torch.randint(context - BLOCK_SIZE + 1, context + 1, (BATCH,), generator=gen)
    q = torch.randn(BATCH, num_heads, HEAD_DIM, generator=gen)
    k = torch.randn(BATCH, num_kv_heads, HEAD_DIM, generator=gen)
    slots = tables[torch.arange(BATCH), (lens - 1) // BLOCK_SIZE] * BLOCK_SIZE + (lens - 1) % BLOCK_SIZE
    scale = HEAD_DIM**-0.5

    def gather(cache: torch.Tensor) -> torch.Tensor:
        blocks = cache.index_select(0, tables.reshape(-1))
        return blocks.view(BATCH, per_seq * BLOCK_SIZE, num_kv_heads, HEAD_DIM).transpose(1, 2)

    def gather_only(kv: torch.Tensor) -> object:
        return gather(kv[0]), gather(kv[1])

    visible = (torch.arange(per_seq * BLOCK_SIZE)[None, :] < lens[:, None])[:, None, None, :]

    def gqa(kv: torch.Tensor) -> object:
        return F.scaled_dot_product_attention(q.unsqueeze(2), gather(kv[0]), gather(kv[1]), attn_mask=visible,
                                              scale=scale, enable_gqa=True)

    def grouped_step() -> Callable[[torch.Tensor], object]:
        # One step's mask, shared by its layers as in the engine.
        bias = torch.zeros(visible.shape).masked_fill_(~visible, float("-inf"))
        query = q.view(BATCH, num_kv_heads, -1, HEAD_DIM)
        return lambda kv: F.scaled_dot_product_attention(query, gather(kv[0]), gather(kv[1]), attn_mask=bias,
                                                         scale=scale)

    def layer_step() -> Callable[[torch.Tensor], object]:
        # One step's metadata, shared by its layers as in the engine.
        meta = AttentionMetadata(slot_mapping=slots, prefills=(), decode=DecodeGroup(
            token_index=torch.arange(BATCH), block_tables=tables, context_lens=lens))
        return lambda kv: paged_attention(q, k, k, kv[0], kv[1], meta, scale)

    forms: dict[str, Callable[[], Callable[[torch.Tensor], object]]] = {
        "gather": lambda: gather_only, "gqa": lambda: gqa, "grouped": grouped_step, "layer": layer_step}
    got = layer_step()(caches[0])  # writes k (as keys and values) at the rows' last slots
    expected = gqa(caches[0]).squeeze(2)
    assert isinstance(got, torch.Tensor)
    best = dict.fromkeys(forms, math.inf)
    for _ in range(rounds):
        for name, make in forms.items():
            layer_call = make()
            began = time.perf_counter()
            for kv in caches:  # one decode step: every layer once
                layer_call(kv)
            best[name] = min(best[name], (time.perf_counter() - began) * 1e6 / layers)
    return {"shape": shape, "batch": BATCH, "context": context, "layers": layers,
            **{f"{name}_us": round(us, 1) for name, us in best.items()},
            "grouped_vs_gqa": round(best["gqa"] / best["grouped"], 2),
            "layer_vs_grouped": round(best["grouped"] / best["layer"], 2),
            "max_abs_diff": float((got - expected).abs().max())}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["cases"]
    labels = [f"{r['shape']}\nctx {r['context']}" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    keys = ("gather_us", "gqa_us", "grouped_us", "layer_us")
    for n, key in enumerate(keys):
        positions = [i + (n - 1.5) * 0.2 for i in range(len(rows))]
        ax.bar(positions, [r[key] for r in rows], width=0.2, label=key[:-3])
    ax.set_xticks(range(len(rows)), labels)
    ax.set(ylabel="µs per layer (32 decode rows)", title=f"CPU decode attention, {report['threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternations of the forms (fastest kept)")
    parser.add_argument("--json-out", type=Path, default=RESULTS / "cpu_attention.json")
    args = parser.parse_args(argv)
    rows = []
    for shape in SHAPES:
        for context in CONTEXTS:
            rows.append(case(shape, context, args.rounds))
            print(json.dumps(rows[-1]), flush=True)
    layer_form = "kernel" if native_cpu.attention_kernel() is not None else "grouped"
    report = {"threads": torch.get_num_threads(), "dtype": "float32", "block_size": BLOCK_SIZE,
              "layer_form": layer_form, "cases": rows}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2))
    plot(report, args.json_out.with_suffix(".png"))
    print(json.dumps({"wrote": str(args.json_out), "plot": str(args.json_out.with_suffix(".png"))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
