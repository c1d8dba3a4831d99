"""`F.linear` against the other CPU matmul forms (`runtime/layers/dense.py`) on a real shape's weights.

Which form is faster depends on the machine and the batch (issue 18, fifth and sixth passes), which
is why the engine measures it at start (`dense.tune`). This benchmark shows the whole picture for
one machine: for each of `--shape`'s fused weights (q|k|v, o, gate|up, down, LM head; random
values) and each batch of 1, 8, 32, 128 and 256 rows, `F.linear` and each form the weight can take
(column blocks: wider than a block; oneDNN: at least `MIN_ONEDNN_ELEMENTS`) timed in `--repeats`
alternations on `--threads` threads, the fastest of each kept; then the plan `dense.measure_plan`
(what an engine starting now would choose) on the same weights.

    python benchmarks/dense_forms.py [--shape smollm2-135m] [--repeats 5] [--threads 2]

JSON on stdout; JSON + PNG under benchmarks/results/dense-forms-<shape>.*.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from lorafleet.runtime.layers import dense  # noqa: E402
from shapes import SHAPES  # noqa: E402

ROWS = (1, 8, 32, 128, 256)


def fused_weights(name: str) -> dict[str, tuple[int, int]]:
    """(out, in) of each fused projection of the shape, as the engine lays them out."""
    shape = SHAPES[name]
    head_dim = shape.hidden_size // shape.num_attention_heads
    qkv = (shape.num_attention_heads + 2 * shape.num_key_value_heads) * head_dim
    return {
        "qkv": (qkv, shape.hidden_size),
        "o": (shape.hidden_size, shape.num_attention_heads * head_dim),
        "gate_up": (2 * shape.intermediate_size, shape.hidden_size),
        "down": (shape.hidden_size, shape.intermediate_size),
        "lm_head": (shape.vocab_size, shape.hidden_size),
    }


def measure(name: str, repeats: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    weights = {
        projection: torch.randn(size, generator=generator) for projection, size in fused_weights(name).items()
    }
    results = []
    for projection, weight in weights.items():
        forms = (dense.PLAIN, *dense.candidate_forms(weight))
        for rows in ROWS:
            x = torch.randn(rows, weight.shape[1], generator=generator)
            calls = max(1, min(20, int(2e8 // (2 * rows * weight.shape[0] * weight.shape[1]))))
            seconds: dict[str, list[float]] = {form: [] for form in forms}
            for _ in range(repeats):
                for form, times in seconds.items():
                    call = functools.partial(dense.FORM_CALLS[form], x, weight)
                    times.append(dense.seconds_per_call(call, calls))
            row: dict[str, Any] = {"weight": projection, "out": weight.shape[0], "in": weight.shape[1],
                                   "rows": rows}
            for form, times in seconds.items():
                row[f"{form}_us"] = round(min(times) * 1e6, 1)
            for form in forms[1:]:
                row[f"speed_{form}"] = round(min(seconds[dense.PLAIN]) / min(seconds[form]), 3)
            results.append(row)
    plan = dense.measure_plan(weights.values()).plan
    names = {tuple(w.shape): projection for projection, w in weights.items()}
    chosen = sorted(f"{names[(out, k)]}@{dense.ROW_CLASSES[c]} {form}"
                    for (out, k, c), form in plan.forms.items())
    return {"benchmark": "dense-forms", "shape": name, "threads": torch.get_num_threads(),
            "results": results, "plan": chosen}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, form in zip(axes, (dense.BLOCKS, dense.ONEDNN), strict=True):
        for weight in dict.fromkeys(r["weight"] for r in report["results"]):
            rows = [r for r in report["results"] if r["weight"] == weight and f"speed_{form}" in r]
            if rows:
                speeds = [r[f"speed_{form}"] for r in rows]
                ax.plot([r["rows"] for r in rows], speeds, marker="o", label=weight)
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rows in the batch")
        ax.set_ylabel(f"speed of {form} ÷ F.linear")
        ax.set_title(f"{form}, {report['shape']}, {report['threads']} threads")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = measure(args.shape, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"dense-forms-{args.shape}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(report, stem.with_suffix(".png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
