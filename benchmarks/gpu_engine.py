"""The engine on CUDA against the engine on the CPU, on the same tiny model (`gpu_check.sh` runs it).

Covers what `../shared/gpu/gpu_smoke.py` checks — the Triton LoRA kernels against their reference
in fp16/bf16/fp32, the engine on CUDA vs the CPU with mixed adapters in fp32 (greedy tokens agree)
and bf16 (first tokens mostly agree), seeded sampling repeating, an adapter changing the output —
and what issue 17 adds: decode from CUDA graphs against eager decode, prefill logits CUDA vs CPU,
no Triton compilation while serving once the engine has warmed up, the memory split of `/info`.

    python benchmarks/gpu_engine.py --json-out $OUT/engine.json
    python benchmarks/gpu_engine.py --device cpu      # a dry run of the script on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` when run as a script
from benchmarks.gpu_model import TINY, build_adapters, build_model  # noqa: E402
from benchmarks.gpu_report import Report, compiled_variants, device_facts, synchronize  # noqa: E402

# gpu_smoke's prompts: lengths 2..300 (the 300-token one is chunked at 320 prefill tokens), a mix of
# the base and four adapters; prompts 8 and 9 are equal, on the base and on a0
LENGTHS = [5, 17, 40, 300, 9, 64, 120, 2, 12, 12]
PROMPTS = [[(7 * i + 3 * j) % 500 + 4 for j in range(n)] for i, n in enumerate(LENGTHS)]
PROMPTS[9] = PROMPTS[8]
NAMES = [None, "a0", "a1", "a2", "a3", None, "a1", "a0", None, "a0"]
NEW_TOKENS = 24
# name -> (device, dtype, CUDA graphs)
ENGINES = {"cpu_fp32": ("cpu", "float32", False), "cuda_fp32_eager": ("cuda", "float32", False),
           "cuda_fp32_graphs": ("cuda", "float32", True), "cuda_bf16_graphs": ("cuda", "bfloat16", True)}


def kernels_vs_reference(device: str) -> dict[str, Any]:
    """gpu_smoke's kernel section: add_lora_sliced against the per-token reference."""
    from lorafleet import kernels
    from lorafleet.kernels import reference

    results: dict[str, Any] = {"backend": kernels.backend_for(torch.device(device)).name}
    gen = torch.Generator().manual_seed(0)
    cases = [("decode_qkv_32x32", 32, 4096, (4096, 1024, 1024), 16, 32, 0),
             ("some_rows_-1", 24, 1000, (300,), 8, 5, -1),
             ("prefill_T300_qkv", 300, 512, (256, 128, 128), 16, 4, -1)]
    for dtype, tol in ((torch.float16, 3e-3), (torch.bfloat16, 2e-2), (torch.float32, 1e-4)):
        for name, tokens, hidden, widths, rank, slots, lowest in cases:
            key = f"{name}/{str(dtype).removeprefix('torch.')}"
            token_lora = torch.randint(lowest, slots, (tokens,), generator=gen).to(device)
            x = torch.randn(tokens, hidden, generator=gen).to(device, dtype)
            base = torch.randn(tokens, sum(widths), generator=gen).to(device, dtype)
            lora_a = torch.randn(slots, len(widths), rank, hidden, generator=gen) / hidden**0.5
            lora_a = lora_a.to(device, dtype)
            lora_b = (torch.randn(slots, sum(widths), rank, generator=gen) / rank**0.5).to(device, dtype)
            scales = (0.5 + torch.rand(len(widths), slots, generator=gen)).to(device)
            args = (x, lora_a, lora_b, token_lora, scales)
            try:
                got = kernels.add_lora_sliced(base.clone(), *args, slice_widths=widths)
                expected = reference.add_lora_sliced(base.clone(), *args, widths)
                scaled = (got.float() - expected.float()).abs() / (tol + tol * expected.float().abs())
                err = float(scaled.max())
                untouched = bool(torch.equal(got[token_lora < 0], base[token_lora < 0]))
                results[key] = {"err_over_tol": round(err, 3), "ok": err <= 1 and untouched}
            except Exception as e:  # e.g. OutOfResources: recorded, the other cases still run
                results[key] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
    results["ok"] = all(v["ok"] for v in results.values() if isinstance(v, dict))
    return results


def prefill_logits(engine: Any, ids: list[int], adapter: str | None) -> torch.Tensor:
    """Logits of every prompt position through the engine's runner (engine not started)."""
    from lorafleet.runtime.engine.scheduler import ScheduledBatch, ScheduledSeq
    from lorafleet.runtime.engine.sequence import Sequence, SequenceStatus
    from lorafleet.runtime.types import SamplingParams

    seq = Sequence(10**6, list(ids), len(ids), 1, SamplingParams(), adapter_id=adapter,
                   status=SequenceStatus.RUNNING)
    if adapter is not None:
        residence = engine.loop.scheduler.adapters.residence(engine.adapters.store.current(adapter).key)
        seq.adapter_slot = residence.slot
    engine.loop.scheduler.block_manager.allocate(seq, len(ids))
    try:
        out = engine.loop.runner.execute(ScheduledBatch([ScheduledSeq(seq, len(ids))]), {seq.seq_id})
        return out.prompt_logits[seq.seq_id][1].logits().cpu()
    finally:
        engine.loop.scheduler.block_manager.free(seq)


def run_engine(fixture: tuple[Path, dict[str, Path]], device: str, dtype: str, graphs: bool,
               kept: dict[str, Any]) -> dict[str, Any]:
    from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams

    model_dir, adapters = fixture
    began = time.perf_counter()
    engine = Engine.from_pretrained(
        model_dir, adapters={k: str(v) for k, v in adapters.items()}, device=device, dtype=dtype,
        max_input_tokens=400, max_total_tokens=448, max_batch_prefill_tokens=320, num_kv_blocks=512,
        max_loaded_adapters=4, max_lora_rank=16, max_batch_size=32,
        cuda_graphs=graphs if device == "cuda" else None, progress=lambda _: None)
    start_seconds = time.perf_counter() - began
    on_cuda = device == "cuda"
    compiled_before = compiled_variants() if on_cuda else {}  # what the warm-up compiled
    with torch.cuda.device(engine.config.device) if on_cuda else contextlib.nullcontext():
        kept["logits"] = prefill_logits(engine, PROMPTS[3], "a1")
    greedy = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    with engine:
        began = time.perf_counter()
        results = engine.generate([GenerationRequest(p, greedy, adapter_id=a)
                                   for p, a in zip(PROMPTS, NAMES, strict=True)])
        wall = time.perf_counter() - began
        seeded = SamplingParams(max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9, seed=7)
        seeded_request = GenerationRequest(PROMPTS[1], seeded, adapter_id="a1")
        again = [[t.id for t in engine.generate([seeded_request])[0].tokens] for _ in range(2)]
        many = [GenerationRequest(PROMPTS[i % 8][:16], SamplingParams(max_new_tokens=32, ignore_eos=True),
                                  adapter_id=f"a{i % 4}") for i in range(32)]
        began = time.perf_counter()
        engine.generate(many)
        busy = time.perf_counter() - began
    kept["tokens"] = tokens = [[t.id for t in r.tokens] for r in results]
    compiled_after = compiled_variants() if on_cuda else {}
    runner = engine.loop.runner
    return {
        "start_s": round(start_seconds, 1), "tokens_per_s_10req": round(sum(map(len, tokens)) / wall, 1),
        "ms_per_step_32req": round(busy / 32 * 1e3, 2), "seeded_sampling_repeats": again[0] == again[1],
        "lora_changes_output": tokens[8] != tokens[9],
        "graph_steps": runner.graphs.num_runs if runner.graphs else 0,
        "graph_bytes": runner.graphs.graph_bytes if runner.graphs else 0,
        "compiled_variants": compiled_after,
        "compiled_while_serving": {k: (compiled_after[k] or 0) - (compiled_before.get(k) or 0)
                                   for k in compiled_after},
        "memory": dataclasses.asdict(engine.info.memory),
    }


def compare(kept: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Greedy tokens and prefill logits of each CUDA engine against the CPU's (fp32)."""
    reference = kept["cpu_fp32"]

    def fraction(values: list[bool]) -> float:
        return round(sum(values) / max(1, len(values)), 3)

    out: dict[str, Any] = {}
    for name in ENGINES:
        if name == "cpu_fp32" or "tokens" not in kept.get(name, {}):
            continue
        tokens = kept[name]["tokens"]
        rows = list(zip(reference["tokens"], tokens, strict=True))
        pairs = [(a, b) for ref, got in rows for a, b in zip(ref, got, strict=True)]
        logits_diff = (kept[name]["logits"].float() - reference["logits"]).abs().max()
        out[name] = {"token_match": fraction([a == b for a, b in pairs]),
                     "first_token_match": fraction([ref[0] == got[0] for ref, got in rows]),
                     "logits_max_abs_diff": float(logits_diff)}
    if all("tokens" in kept.get(name, {}) for name in ("cuda_fp32_eager", "cuda_fp32_graphs")):
        eager, graphs = kept["cuda_fp32_eager"]["tokens"], kept["cuda_fp32_graphs"]["tokens"]
        same = [a == b for e, g in zip(eager, graphs, strict=True) for a, b in zip(e, g, strict=True)]
        out["graphs_vs_eager_token_match"] = fraction(same)
    checks = [out.get("cuda_fp32_eager", {}).get("token_match", 0) >= 0.97,
              out.get("cuda_fp32_graphs", {}).get("token_match", 0) >= 0.97,
              out.get("cuda_bf16_graphs", {}).get("first_token_match", 0) >= 0.7,
              out.get("cuda_fp32_eager", {}).get("logits_max_abs_diff", 1) <= 1e-3]
    return out | {"ok": all(checks)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run (the CUDA engines run on the CPU)")
    args = parser.parse_args()
    report = Report("engine")
    report.section("env", device_facts)
    report.section("kernels", lambda: kernels_vs_reference(args.device))
    root = Path(tempfile.mkdtemp(prefix="lf_gpu_engine_"))
    fixture = report.section("fixture", lambda: (build_model(root / "model", TINY),
                                                 build_adapters(root, root / "model", TINY, count=4, rank=8)))
    kept: dict[str, dict[str, Any]] = {}
    for name, (device, dtype, graphs) in ENGINES.items():
        kept[name] = {}
        device = "cpu" if args.device == "cpu" else device
        report.section(f"engine_{name}", lambda d=device, t=dtype, g=graphs, k=kept[name]:
                       run_engine(fixture, d, t, g, k))
        synchronize()
    report.section("compare", lambda: compare(kept))
    for name in ("cuda_fp32_graphs", "cuda_bf16_graphs"):  # warmed up: serving compiles nothing
        section = report.data.get(f"engine_{name}")
        if isinstance(section, dict) and args.device != "cpu":
            section["ok"] = not any(section["compiled_while_serving"].values())
    report.write(args.json_out)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
