"""Decode steps through the CUDA-graph path's static buffers, run eagerly on the CPU.

On CUDA `enable_decode_graphs(capture=True)` records the static-buffer forward once per batch
bucket and replays it; `capture=False` runs the very same forward from the same buffers (padded
rows on the null block with context 0, adapter slots -1, LoRA tiles computed from the static slot
buffer, page tables read from their persistent tensors), which is what is checked here: the tokens
equal the normal path's and transformers + peft's, padded rows write only the null block, and only
decode-only steps take the path. The capture itself runs in `benchmarks/gpu_check.sh`.
"""

from __future__ import annotations

import pytest
import torch
from lorafleet.runtime.args import EngineArgs
from lorafleet.runtime.engine import Engine, EngineError, GenerationRequest, SamplingParams
from lorafleet.runtime.engine.graph_runner import batch_buckets
from lorafleet.runtime.engine.scheduler import ScheduledBatch, ScheduledSeq
from lorafleet.runtime.engine.sequence import Sequence, SequenceStatus
from lorafleet.runtime.engine.setup import resolve_cuda_graphs
from lorafleet.runtime.models.args import ModelArgs

from tests.fixtures import standard_adapters, tiny_model
from tests.runtime.oracle import corpus_prompts, engine_for, oracle_greedy
from tests.runtime.test_mixed_batch import NUM_TOKENS, _requests, _staggered


def static_engine(arch: str, **options: object):  # type: ignore[no-untyped-def]
    engine = engine_for(arch, **options)
    runner = engine.loop.runner
    runner.kernel_attention = True
    runner.enable_decode_graphs(capture=False)
    return engine


@pytest.mark.parametrize("arch", ["mistral", "gemma2", "qwen3"])
async def test_static_buffer_decode_gives_the_normal_paths_tokens_and_peft_greedy(arch: str) -> None:
    with engine_for(arch, max_batch_prefill_tokens=16) as engine:
        normal = await _staggered(engine, _requests(engine))
    with static_engine(arch, max_batch_prefill_tokens=16) as engine:
        requests = _requests(engine)
        static = await _staggered(engine, requests)
        graphs = engine.loop.runner.graphs
    assert graphs is not None and graphs.num_runs > 0
    assert static == normal
    for request, got in zip(requests, static, strict=True):
        assert got == oracle_greedy(arch, list(request.prompt), request.adapter_id, NUM_TOKENS)


def test_only_decode_only_steps_take_the_static_path() -> None:
    with static_engine("mistral") as engine:
        prompt = corpus_prompts(engine, 1)[0]
        engine.generate([GenerationRequest(prompt, SamplingParams(max_new_tokens=7, ignore_eos=True))])
        graphs = engine.loop.runner.graphs
        assert graphs is not None and graphs.num_runs == 6  # the first token came from the prefill
        details = GenerationRequest(prompt, SamplingParams(max_new_tokens=1), decoder_input_details=True)
        engine.generate([details])
        assert graphs.num_runs == 6


def _decoding(seq_id: int, context: int, table: list[int], adapter_slot: int) -> ScheduledSeq:
    seq = Sequence(seq_id, [5] * (context + 1), context, 4, SamplingParams(), status=SequenceStatus.RUNNING,
                   adapter_id="a" if adapter_slot >= 0 else None, adapter_slot=adapter_slot)
    seq.num_computed, seq.block_table = context, table
    return ScheduledSeq(seq, 1)


def test_padded_rows_write_only_the_null_block() -> None:
    engine = static_engine("mistral", block_size=4, num_kv_blocks=12, max_total_tokens=40, max_batch_size=8)
    runner = engine.loop.runner
    runner.kv_cache.normal_(generator=torch.Generator().manual_seed(0))
    before = runner.kv_cache.clone()
    items = [_decoding(0, 5, [2, 3], 0), _decoding(1, 2, [7], -1), _decoding(2, 9, [1, 4, 9], 1)]
    runner.execute(ScheduledBatch(items), set())  # 3 rows in bucket 4: one padded row
    assert runner.graphs is not None and runner.graphs.num_runs == 1
    changed = (runner.kv_cache != before).flatten(4).any(-1)  # [layers, 2, blocks, block_size]
    written = {(3, 5 % 4), (7, 2), (9, 9 % 4), (runner.null_block, 0)}
    for block in range(runner.kv_cache.shape[2]):
        for offset in range(4):
            assert bool(changed[:, :, block, offset].any()) == ((block, offset) in written), (block, offset)


def test_page_tables_keep_their_device_tensors_when_adapters_come_and_go() -> None:
    model_dir = tiny_model("mistral")
    engine = Engine.from_pretrained(model_dir, max_loaded_adapters=2, progress=lambda _: None)
    for name, path in standard_adapters(model_dir).items():  # registered, read on first use
        engine.register_adapter(name, str(path))
    engine.loop.runner.kernel_attention = True
    engine.loop.runner.enable_decode_graphs(capture=False)
    with engine:
        tables = engine.loop.runner.page_tables
        before = {g: (p.page_table, p.ranks) for g, p in tables.pages.items()}
        prompt = corpus_prompts(engine, 1)[0]
        for adapter in ("r8-qv", "r16-all", "r64-rslora"):  # three adapters through two slots
            request = GenerationRequest(prompt, SamplingParams(max_new_tokens=6, ignore_eos=True),
                                        adapter_id=adapter)
            tokens = [t.id for t in engine.generate([request])[0].tokens]
            assert tokens == oracle_greedy("mistral", prompt, adapter, 6), adapter
        for group, pages in tables.pages.items():
            assert pages.page_table is before[group][0] and pages.ranks is before[group][1]


def test_buckets_double_up_to_the_largest_batch() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(20) == (1, 2, 4, 8, 16, 20)


def test_cuda_graphs_asked_for_where_they_cannot_run_is_an_error_naming_the_option() -> None:
    with pytest.raises(EngineError, match="cuda_graphs: they need a CUDA device"):
        engine_for("mistral", cuda_graphs=True)
    assert engine_for("mistral", cuda_graphs=False).config.cuda_graphs is False
    assert engine_for("mistral").config.cuda_graphs is False  # the default on a CPU: off
    moe = ModelArgs(**{**_dense_args().__dict__, "num_experts": 4, "num_experts_per_tok": 2})
    cuda = torch.device("cuda", 0)
    with pytest.raises(EngineError, match="cuda_graphs: MoE models run eagerly"):
        resolve_cuda_graphs(EngineArgs("m", cuda_graphs=True), moe, cuda)
    assert resolve_cuda_graphs(EngineArgs("m"), moe, cuda) is False
    assert resolve_cuda_graphs(EngineArgs("m"), _dense_args(), cuda) is True
    assert resolve_cuda_graphs(EngineArgs("m", cuda_graphs=False), _dense_args(), cuda) is False


def _dense_args() -> ModelArgs:
    return engine_for("mistral").config.model
