"""Decode speed on a real-sized model, with and without CUDA graphs; LoRA kernel vs a per-adapter loop.

1. A random checkpoint of Llama-3.2-1B's shape (`gpu_model.LLAMA_1B`, bf16) and four rank-16
   adapters on every projection. One engine with CUDA graphs, then one without, each sized by
   measurement (its memory plan and `/info` split are reported). Per batch size 1, 8 and 32, on
   the base and with the batch spread over the adapters: the time of a decode step, from two
   runs that differ only in the number of new tokens (so the prefill and the request overheads
   cancel out), and the tokens/s it gives.
2. `add_lora` at 32 tokens x 32 adapters (K = N = 4096, rank 16, bf16) against a loop over the
   adapters present (two matmuls and an `index_add_` each, rows found once beforehand, so it has
   no host sync and can be captured): both replayed from CUDA graphs, each call on the next of
   enough weight sets to exceed 4x the L2 cache, so the weights come from HBM.

    python benchmarks/gpu_decode.py --json-out $OUT/decode.json    # + decode.png next to it
    python benchmarks/gpu_decode.py --build DIR      # only write the checkpoint and adapters to DIR
    python benchmarks/gpu_decode.py --json-out ... --model-root DIR     # use them (gpu_check.sh
                                                     # builds them while the tests run)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` when run as a script
from benchmarks.gpu_model import LLAMA_1B, TINY, Shape, build_adapters, build_model  # noqa: E402
from benchmarks.gpu_report import Report, device_facts  # noqa: E402
from benchmarks.kernel_timing import peak_bandwidth, time_us  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (1, 8, 32)
SHAPES = {"llama-1b": LLAMA_1B, "tiny": TINY}  # tiny: a dry run of the script (on a CPU too)
PROMPT_TOKENS = 32
SHORT, LONG = 8, 72  # new tokens of the two runs: LONG - SHORT decode steps apart


def decode_speed(model_dir: Path, adapters: dict[str, Path], graphs: bool) -> dict[str, Any]:
    from lorafleet.runtime.engine import Engine

    log: list[str] = []
    began = time.perf_counter()
    on_cuda = torch.cuda.is_available()
    engine = Engine.from_pretrained(model_dir, adapters={k: str(v) for k, v in adapters.items()},
                                    dtype="bfloat16" if on_cuda else "float32",
                                    cuda_graphs=graphs if on_cuda else None, max_total_tokens=2048,
                                    max_batch_size=64, max_loaded_adapters=8, max_lora_rank=16,
                                    progress=log.append)
    result: dict[str, Any] = {"start_s": round(time.perf_counter() - began, 1),
                              "memory": dataclasses.asdict(engine.info.memory),
                              "num_kv_blocks": engine.info.num_kv_blocks,
                              "log": [line for line in log if line.startswith(("memory", "KV", "warmed"))]}
    names = [None, *adapters]
    with engine:
        _timed_run(engine, names, 2, True, 4)  # first requests: pay any lazy set-up outside the figures
        for mixed in (False, True):
            for batch in BATCHES:
                short = _timed_run(engine, names, batch, mixed, SHORT)
                long = _timed_run(engine, names, batch, mixed, LONG)
                step = max(long - short, 1e-9) / (LONG - SHORT)
                result[f"{'lora' if mixed else 'base'}_b{batch}"] = {
                    "ms_per_step": round(step * 1e3, 3), "tokens_per_s": round(batch / step, 1)}
        graphs_used = engine.loop.runner.graphs
        result["graph_steps"] = graphs_used.num_runs if graphs_used else 0
        result["graph_bytes"] = graphs_used.graph_bytes if graphs_used else 0
    del engine, graphs_used  # free the KV pool and the graphs before the next engine
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return result


def _timed_run(engine: Any, names: list[str | None], batch: int, mixed: bool, new_tokens: int) -> float:
    """Seconds to generate `new_tokens` for `batch` requests of PROMPT_TOKENS tokens."""
    from lorafleet.runtime.engine import GenerationRequest, SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    requests = [GenerationRequest([(7 * i + j) % 1000 + 4 for j in range(PROMPT_TOKENS)], params,
                                  adapter_id=names[i % len(names)] if mixed else None) for i in range(batch)]
    began = time.perf_counter()
    engine.generate(requests)
    return time.perf_counter() - began


def speedups(graphs: dict[str, Any] | None, eager: dict[str, Any] | None) -> dict[str, Any]:
    if not graphs or not eager:
        return {}
    return {key: round(eager[key]["ms_per_step"] / graphs[key]["ms_per_step"], 2)
            for key in graphs if key.startswith(("base_", "lora_")) and key in eager}


def lora_vs_loop(tokens: int = 32, num_adapters: int = 32, rank: int = 16,
                 hidden: int = 4096) -> dict[str, Any]:
    from lorafleet import kernels

    device, dtype = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator().manual_seed(3)
    set_bytes = num_adapters * rank * 2 * hidden * 2
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    num_sets = max(2, -(-4 * l2 // set_bytes))
    sets = [((torch.randn(num_adapters, rank, hidden, generator=gen) / 64).to(device, dtype),
             (torch.randn(num_adapters, hidden, rank, generator=gen) / 4).to(device, dtype))
            for _ in range(num_sets)]
    x = torch.randn(tokens, hidden, generator=gen).to(device, dtype)
    out = torch.zeros(tokens, hidden, device=device, dtype=dtype)
    token_lora = torch.randperm(num_adapters, generator=gen)[:tokens].to(device)
    scales = torch.full((num_adapters,), 2.0, device=device)
    meta = kernels.prepare_lora_batch(token_lora, num_adapters)
    present = sorted(set(token_lora.tolist()))
    rows = {slot: (token_lora == slot).nonzero(as_tuple=True)[0] for slot in present}  # found once

    def ours(i: int) -> None:
        kernels.add_lora(out, x, *sets[i], token_lora, scales, meta=meta)

    def loop(i: int) -> None:
        lora_a, lora_b = sets[i]
        for slot in present:
            delta = (x[rows[slot]] @ lora_a[slot].T) @ lora_b[slot].T * scales[slot]
            out.index_add_(0, rows[slot], delta.to(dtype))

    times = {name: _graph_us_per_call(fn, num_sets) for name, fn in (("ours", ours), ("loop", loop))}
    out.zero_()
    ours(0)
    mine = out.clone()
    out.zero_()
    loop(0)
    moved = 2 * (tokens * hidden + len(present) * rank * 2 * hidden + 2 * tokens * hidden)
    peak, source = peak_bandwidth(device)
    return {"tokens": tokens, "adapters": num_adapters, "rank": rank, "hidden": hidden,
            "weight_sets": num_sets,
            "us_per_call": {k: round(v, 2) for k, v in times.items()},
            "speedup_vs_loop": round(times["loop"] / times["ours"], 2),
            "ours_GBps": round(moved / times["ours"] / 1e3, 1),
            "ours_fraction_of_peak": round(moved / times["ours"] / 1e3 / peak, 3), "peak": source,
            "max_abs_diff_vs_loop": float((mine.float() - out.float()).abs().max())}


def _graph_us_per_call(fn: Any, num_sets: int) -> float:
    """One call per weight set, all captured in one graph; µs per call of its replays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(0)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(num_sets):
            fn(i)
    return time_us(graph.replay, torch.device("cuda"), 5) / num_sets


def build(root: Path, shape: Shape = LLAMA_1B) -> dict[str, Any]:
    """The checkpoint in root/model and four rank-16 adapters in root/a0..a3."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = build_model(root / "model", shape, device=device)
    adapters = build_adapters(root, model_dir, shape, count=4, rank=16)
    return {"shape": dataclasses.asdict(shape), "dir": str(model_dir),
            "adapters": {k: str(v) for k, v in adapters.items()}}


def prebuilt(root: Path) -> dict[str, Any]:
    adapters = sorted(p for p in root.glob("a*") if (p / "adapter_config.json").is_file())
    if not (root / "model" / "config.json").is_file() or not adapters:
        raise FileNotFoundError(f"{root}: no checkpoint built there (gpu_decode.py --build {root})")
    return {"dir": str(root / "model"), "adapters": {p.name: str(p) for p in adapters}, "prebuilt": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--build", type=Path, help="only build the checkpoint and adapters there")
    parser.add_argument("--model-root", type=Path, help="a folder --build wrote")
    parser.add_argument("--shape", choices=SHAPES, default="llama-1b")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if args.build is not None:
        print(build(args.build, shape))
        return 0
    report = Report("decode")
    report.data["shape"] = args.shape
    report.section("env", device_facts)
    report.section("lora_vs_loop", lora_vs_loop)
    root = args.model_root or Path(tempfile.mkdtemp(prefix="lf_gpu_decode_"))
    built = report.section("model", lambda: prebuilt(root) if args.model_root else build(root, shape))
    if built:
        model_dir, adapters = Path(built["dir"]), {k: Path(v) for k, v in built["adapters"].items()}
        graphs = report.section("decode_graphs", lambda: decode_speed(model_dir, adapters, True))
        eager = report.section("decode_eager", lambda: decode_speed(model_dir, adapters, False))
        report.section("graph_speedup", lambda: speedups(graphs, eager))
    path = args.json_out or RESULTS / "gpu-decode.json"
    report.write(path)
    plot(report.data, path.with_suffix(".png"))
    return 0 if report.ok else 1


def plot(data: dict[str, Any], path: Path) -> None:
    """ms per decode step by batch, with and without CUDA graphs, base and adapters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, kind in zip(axes, ("base", "lora"), strict=True):
        for name, label in (("decode_graphs", "CUDA graphs"), ("decode_eager", "eager")):
            section = data.get(name) or {}
            points = [(b, section[f"{kind}_b{b}"]["ms_per_step"]) for b in BATCHES
                      if f"{kind}_b{b}" in section]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=label)
        title = "every request on the base" if kind == "base" else "spread over the base and 4 adapters"
        axis.set(xscale="log", xlabel="batch (sequences)", title=title)
        axis.legend()
    axes[0].set_ylabel("ms per decode step")
    gpu = (data.get("env") or {}).get("gpu")
    fig.suptitle(f"decode on {gpu or 'cpu'} ({data.get('shape')} shape, {'bf16' if gpu else 'fp32'})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
