"""Synthetic steps run at start: profiling (what the largest steps allocate) and kernel warm-up.

Every synthetic sequence's block table lists only the runner's null block, so these steps read
and write nothing the block manager owns; their tokens are id 0. They go through the runner's
real `execute` and the real sampler, so what is measured and compiled is what serving runs.

- `profile_steps`: the largest mixed step (max_batch_prefill_tokens prompt tokens in one chunk,
  prompt log-probs asked, beside max_batch_size - 1 decode rows at the longest context) and the
  largest decode step; every row samples with every warper and penalty and asks for top tokens,
  and every row uses an adapter slot placed at max_lora_rank in every group (zero weights), so the
  LoRA kernels' temporaries are counted too.
- `warm_up_steps`: small steps whose shapes cover the variants the Triton kernels are compiled
  for (one chunk or several, decode tables of the narrowest and the widest width, with and without
  LoRA), so the first requests do not wait for the compiler; decode graphs are warmed by their
  capture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator

import torch
from lorafleet.kernels import pages_for_rank
from lorafleet.runtime.engine import memory, setup
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.graph_runner import batch_buckets
from lorafleet.runtime.engine.kernel_inputs import TABLE_WIDTH_MULTIPLE
from lorafleet.runtime.engine.memory import Activations
from lorafleet.runtime.engine.model_runner import ModelRunner
from lorafleet.runtime.engine.scheduler import ScheduledBatch, ScheduledSeq
from lorafleet.runtime.engine.sequence import Sequence, SequenceStatus
from lorafleet.runtime.layers.sampler import SampleRequest, sample
from lorafleet.runtime.models.decoder import DecoderModel
from lorafleet.runtime.types import SamplingParams

WARPED = SamplingParams(do_sample=True, temperature=0.7, top_k=50, top_p=0.9, typical_p=0.95,
                        repetition_penalty=1.1, frequency_penalty=0.1, top_n_tokens=5)
GREEDY = SamplingParams()
PROFILE_SLOT = 0  # the adapter slot the profiling rows use (the profiling runner is thrown away)


def synthetic(seq_id: int, context: int, new_tokens: int, runner: ModelRunner, *,
              adapter: bool, params: SamplingParams) -> ScheduledSeq:
    """A running sequence with `context` tokens cached on the null block and `new_tokens` to compute."""
    total = context + new_tokens
    seq = Sequence(seq_id=seq_id, token_ids=[0] * total, num_prompt_tokens=total if context == 0 else context,
                   max_new_tokens=1, params=params, status=SequenceStatus.RUNNING,
                   adapter_id="warmup" if adapter else None, adapter_slot=PROFILE_SLOT if adapter else -1)
    seq.num_computed = context
    seq.block_table = [runner.null_block] * -(-total // runner.config.block_size)
    return ScheduledSeq(seq, new_tokens)


def run_step(runner: ModelRunner, items: list[ScheduledSeq], *, prompt_logprobs: bool = False) -> None:
    """One step through the runner and the sampler, as the loop runs it."""
    wants = {items[-1].seq.seq_id} if prompt_logprobs else set()
    out = runner.execute(ScheduledBatch(items), wants)
    for _, rows in out.prompt_logits.values():
        rows.logprobs([0] * rows.hidden.shape[0])
    requests = [SampleRequest(s.params, s.token_ids, torch.Generator(runner.device) if s.params.do_sample
                              else None) for s in out.sample_seqs]
    if requests:
        sample(out.sample_logits, requests)


def profile_steps(runner: ModelRunner) -> list[tuple[list[ScheduledSeq], bool]]:
    """(items, prompt log-probs asked) of the two profiling steps (module docstring)."""
    config = runner.config
    longest = config.max_total_tokens - 1  # the context of a decode row about to write its last token
    adapter = config.max_loaded_adapters > 0
    decodes = [synthetic(i, longest, 1, runner, adapter=adapter, params=WARPED)
               for i in range(config.max_batch_size)]
    prefill = synthetic(config.max_batch_size, 0, config.max_batch_prefill_tokens, runner,
                        adapter=adapter, params=WARPED)
    return [(decodes[: config.max_batch_size - 1] + [prefill], True), (decodes, False)]


@contextlib.contextmanager
def profiling_adapter(runner: ModelRunner) -> Iterator[None]:
    """Slot `PROFILE_SLOT` placed at max_lora_rank in every group's first pages (zeros) meanwhile."""
    tables = runner.page_tables
    if runner.config.max_loaded_adapters == 0:
        yield
        return
    assert not any(tables.targets(g, PROFILE_SLOT) for g in tables.groups), "profile before placing adapters"
    pages = tuple(range(pages_for_rank(runner.config.max_lora_rank)))
    tables.assign(PROFILE_SLOT, dict.fromkeys(tables.groups, pages),
                  dict.fromkeys(tables.groups, runner.config.max_lora_rank))
    try:
        yield
    finally:
        tables.clear([PROFILE_SLOT])


def measure_activations(runner: ModelRunner) -> Activations:
    """Peak allocator segments of each profiling step beyond what was reserved before it (CUDA)."""
    device = runner.device
    peaks = []
    with profiling_adapter(runner):
        for items, prompt_logprobs in profile_steps(runner):
            gc.collect()
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            baseline = torch.cuda.memory_reserved(device)
            torch.cuda.reset_peak_memory_stats(device)
            run_step(runner, items, prompt_logprobs=prompt_logprobs)
            torch.cuda.synchronize(device)
            peaks.append(max(0, torch.cuda.max_memory_reserved(device) - baseline))
    gc.collect()
    torch.cuda.empty_cache()
    return Activations(mixed=peaks[0], decode=peaks[1])


def plan_memory(config: EngineConfig, model: DecoderModel) -> memory.MemoryPlan:
    """Runs the profiling steps with a one-block KV pool (CUDA) and plans the real pool around them."""
    probe = ModelRunner(dataclasses.replace(config, num_kv_blocks=1), model)
    with torch.cuda.device(config.device):  # Triton launches on the current device
        activations = measure_activations(probe)
    del probe  # its KV pool is freed before the free memory is read
    torch.cuda.empty_cache()
    per_block = setup.kv_bytes_per_block(config.model, config.block_size, config.dtype)
    num_graphs = 0
    if config.cuda_graphs:
        num_graphs = len(batch_buckets(config.max_batch_size)) * (2 if config.max_loaded_adapters else 1)
    return memory.plan_memory(memory.read_device_memory(config.device), activations,
                              kv_bytes_per_block=per_block, num_graphs=num_graphs)


def warm_up_steps(runner: ModelRunner) -> list[list[ScheduledSeq]]:
    """Small steps covering the kernels' compiled variants (module docstring)."""
    config = runner.config
    widest = runner.max_blocks_per_seq * config.block_size - 1
    narrow = min(widest, TABLE_WIDTH_MULTIPLE * config.block_size - 1)
    steps = []
    for adapter in ((False, True) if config.max_loaded_adapters else (False,)):
        def one(seq_id: int, context: int, new: int, adapter: bool = adapter) -> ScheduledSeq:
            return synthetic(seq_id, context, new, runner, adapter=adapter, params=GREEDY)

        steps += [
            [one(0, 0, 2)],  # one chunk
            [one(1, 0, 3), one(2, 5, 17)],  # several chunks, one after a cached prefix
            [one(3, narrow, 1), one(4, 0, 2)],  # decode beside a chunk, narrow tables
            [one(5, widest, 1), one(6, narrow, 1)],  # decode at the widest table
            [one(7 + i, narrow, 1) for i in range(min(config.max_batch_size, 33))],  # many rows
            [one(40, 0, min(config.max_batch_prefill_tokens, 300))],  # > 256 rows: prefill LoRA tiles
        ]
    return steps


def warm_up(runner: ModelRunner) -> None:
    """Runs `warm_up_steps` (then captures the decode graphs when enabled: `enable_decode_graphs`)."""
    with torch.cuda.device(runner.device):  # Triton launches on the current device
        with profiling_adapter(runner):
            for items in warm_up_steps(runner):
                run_step(runner, items)
        if runner.config.cuda_graphs:
            runner.enable_decode_graphs(capture=True)
        torch.cuda.synchronize(runner.device)
