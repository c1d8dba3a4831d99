"""Sampling parameters restrict and reshape the distribution as TGI/transformers define them."""

from __future__ import annotations

import torch
from lorafleet.runtime.engine import FinishReason, GenerationRequest, PreparedRequest, SamplingParams
from lorafleet.runtime.engine.output import RequestOutput
from lorafleet.runtime.layers.sampler import SampleOutput, SampleRequest, is_greedy, sample
from lorafleet.runtime.tokenizer import Tokenizer

from tests.fixtures import tiny_model


def _draws(
    logits: torch.Tensor, params: SamplingParams, n: int = 200, token_ids: list[int] | None = None
) -> set[int]:
    generator = torch.Generator().manual_seed(0)
    rows = [SampleRequest(params, token_ids or [], generator) for _ in range(n)]
    return {out.token_id for out in sample(logits.expand(n, -1), rows)}


LOGITS = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])


def test_setting_any_warper_implies_sampling_as_in_tgi() -> None:
    assert is_greedy(SamplingParams())
    assert is_greedy(SamplingParams(repetition_penalty=1.2))
    for params in (
        SamplingParams(temperature=0.5),
        SamplingParams(top_k=3),
        SamplingParams(top_p=0.5),
        SamplingParams(typical_p=0.5),
        SamplingParams(do_sample=True),
    ):
        assert not is_greedy(params)


def test_top_k_and_top_p_restrict_the_candidates() -> None:
    assert _draws(LOGITS, SamplingParams(top_k=2, temperature=5.0)) == {0, 1}
    # softmax of LOGITS: p0≈0.64, p1≈0.23: top_p=0.7 keeps the first two tokens only
    assert _draws(LOGITS, SamplingParams(top_p=0.7, temperature=1.0)) == {0, 1}
    assert len(_draws(LOGITS, SamplingParams(temperature=5.0))) == 6


def test_typical_p_keeps_tokens_near_the_entropy() -> None:
    drawn = _draws(LOGITS, SamplingParams(typical_p=0.3))
    assert drawn and drawn < set(range(6))


def test_repetition_penalty_and_frequency_penalty_demote_seen_tokens() -> None:
    greedy = [SampleRequest(SamplingParams(repetition_penalty=100.0), [0], None)]
    assert sample(LOGITS, greedy)[0].token_id == 1
    freq = [SampleRequest(SamplingParams(frequency_penalty=2.0), [0, 0, 1], None)]
    assert sample(LOGITS, freq)[0].token_id == 2  # 4-4=0, 3-2=1, 2


def test_same_seed_same_draws() -> None:
    params = SamplingParams(temperature=3.0)
    a = [
        sample(LOGITS, [SampleRequest(params, [], torch.Generator().manual_seed(7))])[0].token_id
        for _ in range(1)
    ]
    gen1, gen2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    seq1 = [sample(LOGITS, [SampleRequest(params, [], gen1)])[0].token_id for _ in range(30)]
    seq2 = [sample(LOGITS, [SampleRequest(params, [], gen2)])[0].token_id for _ in range(30)]
    assert seq1 == seq2 and seq1[0] == a[0] and len(set(seq1)) > 1


def test_eos_finishes_unless_ignored() -> None:
    tokenizer = Tokenizer(tiny_model("mistral"))
    eos = tokenizer.eos_token_id
    assert eos is not None
    for ignore, expected in ((False, FinishReason.EOS_TOKEN), (True, None)):
        request = GenerationRequest("x", SamplingParams(ignore_eos=ignore))
        prepared = PreparedRequest(request, (1, 50), 10, None)
        output = RequestOutput(prepared, tokenizer, frozenset({eos}), lambda _: None)
        event = output.add_token(SampleOutput(eos, -0.1, (), ()))
        assert event.finish_reason is expected
        if expected is not None:
            assert event.result is not None and event.result.generated_text == ""  # EOS text is skipped
            assert event.result.tokens[0].special


def test_greedy_picks_the_first_of_equal_maxima_as_argmax_does() -> None:
    rows = [SampleRequest(SamplingParams(), [], None) for _ in range(3)]
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 1.0, 5.0]])
    assert [out.token_id for out in sample(logits, rows)] == [1, 0, 3] == logits.argmax(-1).tolist()
