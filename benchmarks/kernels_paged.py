"""The paged case of `benchmarks/kernels.py`: mixed ranks 8/16/64 in pages vs the padded stack.

Adapters of ranks 8, 16 and 64 (in turn) are stored two ways and run on the same batch (tokens
Zipf-distributed over the adapters, as in the stacked benchmark):

    paged    pages of 8 rank rows, each adapter ceil(r / 8) pages, read up to its true rank
             (`backend.apply_paged`, what the engine calls per layer)
    stacked  [L, S, 64, K] / [L, N, 64], every adapter zero-padded to rank 64 (`backend.apply`)

and the bytes each must read (x, the A and B rows of the adapters present, out read + write):
the stacked form reads 64 rows per adapter, the paged form its rank's. On CUDA both run the
Triton kernels, also replayed from CUDA graphs (graphs vs graphs); on a CPU the torch path in
the engine's row layout, fp32, each form as `torch_lora`'s rule picks it (the rows say which).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from lorafleet import kernels
from lorafleet.kernels import PAGE_RANK, build_adapter_pages, pages_for_rank, torch_lora
from lorafleet.kernels.pages import stacked_pages

from benchmarks.kernel_timing import graph_time_us, time_us

NOTE = ("adapters of ranks 8/16/64 in turn, tokens Zipf over them; paged: pages of 8 rank rows read up to "
        "each adapter's rank (backend.apply_paged); stacked: the same adapters zero-padded to rank 64 "
        "(backend.apply); bytes: x, A and B rows of the adapters present, out read + write")
RANK_CYCLE = (8, 16, 64)
STACKED_RANK = max(RANK_CYCLE)
PAGED_LAYERS = {"qkv": (4096, (4096, 1024, 1024)), "o": (4096, (4096,)), "gate_up": (4096, (14336, 14336)),
                "demo_qkv": (256, (256, 128, 128)), "demo_o": (256, (256,))}  # demo: the CPU engine's model


@dataclass(frozen=True)
class PagedCase:
    phase: str  # decode | prefill
    layer: str
    num_tokens: int
    num_adapters: int


def paged_cases(quick: bool, on_cuda: bool) -> list[PagedCase]:
    if quick:
        batches = [("decode", 32, 32), ("prefill", 512, 4)]
        layers = ["qkv"]
    else:
        batches = [("decode", 32, 32), ("decode", 64, 16), ("decode", 256, 64), ("prefill", 1024, 8)]
        # gate_up's pool is ~1 GiB in fp32: GPU only; the demo model's layers: CPU only
        layers = ["qkv", "o", "gate_up"] if on_cuda else ["qkv", "o", "demo_qkv", "demo_o"]
    return [PagedCase(phase, layer, t, d) for layer in layers for phase, t, d in batches]


@dataclass(frozen=True)
class PagedProblem:
    x: torch.Tensor  # [T, K]
    out: torch.Tensor  # [T, N]
    a_pages: torch.Tensor  # [P, S, 8, K]
    b_pages: torch.Tensor  # [P, N, 8]
    pages: kernels.AdapterPages
    a_stacked: torch.Tensor  # [L, S, 64, K]
    b_stacked: torch.Tensor  # [L, N, 64]
    scales: torch.Tensor  # [S, L]
    widths: tuple[int, ...]
    ranks: list[int]


def _weights(shape_api: tuple[int, ...], order: tuple[int, ...], device: torch.device,
             dtype: torch.dtype, row_layout: bool) -> torch.Tensor:
    """Zeros of `shape_api`; in the row layout stored in `order` and seen through the API shape."""
    if not row_layout:
        return torch.zeros(shape_api, device=device, dtype=dtype)
    stored = torch.zeros([shape_api[i] for i in order], device=device, dtype=dtype)
    return stored.permute(*[order.index(i) for i in range(len(order))])


def build_problem(case: PagedCase, device: torch.device, dtype: torch.dtype, token_lora: torch.Tensor,
                  gen: torch.Generator) -> PagedProblem:
    hidden_in, widths = PAGED_LAYERS[case.layer]
    num_slices, hidden_out, num_slots = len(widths), sum(widths), case.num_adapters
    ranks = [RANK_CYCLE[slot % len(RANK_CYCLE)] for slot in range(num_slots)]
    held = [pages_for_rank(rank) for rank in ranks]
    starts = [sum(held[:slot]) for slot in range(num_slots)]
    row_layout = device.type == "cpu"  # the CPU engine's layout: A [., K, S, R], B [., R, N]
    a_order, b_order = (0, 3, 1, 2), (0, 2, 1)
    a_stacked = _weights((num_slots, num_slices, STACKED_RANK, hidden_in), a_order, device, dtype, row_layout)
    b_stacked = _weights((num_slots, hidden_out, STACKED_RANK), b_order, device, dtype, row_layout)
    a_pages = _weights((sum(held), num_slices, PAGE_RANK, hidden_in), a_order, device, dtype, row_layout)
    b_pages = _weights((sum(held), hidden_out, PAGE_RANK), b_order, device, dtype, row_layout)
    for slot, rank in enumerate(ranks):
        a = torch.randn(num_slices, rank, hidden_in, generator=gen) / hidden_in**0.5
        b = torch.randn(hidden_out, rank, generator=gen) / rank**0.5
        a_stacked[slot, :, :rank] = a.to(device, dtype)
        b_stacked[slot, :, :rank] = b.to(device, dtype)
        for j in range(held[slot]):
            rows = slice(j * PAGE_RANK, (j + 1) * PAGE_RANK)
            a_pages[starts[slot] + j] = a[:, rows].to(device, dtype)
            b_pages[starts[slot] + j] = b[:, rows].to(device, dtype)
    slot_pages = [list(range(start, start + count)) for start, count in zip(starts, held, strict=True)]
    num_tokens = token_lora.numel()
    return PagedProblem(
        x=torch.randn(num_tokens, hidden_in, generator=gen).to(device, dtype),
        out=torch.randn(num_tokens, hidden_out, generator=gen).to(device, dtype),
        a_pages=a_pages, b_pages=b_pages,
        pages=build_adapter_pages(slot_pages, ranks, max_pages=STACKED_RANK // PAGE_RANK, device=device),
        a_stacked=a_stacked, b_stacked=b_stacked,
        scales=torch.full((num_slices, num_slots), 2.0, device=device), widths=widths, ranks=ranks,
    )


def run_paged_case(case: PagedCase, device: torch.device, dtype: torch.dtype, zipf_slots) -> dict:
    """Times and bytes of one case; `zipf_slots(T, L, gen)` draws the tokens' slots."""
    gen = torch.Generator().manual_seed(case.num_tokens * 31 + case.num_adapters)
    token_lora = zipf_slots(case.num_tokens, case.num_adapters, gen).to(device)
    problem = build_problem(case, device, dtype, token_lora, gen)
    meta = kernels.prepare_lora_batch(token_lora, num_slots=case.num_adapters)
    backend = kernels.backend_for(device)
    p = problem
    counts = meta.slot_counts.tolist()
    present = [slot for slot, count in enumerate(counts) if count > 0]
    size, hidden_in, hidden_out = p.x.element_size(), p.x.shape[1], p.out.shape[1]
    per_row = len(p.widths) * hidden_in + hidden_out  # elements of one rank row of A (all slices) and B
    edges = size * (case.num_tokens * hidden_in + 2 * case.num_tokens * hidden_out)
    bytes_paged = edges + size * per_row * sum(p.ranks[slot] for slot in present)
    bytes_stacked = edges + size * per_row * STACKED_RANK * len(present)

    out = p.out.clone()
    def paged() -> torch.Tensor:
        return backend.apply_paged(out, p.x, p.a_pages, p.b_pages, p.scales, p.widths, meta, p.pages)

    def stacked() -> torch.Tensor:
        return backend.apply(out, p.x, p.a_stacked, p.b_stacked, p.scales, p.widths, meta)

    reps = 3 if device.type == "cpu" else 20
    times = {"paged": time_us(paged, device, reps), "stacked": time_us(stacked, device, reps)}
    if device.type == "cuda":
        times["paged_graph"] = graph_time_us(paged, reps)
        times["stacked_graph"] = graph_time_us(stacked, reps)
    out.copy_(p.out)
    paged_out = paged().clone()  # one call on the original out
    out.copy_(p.out)
    stacked_out = stacked().clone()
    best = "_graph" if device.type == "cuda" else ""
    row = asdict(case) | {
        "adapters_present": len(present),
        "ranks_present": {str(r): sum(1 for s in present if p.ranks[s] == r) for r in RANK_CYCLE},
        "bytes_paged": bytes_paged,
        "bytes_stacked": bytes_stacked,
        "bytes_ratio": bytes_stacked / bytes_paged,
        "times_us": times,
        "speedup_vs_stacked": times["stacked" + best] / times["paged" + best],
        "paged_GBps": bytes_paged / times["paged" + best] / 1e3,
        "max_abs_diff": float((paged_out.float() - stacked_out.float()).abs().max()),
    }
    if backend.name == "torch":  # which form the CPU path's rule ran
        stacked_placement = stacked_pages(case.num_adapters, STACKED_RANK, device)
        row["cpu_path"] = {
            "paged": torch_lora.chosen_path(p.x, p.a_pages, p.b_pages, meta, p.pages),
            "stacked": torch_lora.chosen_path(p.x, p.a_stacked, p.b_stacked, meta, stacked_placement),
        }
    return row


def plot_paged(rows: list[dict], axis, title: str) -> None:
    """Time per call of each form per case, with the bytes the stacked form reads in excess."""
    names = [f"{r['phase'][0]}{r['layer']} {r['num_tokens']}/{r['num_adapters']}" for r in rows]
    methods = [m for m in ("paged", "stacked", "paged_graph", "stacked_graph") if m in rows[0]["times_us"]]
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        axis.bar([x + i * width for x in range(len(rows))], [r["times_us"][method] for r in rows], width,
                 label=method)
    for x, r in enumerate(rows):  # above the stacked bar: how many more bytes it reads
        axis.annotate(f"{r['bytes_ratio']:.1f}x bytes", (x + width, r["times_us"]["stacked"] * 1.05),
                      fontsize=7, ha="center")
    axis.set_xticks(range(len(rows)), names, rotation=45, fontsize=7)
    axis.set(yscale="log", ylabel="µs per call", title=title)
    axis.legend(fontsize=7)


def write_plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(10, 5))
    plot_paged(rows, axis, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
