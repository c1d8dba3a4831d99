"""Benchmark of `lorafleet.kernels.add_lora` against the usual ways to batch multi-LoRA.

For decode (T = 1..256 tokens over 1..64 adapters, Zipf-distributed, in random order) and prefill
shapes of Mistral-7B's q/o (K = N = 4096) and MLP (4096 -> 14336) projections, ranks 16 and 64:

    ours        lorafleet.kernels.add_lora with this step's `prepare_lora_batch` metadata
    ours_graph  the same, replayed from a CUDA graph (no launch gaps; CUDA only)
    loop        a loop over the adapters present: gather rows, two matmuls, index_add_
    bmm         gathered per-token weights and torch.bmm (moves T copies of A and B)
    reference   lorafleet.kernels.reference.add_lora, one token at a time (small T only)

and the bandwidth ours achieves, bytes of x, A, B (adapters present) and out (read + write) over
its time, as a fraction of the device's peak. On a CPU the `ours` rows are the torch path, grouped
or gathered as `torch_lora.choose_path` picks (the JSON says so): the Triton figures need a GPU
(`benchmarks/gpu_check.sh`).

A second section (`kernels_paged.py`) runs adapters of ranks 8/16/64 stored in pages, read up to
each one's true rank, against the same adapters zero-padded into a rank-64 stack: bytes read and
time (on CUDA the Triton kernels, also from CUDA graphs; on a CPU the torch path).

    python benchmarks/kernels.py [--quick] [--only stacked|paged] [--out benchmarks/results]
                                 [--json-out PATH]     # the JSON at PATH, the PNG next to it

`--cpu-paths` instead times the forms of the CPU torch path (`grouped`, one matmul pair per
adapter read from the pages; `planned`, the same on `SlotWeights`' whole matrices, as the engine's
CPU layers run it; `gathered`, per-token weights) at decode shapes, T tokens over D adapters, for uniform
ranks (stacked) and ranks 8/16/64 in pages, in the engine's row layout (in place) and in the
kernels' layout (copied), and which one `torch_lora.choose_path` picks, without and with slot
weights (`kernels-cpu-paths.json`):

    OMP_NUM_THREADS=1 python benchmarks/kernels.py --cpu-paths
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from lorafleet import kernels
from lorafleet.kernels import build_adapter_pages, pages_for_rank, reference, torch_lora
from lorafleet.kernels.torch_live import live_tokens
from lorafleet.kernels.torch_slot_weights import SlotWeights

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` when run as a script
from benchmarks import kernels_paged  # noqa: E402
from benchmarks.kernel_timing import graph_time_us, peak_bandwidth, time_us  # noqa: E402

LAYERS = {"qo": (4096, 4096), "mlp": (4096, 14336)}
MAX_GATHER_BYTES = 2 << 30  # bmm materialises T copies of A and B; skip it above this


@dataclass(frozen=True)
class Case:
    phase: str  # decode | prefill
    layer: str
    rank: int
    num_tokens: int
    num_adapters: int


@dataclass
class Result:
    case: Case
    dtype: str
    bytes_moved: int
    adapters_present: int
    times_us: dict[str, float] = field(default_factory=dict)
    max_abs_err_vs_loop: float = 0.0

    def summary(self) -> dict:
        ours = self.times_us.get("ours_graph", self.times_us["ours"])
        row = asdict(self.case) | {k: v for k, v in asdict(self).items() if k != "case"}
        row["achieved_GBps"] = self.bytes_moved / ours / 1e3
        if "loop" in self.times_us:
            row["speedup_vs_loop"] = self.times_us["loop"] / ours
        return row


def cases(quick: bool, on_cuda: bool) -> list[Case]:
    if quick:
        decode = [(1, 1), (16, 8), (64, 32)]
        prefill = [(512, 4)] if not on_cuda else [(512, 4), (2048, 8)]
    else:
        decode = [(t, a) for t in (1, 8, 32, 64, 128, 256) for a in (1, 8, 32, 64) if a <= max(t, 1)]
        prefill = [(t, a) for t in (512, 2048) for a in (1, 8)]
    out = []
    for layer in LAYERS:
        for rank in (16, 64):
            out += [Case("decode", layer, rank, t, a) for t, a in decode]
            out += [Case("prefill", layer, rank, t, a) for t, a in prefill]
    return out


def zipf_slots(num_tokens: int, num_adapters: int, gen: torch.Generator) -> torch.Tensor:
    """Adapter slot of each token, P(slot i) ~ 1 / (i + 1), in random order."""
    weights = 1.0 / torch.arange(1, num_adapters + 1, dtype=torch.float64)
    return torch.multinomial(weights, num_tokens, replacement=True, generator=gen)


def loop_over_adapters(out, x, lora_a, lora_b, token_lora, scales) -> torch.Tensor:
    for slot in torch.unique(token_lora).tolist():
        if slot < 0:
            continue
        rows = (token_lora == slot).nonzero(as_tuple=True)[0]
        delta = (x[rows] @ lora_a[slot].T) @ lora_b[slot].T * scales[slot]
        out.index_add_(0, rows, delta.to(out.dtype))
    return out


def gathered_bmm(out, x, lora_a, lora_b, token_lora, scales) -> torch.Tensor:
    slots = token_lora.clamp(min=0)
    shrunk = torch.bmm(lora_a[slots], x.unsqueeze(2))  # [T, R, 1]
    delta = torch.bmm(lora_b[slots], shrunk).squeeze(2) * scales[slots, None]  # [T, N]
    return out.add_((delta * (token_lora >= 0)[:, None]).to(out.dtype))


def run_case(case: Case, device: torch.device, dtype: torch.dtype, quick: bool) -> Result:
    gen = torch.Generator().manual_seed(case.num_tokens * 131 + case.num_adapters)
    hidden_in, hidden_out = LAYERS[case.layer]
    T, L, R = case.num_tokens, case.num_adapters, case.rank
    x = (torch.randn(T, hidden_in, generator=gen)).to(device, dtype)
    base = torch.randn(T, hidden_out, generator=gen).to(device, dtype)
    lora_a = (torch.randn(L, R, hidden_in, generator=gen) / hidden_in**0.5).to(device, dtype)
    lora_b = (torch.randn(L, hidden_out, R, generator=gen) / R**0.5).to(device, dtype)
    token_lora = zipf_slots(T, L, gen).to(device)
    scales = torch.full((L,), 2.0, device=device)
    meta = kernels.prepare_lora_batch(token_lora, num_slots=L)
    present = int((meta.slot_counts > 0).sum())
    size = x.element_size()
    moved = size * (T * hidden_in + present * R * (hidden_in + hidden_out) + 2 * T * hidden_out)
    result = Result(case, str(dtype).removeprefix("torch."), moved, present)

    out = base.clone()
    args = (x, lora_a, lora_b, token_lora, scales)
    reps = 3 if device.type == "cpu" else 20
    ours = lambda: kernels.add_lora(out, *args, meta=meta)  # noqa: E731
    result.times_us["ours"] = time_us(ours, device, reps)
    result.times_us["ours_with_prepare"] = time_us(lambda: kernels.add_lora(out, *args), device, reps)
    if device.type == "cuda":
        result.times_us["ours_graph"] = graph_time_us(ours, reps)
    result.times_us["loop"] = time_us(lambda: loop_over_adapters(out, *args), device, reps)
    if T * R * (hidden_in + hidden_out) * size <= (MAX_GATHER_BYTES if device.type == "cuda" else 256 << 20):
        result.times_us["bmm"] = time_us(lambda: gathered_bmm(out, *args), device, reps)
    if T <= (16 if quick or device.type == "cpu" else 64):
        result.times_us["reference"] = time_us(lambda: reference.add_lora(out, *args), device, 1)

    ours_out = kernels.add_lora(base.clone(), *args, meta=meta).float()
    loop_out = loop_over_adapters(base.clone(), *args).float()
    result.max_abs_err_vs_loop = float((ours_out - loop_out).abs().max())
    return result


# Decode shapes for the CPU forms: the demo model's fused q|k|v (hidden 256, 8 / 4 kv heads) and
# o_proj, SmolLM2's fused gate|up, and a 7B-size q|k|v, at one rank ("uniform", the stacked
# layout) or ranks 8/16/64 in turn ("mixed", pages of 8 rows); (T tokens, D adapters) from one
# adapter to one token per adapter.
CPU_PATH_LAYERS = {"demo_qkv": (256, (256, 128, 128), 8), "demo_o": (256, (256,), 16),
                   "smollm2_gate_up": (576, (1536, 1536), 16), "7b_qkv": (4096, (4096, 1024, 1024), 16)}
CPU_PATH_BATCHES = [(32, 1), (32, 4), (32, 8), (32, 16), (32, 32), (64, 32), (96, 32), (128, 32),
                    (8, 8), (16, 4), (4, 2), (512, 8), (1024, 32)]  # the last two: prefill
CPU_PATH_RUNS = [("uniform", True), ("uniform", False), ("mixed", True)]  # (ranks, row layout)


def _cpu_pool(layer: str, num_adapters: int, ranks_kind: str, row_layout: bool, gen: torch.Generator):
    """Pages of random adapters: one page of R rows per slot (uniform) or ranks 8/16/64 in pages of 8."""
    hidden_in, widths, rank = CPU_PATH_LAYERS[layer]
    uniform = ranks_kind == "uniform"
    ranks = [rank] * num_adapters if uniform else [(8, 16, 64)[i % 3] for i in range(num_adapters)]
    page_rank = rank if uniform else kernels.PAGE_RANK
    held = [pages_for_rank(r, page_rank) for r in ranks]
    num_pages, num_slices = sum(held), len(widths)
    a = torch.randn(num_pages, num_slices, page_rank, hidden_in, generator=gen) / hidden_in**0.5
    b = torch.randn(num_pages, sum(widths), page_rank, generator=gen) / page_rank**0.5
    if row_layout:  # A stored [P, K, S, R], B [P, R, N], as the engine's CPU layers keep them
        a = a.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        b = b.transpose(1, 2).contiguous().transpose(1, 2)
    firsts = [sum(held[:slot]) for slot in range(num_adapters)]
    slot_pages = [list(range(first, first + count)) for first, count in zip(firsts, held, strict=True)]
    pages = build_adapter_pages(slot_pages, ranks, max_pages=max(held), page_rank=page_rank)
    return a, b, pages, widths


def cpu_path_times(layer: str, num_tokens: int, num_adapters: int, reps: int, *, ranks: str = "uniform",
                   row_layout: bool = True) -> dict:
    """µs per call of each forced form of the torch path, each active token on a random slot
    with every one of the D slots present."""
    gen = torch.Generator().manual_seed(num_tokens * 7 + num_adapters)
    lora_a, lora_b, pages, widths = _cpu_pool(layer, num_adapters, ranks, row_layout, gen)
    x = torch.randn(num_tokens, lora_a.shape[3], generator=gen)
    out = torch.randn(num_tokens, sum(widths), generator=gen)
    extra = torch.randint(0, num_adapters, (num_tokens,), generator=gen)
    slots = torch.cat([torch.arange(num_adapters), extra])  # every slot first, then random ones
    token_lora = slots[:num_tokens][torch.randperm(num_tokens, generator=gen)]
    scales = torch.full((len(widths), num_adapters), 2.0)
    meta = kernels.prepare_lora_batch(token_lora, num_slots=num_adapters)
    args = (out, x, lora_a, lora_b, scales, tuple(widths), meta, pages)
    times = {path: time_us(lambda p=path: torch_lora.apply_paged(*args, path=p), x.device, reps)
             for path in torch_lora.PATHS}
    weights = SlotWeights()  # the engine's CPU layers pass theirs: the grouped form runs planned
    times["planned"] = time_us(lambda: torch_lora.apply_paged(*args, path="grouped", slot_weights=weights),
                               x.device, reps)
    live = live_tokens(meta, pages)
    chosen = torch_lora.chosen_path(x, lora_a, lora_b, meta, pages)
    planned = torch_lora.chosen_path(x, lora_a, lora_b, meta, pages, planned=True)
    with_weights = {"grouped": times["planned"], "gathered": times["gathered"]}
    return {"layer": layer, "ranks": ranks, "row_layout": row_layout, "num_tokens": num_tokens,
            "num_adapters": meta.num_active_slots,
            "elements_per_token": live.elements_per_token(x.shape[1], len(widths), sum(widths)),
            "times_us": times, "chosen": chosen,
            "grouped_over_gathered": times["grouped"] / times["gathered"],
            "chosen_over_best": times[chosen] / min(times["grouped"], times["gathered"]),
            "chosen_with_slot_weights": planned,
            "chosen_with_slot_weights_over_best": with_weights[planned] / min(with_weights.values())}


def run_cpu_paths(out_dir: Path) -> int:
    rows = []
    for ranks, row_layout in CPU_PATH_RUNS:
        for layer in CPU_PATH_LAYERS:
            for num_tokens, num_adapters in CPU_PATH_BATCHES:
                reps = 20 if layer.startswith("demo") else 3
                row = cpu_path_times(layer, num_tokens, num_adapters, reps, ranks=ranks,
                                     row_layout=row_layout)
                rows.append(row)
                print(json.dumps(row | {"times_us": {k: round(v, 1) for k, v in row["times_us"].items()}}),
                      flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    worst = max(rows, key=lambda r: r["chosen_over_best"])
    worst_planned = max(rows, key=lambda r: r["chosen_with_slot_weights_over_best"])
    report = {"device": "cpu", "torch_threads": torch.get_num_threads(),
              "rule": torch_lora.choose_path.__doc__.split("Args:")[0].strip(),
              "worst_chosen_over_best": {k: worst[k] for k in ("layer", "ranks", "row_layout", "num_tokens",
                                                               "num_adapters", "chosen_over_best")},
              "worst_chosen_with_slot_weights_over_best": {
                  k: worst_planned[k] for k in ("layer", "ranks", "row_layout", "num_tokens", "num_adapters",
                                                "chosen_with_slot_weights_over_best")},
              "results": rows}
    (out_dir / "kernels-cpu-paths.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out_dir / 'kernels-cpu-paths.json'}")
    return 0


def plot(results: list[dict], left, right) -> None:
    """Decode times per method (left) and each case's fraction of peak bandwidth (right)."""
    decode = [r for r in results if r["phase"] == "decode" and r["layer"] == "qo" and r["rank"] == 16]
    labels = [f"{r['num_tokens']}/{r['num_adapters']}" for r in decode]
    for method in ("ours_graph", "ours", "loop", "bmm", "reference"):
        points = [(i, r["times_us"][method]) for i, r in enumerate(decode) if method in r["times_us"]]
        if points:
            left.plot(*zip(*points, strict=True), marker="o", label=method)
    left.set_xticks(range(len(labels)), labels, rotation=45)
    left.set(yscale="log", xlabel="tokens / adapters (decode, K=N=4096, rank 16)", ylabel="µs per call")
    left.legend()
    names = [
        f"{r['phase'][0]}{r['layer']} r{r['rank']} {r['num_tokens']}/{r['num_adapters']}" for r in results
    ]
    right.bar(range(len(results)), [r["bandwidth_fraction"] for r in results])
    right.set_xticks(range(len(results)), names, rotation=90, fontsize=6)
    right.set(ylabel="fraction of peak bandwidth (ours)")


def run_stacked(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    peak_gbps, _ = peak_bandwidth(device)
    results = []
    for case in cases(args.quick, device.type == "cuda"):
        row = run_case(case, device, dtype, args.quick).summary()
        row["bandwidth_fraction"] = row["achieved_GBps"] / peak_gbps
        results.append(row)
        print(json.dumps({k: row[k] for k in ("phase", "layer", "rank", "num_tokens", "num_adapters")}
                         | {"times_us": {k: round(v, 1) for k, v in row["times_us"].items()},
                            "bw": round(row["bandwidth_fraction"], 3)}), flush=True)
    return results


def run_paged(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    rows = []
    for case in kernels_paged.paged_cases(args.quick, device.type == "cuda"):
        row = kernels_paged.run_paged_case(case, device, dtype, zipf_slots)
        rows.append(row)
        keys = ("phase", "layer", "num_tokens", "num_adapters")
        print(json.dumps({"paged": True} | {k: row[k] for k in keys}
                         | {"times_us": {k: round(v, 1) for k, v in row["times_us"].items()},
                            "bytes_ratio": round(row["bytes_ratio"], 2),
                            "speedup": round(row["speedup_vs_stacked"], 2)}), flush=True)
    return rows


def write_report(report: dict, json_path: Path) -> None:
    """The JSON at `json_path` and one PNG next to it, a panel per section that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    sections = [key for key in ("results", "paged") if report.get(key)]
    num_panels = 2 * ("results" in sections) + ("paged" in sections)
    fig, axes = plt.subplots(1, num_panels, figsize=(7 * num_panels, 5), squeeze=False)
    panels = list(axes[0])
    title = f"on {report['device']} ({report['backend']}, {report['dtype']})"
    if "results" in sections:
        plot(report["results"], panels.pop(0), panels.pop(0))
    if "paged" in sections:
        kernels_paged.plot_paged(report["paged"], panels.pop(0), "mixed ranks 8/16/64: paged vs padded stack")
    fig.suptitle(f"add_lora {title}")
    fig.tight_layout()
    fig.savefig(json_path.with_suffix(".png"), dpi=120)
    print(f"wrote {json_path} and {json_path.with_suffix('.png')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few shapes per phase (CI, CPU)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="folder of kernels-<device>[-quick].json and .png")
    parser.add_argument("--json-out", type=Path, help="write the JSON here instead (and the PNG next to it)")
    parser.add_argument("--only", choices=("stacked", "paged"), help="run one section (default: both)")
    parser.add_argument("--cpu-paths", action="store_true", help="time the CPU path's two forms instead")
    args = parser.parse_args(argv)
    if args.cpu_paths:
        return run_cpu_paths(args.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backend = kernels.backend_for(device).name
    peak_gbps, peak_source = peak_bandwidth(device)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backend": backend,
        "note": ("Triton kernels on the GPU" if backend == "triton" else
                 "CPU: `ours` is the torch path (grouped or gathered), not Triton; "
                 "run benchmarks/gpu_check.sh on a GPU. "
                 "bandwidth_fraction is relative to a measured DRAM copy: cache-resident shapes exceed 1"),
        "dtype": str(dtype).removeprefix("torch."),
        "quick": args.quick,
        "peak_GBps": peak_gbps,
        "peak_source": peak_source,
        "results": run_stacked(args, device, dtype) if args.only != "paged" else [],
        "paged_note": kernels_paged.NOTE,
        "paged": run_paged(args, device, dtype) if args.only != "stacked" else [],
    }
    stem = f"kernels-{device.type}{'-quick' if args.quick else ''}"
    write_report(report, args.json_out or args.out / f"{stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
