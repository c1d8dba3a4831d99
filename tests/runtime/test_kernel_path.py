"""The runtime's CUDA attention path, run on the CPU through the paged kernels' torch implementation.

On CUDA the model runner orders rows decode first, builds the kernels' metadata once per step
(int32 block tables padded with the null block, context lengths, cu_seqlens) and attends in place
(`layers/attention_cuda.py`). Setting `runner.kernel_attention` on a CPU runs exactly that code with
the kernels' torch launchers, so its logic is checked here against transformers + peft: staggered
mixed-adapter batches (prefill chunks beside decodes), sliding windows and soft-capping (Gemma 2),
q/k norms (Qwen3), chunked prefill logits, prompt log-probs computed in bounded chunks.
"""

from __future__ import annotations

import pytest
import torch
from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams
from lorafleet.runtime.engine import model_runner as model_runner_module
from lorafleet.runtime.engine.kernel_inputs import decode_first, padded, table_width
from lorafleet.runtime.engine.scheduler import ScheduledSeq
from lorafleet.runtime.engine.sequence import Sequence

from tests.runtime.oracle import (
    corpus_prompts,
    engine_for,
    engine_prefill_logits,
    oracle_greedy,
    oracle_logits,
)
from tests.runtime.test_mixed_batch import NUM_TOKENS, _requests, _staggered


def kernel_engine(arch: str, **options: object) -> Engine:
    engine = engine_for(arch, **options)
    engine.loop.runner.kernel_attention = True  # the CUDA path's code, the kernels' torch launchers
    return engine


@pytest.mark.parametrize("arch", ["mistral", "gemma2", "qwen3", "phi3"])
async def test_kernel_path_staggered_mixed_adapter_batch_matches_peft_greedy(arch: str) -> None:
    with kernel_engine(arch, max_batch_prefill_tokens=16) as engine:  # long prompts chunked too
        requests = _requests(engine)
        outputs = await _staggered(engine, requests)
    for request, got in zip(requests, outputs, strict=True):
        expected = oracle_greedy(arch, list(request.prompt), request.adapter_id, NUM_TOKENS)
        assert got == expected, request.adapter_id


@pytest.mark.parametrize("arch", ["mistral", "gemma2"])
def test_kernel_path_chunked_prefill_logits_match_the_oracle(arch: str) -> None:
    engine = kernel_engine(arch, block_size=4)
    ids = corpus_prompts(engine, 1)[0]
    for adapter in (None, "r16-all"):
        for chunk in (None, 5):
            torch.testing.assert_close(engine_prefill_logits(engine, ids, adapter, chunk=chunk),
                                       oracle_logits(arch, ids, adapter), atol=1e-4, rtol=0)


def test_prompt_log_probs_in_small_chunks_equal_the_oracle_on_both_paths(monkeypatch) -> None:
    vocab = engine_for("mistral").config.model.vocab_size
    monkeypatch.setattr(model_runner_module, "LOGITS_CHUNK_ELEMENTS", 3 * vocab)  # 3 rows at a time
    results = []
    for kernel in (False, True):
        engine = kernel_engine("mistral") if kernel else engine_for("mistral")
        with engine:
            prompt = corpus_prompts(engine, 1)[0]
            request = GenerationRequest(prompt, SamplingParams(max_new_tokens=2), decoder_input_details=True)
            results.append(engine.generate([request])[0])
    reference = torch.log_softmax(oracle_logits("mistral", prompt, None), dim=-1)
    for result in results:
        assert result.prompt_tokens[0].logprob is None
        for i in range(1, len(prompt)):
            expected = float(reference[i - 1, prompt[i]])
            assert result.prompt_tokens[i].logprob == pytest.approx(expected, abs=1e-4)


def _seq(seq_id: int, computed: int, total: int, table: list[int]) -> Sequence:
    seq = Sequence(seq_id, list(range(total)), total, 4, SamplingParams())
    seq.num_computed, seq.block_table = computed, table
    return seq


def test_rows_go_decode_first_and_tables_pad_with_the_null_block_to_a_multiple_of_16() -> None:
    items = [ScheduledSeq(_seq(0, 0, 9, [3, 4, 5]), 9), ScheduledSeq(_seq(1, 6, 7, [7, 8]), 1),
             ScheduledSeq(_seq(2, 2, 5, [9]), 3), ScheduledSeq(_seq(3, 30, 31, [1] * 17), 1)]
    assert [item.seq.seq_id for item in decode_first(items)] == [1, 3, 0, 2]
    assert table_width([[1, 2]]) == 16 and table_width([[1] * 17]) == 32 and table_width([]) == 16
    assert padded([[1, 2], [3]], 4, fill=99) == [1, 2, 99, 99, 3, 99, 99, 99]


def test_staging_uploads_each_part_as_a_view_of_one_fresh_tensor() -> None:
    from lorafleet.runtime.engine.staging import HostStaging

    staging = HostStaging(torch.device("cpu"))
    first = staging.upload([[1, 2, 3], [], range(4, 6)], torch.int64)
    assert [t.tolist() for t in first] == [[1, 2, 3], [], [4, 5]]
    assert all(t.dtype == torch.int64 for t in first)
    assert first[0].untyped_storage().data_ptr() == first[2].untyped_storage().data_ptr()  # one tensor
    second = staging.upload([[7, 8, 9]], torch.int32)
    assert second[0].dtype == torch.int32 and first[0].tolist() == [1, 2, 3]  # earlier views kept intact
