"""Benchmark of paged attention (`lorafleet.kernels.paged_decode_attention` / `_prefill_`).

On CUDA, decode at batch 1/8/32 x context 512/4k/32k on a Llama-3-8B-shaped layer (32 query
heads, 8 KV heads, head_dim 128, bf16, blocks of 16 tokens scattered over the pool):

    ours      the Triton decode kernel (split-K by rule), reading the blocks in place
    gathered  the CPU path's way (runtime/layers/attention.py): gather each sequence's blocks into
              a padded copy, then scaled_dot_product_attention with a mask (here with enable_gqa;
              the runtime passes each KV head's query heads as its rows, the same math)

Both are timed as CUDA graphs (graph vs graph: no launch gaps on either side). Each graph
replays the call over several layers of one KV pool, so that consecutive calls read different
memory and the pool exceeds 4x the L2 cache: figures come from HBM, not L2. Bandwidth = bytes of
K/V the attention must read (plus q and out) / time, as a fraction of the device's HBM peak.
The full run adds prefill (tokens/s and TFLOP/s of causal attention over the paged cache).

On a CPU it runs a small correctness and timing pass of the torch path against the reference
and the gathered baseline, and says that GPU figures need a GPU (`benchmarks/gpu_check.sh`).

    python benchmarks/attention.py [--quick] [--json-out PATH] [--cpu]

JSON lines on stdout while running; the report goes to PATH (default
benchmarks/results/attention-<device>[-quick].json) and a PNG next to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from lorafleet import kernels
from lorafleet.kernels import attention_reference

RESULTS = Path(__file__).parent / "results"
LAYER = {"num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "block_size": 16}
BATCHES, CONTEXTS = (1, 8, 32), (512, 4096, 32768)
L2_MULTIPLE = 4  # the rotated pool is at least this many times the L2 cache
MAX_LAYERS = 256  # calls captured in one graph (batch 1 x 512 tokens needs ~100 on an H100)
MAX_GATHER_BYTES = 16 << 30  # skip the gathered baseline above this copy size
GATHER_MEMORY_FACTOR = 6  # the baseline's temporaries, in units of one layer's K+V


def _sibling(name: str):  # noqa: ANN202 - a module
    """benchmarks/<name>.py, loaded by path (benchmarks/ is not a package)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"lorafleet_bench_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gathered_sdpa(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] (entries must be valid block ids)
    context_lens: torch.Tensor,  # [B]
    scale: float,
) -> torch.Tensor:  # [B, H, D]
    """The CPU path's decode: a padded gathered copy of every sequence, a masked SDPA."""
    def gather(cache: torch.Tensor) -> torch.Tensor:
        blocks = cache[block_tables.long()]  # [B, nb, bs, KVH, D]
        b, nb, bs, kvh, d = blocks.shape
        return blocks.view(b, nb * bs, kvh, d).transpose(1, 2)

    keys, values = gather(k_cache), gather(v_cache)
    key_pos = torch.arange(keys.shape[2], device=q.device)[None, :]
    mask = key_pos < context_lens[:, None]
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask[:, None, None, :],
                                         scale=scale, enable_gqa=True)
    return out.squeeze(2)


def build_pool(layers: int, batch: int, context: int, dtype: torch.dtype, device: torch.device,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv [layers, 2, num_blocks, bs, KVH, D] as the runtime stores it, block_tables [B, nb] int32
    with every sequence's blocks scattered at random over the pool)."""
    bs, kvh, d = LAYER["block_size"], LAYER["num_kv_heads"], LAYER["head_dim"]
    per_seq = math.ceil(context / bs)
    kv = torch.empty(layers, 2, batch * per_seq, bs, kvh, d, dtype=dtype, device=device).normal_()
    order = torch.randperm(batch * per_seq, generator=gen)
    tables = order.view(batch, per_seq).to(torch.int32).to(device)
    return kv, tables


def graph_us_per_call(calls: list[Callable[[], object]], replays: int) -> float:
    """µs per call: all calls captured in one CUDA graph, replayed `replays` times, CUDA events,
    median of 3 rounds. Calls run once before capture (compilation, allocator warm-up)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    samples = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / (replays * len(calls)))
    return statistics.median(samples)


def decode_case(batch: int, context: int, peak_gbps: float, quick: bool) -> dict | None:
    device, dtype = torch.device("cuda"), torch.bfloat16
    h, kvh, d = LAYER["num_heads"], LAYER["num_kv_heads"], LAYER["head_dim"]
    kv_bytes = 2 * batch * context * kvh * d * dtype.itemsize  # K and V of one layer
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    free, _ = torch.cuda.mem_get_info(device)
    layers = max(2, math.ceil(L2_MULTIPLE * l2 / kv_bytes))
    if kv_bytes * 2 > free * 0.6:
        return None  # does not fit this card with room for a second layer
    layers = min(layers, int(free * 0.6 // kv_bytes), MAX_LAYERS)
    gen = torch.Generator().manual_seed(batch * 7 + context)
    kv, tables = build_pool(layers, batch, context, dtype, device, gen)
    q = torch.randn(batch, h, d, generator=gen).to(device, dtype)
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    out = torch.empty_like(q)
    scale = d**-0.5

    def ours(layer: int) -> Callable[[], object]:
        k_cache, v_cache = kv[layer, 0], kv[layer, 1]
        return lambda: kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale=scale, out=out)

    def gathered(layer: int) -> Callable[[], object]:
        k_cache, v_cache = kv[layer, 0], kv[layer, 1]
        return lambda: gathered_sdpa(q, k_cache, v_cache, tables, lens, scale)

    replays = 5 if quick else 20
    row = {"batch": batch, "context": context, "layers_rotated": layers,
           "pool_GiB": round(layers * kv_bytes / 2**30, 3), "kv_bytes_per_call": kv_bytes}
    from lorafleet.kernels import attention

    config = attention.choose_decode_config(q, kv[0, 0], tables)
    row["split_partitions"] = config.num_partitions
    row["ours_us"] = graph_us_per_call([ours(i) for i in range(layers)], replays)
    moved = kv_bytes + 2 * q.numel() * dtype.itemsize
    row["ours_GBps"] = moved / row["ours_us"] / 1e3
    row["ours_fraction_of_peak"] = row["ours_GBps"] / peak_gbps
    expected = None
    # the baseline copies K and V (kv_bytes) and SDPA's math path may expand them per query head
    if kv_bytes <= MAX_GATHER_BYTES and GATHER_MEMORY_FACTOR * kv_bytes < free * 0.8 - layers * kv_bytes:
        row["gathered_us"] = graph_us_per_call([gathered(i) for i in range(min(layers, 8))], replays)
        row["speedup_vs_gathered"] = row["gathered_us"] / row["ours_us"]
        expected = gathered_sdpa(q, kv[0, 0], kv[0, 1], tables, lens, scale).float()
    ours_out = kernels.paged_decode_attention(q, kv[0, 0], kv[0, 1], tables, lens, scale=scale).float()
    if expected is not None:
        row["max_abs_err_vs_gathered"] = float((ours_out - expected).abs().max())
    return row


def prefill_case(num_seqs: int, start: int, length: int, quick: bool) -> dict:
    """One packed prefill: S chunks of `length` new tokens after `start` cached ones."""
    device, dtype = torch.device("cuda"), torch.bfloat16
    h, d = LAYER["num_heads"], LAYER["head_dim"]
    gen = torch.Generator().manual_seed(start + length)
    kv, tables = build_pool(1, num_seqs, start + length, dtype, device, gen)
    q = torch.randn(num_seqs * length, h, d, generator=gen).to(device, dtype)
    cu = torch.arange(0, num_seqs + 1, dtype=torch.int32, device=device) * length
    starts = torch.full((num_seqs,), start, dtype=torch.int32, device=device)
    call = lambda: kernels.paged_prefill_attention(  # noqa: E731
        q, kv[0, 0], kv[0, 1], cu_seqlens_q=cu, start_pos=starts, block_tables=tables, scale=d**-0.5)
    us = graph_us_per_call([call], 3 if quick else 10)
    flops = 4 * h * d * num_seqs * length * (start + (length + 1) / 2)  # QK^T and PV, causal half
    return {"num_seqs": num_seqs, "start_pos": start, "new_tokens": length, "ours_us": us,
            "tokens_per_s": num_seqs * length / us * 1e6, "TFLOPs": flops / us / 1e6}


def run_cuda(quick: bool) -> dict:
    peak_gbps, peak_source = _sibling("kernels").peak_bandwidth(torch.device("cuda"))
    decode = []
    for batch in BATCHES:
        for context in CONTEXTS:
            row = decode_case(batch, context, peak_gbps, quick)
            torch.cuda.empty_cache()  # this case's pool goes back before the next one's
            if row is not None:
                decode.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                      flush=True)
    prefill_shapes = [(1, 0, 4096)] if quick else [(1, 0, 4096), (1, 28672, 4096), (8, 0, 512)]
    prefill = []
    for shape in prefill_shapes:
        prefill.append(prefill_case(*shape, quick))
        print(json.dumps(prefill[-1]), flush=True)
    return {"device": torch.cuda.get_device_name(), "backend": kernels.backend_for(torch.device("cuda")).name,
            "dtype": "bfloat16", "layer": LAYER, "peak_GBps": peak_gbps, "peak_source": peak_source,
            "timing": "CUDA graphs on both sides, CUDA events, median of 3 rounds; KV pool rotated over "
                      f">= {L2_MULTIPLE}x L2", "decode": decode, "prefill": prefill}


def run_cpu(quick: bool) -> dict:
    """The torch path vs the reference (error) and vs the gathered baseline (time), fp32, one
    thread (the CPU machines here are shared: more threads measure the neighbours)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cases = [(1, 128), (4, 512)] if quick else [(1, 128), (4, 512), (8, 2048), (32, 1024)]
    rows = []
    h, kvh, d, bs = 8, 2, 64, 16
    for batch, context in cases:
        gen = torch.Generator().manual_seed(batch + context)
        per_seq = math.ceil(context / bs)
        kv = torch.randn(2, batch * per_seq, bs, kvh, d, generator=gen)
        tables = torch.randperm(batch * per_seq, generator=gen).view(batch, per_seq).to(torch.int32)
        lens = torch.randint(context // 2, context + 1, (batch,), generator=gen, dtype=torch.int32)
        q = torch.randn(batch, h, d, generator=gen)
        args = (q, kv[0], kv[1], tables, lens)
        ours = kernels.paged_decode_attention(*args, scale=d**-0.5)
        ours_call = lambda args=args: kernels.paged_decode_attention(*args, scale=d**-0.5)  # noqa: E731
        gathered_call = lambda args=args: gathered_sdpa(*args, d**-0.5)  # noqa: E731
        checked = min(batch, 2)  # the reference is slow: one token, one head at a time
        expected = attention_reference.paged_decode_attention(q[:checked], kv[0], kv[1], tables[:checked],
                                                              lens[:checked], scale=d**-0.5)
        rows.append({"batch": batch, "context": context,
                     "ours_us": _cpu_us(ours_call), "gathered_us": _cpu_us(gathered_call),
                     "max_abs_err_vs_reference": float((ours[:checked] - expected).abs().max())})
        print(json.dumps(rows[-1]), flush=True)
    return {"device": "cpu", "backend": kernels.backend_for(torch.device("cpu")).name, "dtype": "float32",
            "layer": {"num_heads": h, "num_kv_heads": kvh, "head_dim": d, "block_size": bs},
            "torch_threads": 1, "threads_available": threads,
            "note": "CPU: `ours` is the torch path (lorafleet.kernels.torch_attention), not Triton; decode "
                    "bandwidth against HBM needs a GPU: run benchmarks/gpu_check.sh on one.",
            "decode": rows, "prefill": []}


def _cpu_us(fn: Callable[[], object], reps: int = 3) -> float:
    fn()
    best = math.inf
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - began) * 1e6 / reps)
    return best


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["decode"]
    labels = [f"B{r['batch']}\n{r['context']}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    x = range(len(rows))
    for offset, key, name in ((-0.2, "ours_us", "ours"), (0.2, "gathered_us", "gathered + SDPA")):
        left.bar([i + offset for i in x], [r.get(key, 0) for r in rows], width=0.4, label=name)
    left.set_xticks(list(x), labels)
    left.set(yscale="log", ylabel="µs per call", title="decode attention, one layer")
    left.legend()
    if "ours_fraction_of_peak" in (rows[0] if rows else {}):
        right.bar(list(x), [r["ours_fraction_of_peak"] for r in rows])
        right.set(ylabel="fraction of HBM peak (ours)", ylim=(0, 1))
    else:
        right.bar(list(x), [r["max_abs_err_vs_reference"] for r in rows])
        right.set(ylabel="max |ours - reference|", yscale="log")
    right.set_xticks(list(x), labels)
    fig.suptitle(f"paged attention on {report['device']} ({report['backend']}, {report['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer replays and prefill shapes (< 2 min on a GPU)")
    parser.add_argument("--json-out", type=Path, help="report path (default benchmarks/results/...)")
    parser.add_argument("--cpu", action="store_true", help="the CPU pass even where CUDA is available")
    args = parser.parse_args(argv)
    on_cuda = torch.cuda.is_available() and not args.cpu
    report = run_cuda(args.quick) if on_cuda else run_cpu(args.quick)
    report["quick"] = args.quick
    stem = f"attention-{'cuda' if on_cuda else 'cpu'}{'-quick' if args.quick else ''}"
    path = args.json_out or RESULTS / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    plot(report, path.with_suffix(".png"))
    print(json.dumps({"wrote": str(path), "plot": str(path.with_suffix(".png"))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
