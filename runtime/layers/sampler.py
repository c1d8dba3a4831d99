"""Turns a batch of next-token logits into tokens, with each sequence's own sampling parameters.

Order as in TGI: repetition penalty, frequency penalty, then temperature, top-k, top-p and
typical-p warpers, then greedy argmax or a draw from the sequence's own seeded generator (so a
seeded request repeats exactly whatever else shares its batch). Log-probs are those of the final
distribution the token was chosen from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lorafleet.runtime.types import SamplingParams


def is_greedy(params: SamplingParams) -> bool:
    """TGI semantics: setting temperature/top_k/top_p/typical_p implies sampling."""
    warpers = (params.temperature, params.top_k, params.top_p, params.typical_p)
    return not params.do_sample and all(w is None for w in warpers)


@dataclass(frozen=True)
class SampleRequest:
    """What the sampler needs to know about one row."""

    params: SamplingParams
    token_ids: list[int]  # prompt + generated so far (penalties look at all of them, as TGI does)
    generator: torch.Generator | None  # None = greedy


@dataclass(frozen=True)
class SampleOutput:
    token_id: int
    logprob: float
    top_ids: tuple[int, ...]  # top_n_tokens alternatives, best first
    top_logprobs: tuple[float, ...]


def sample(logits: torch.Tensor, rows: list[SampleRequest]) -> list[SampleOutput]:  # logits [B, V] float32
    """Chooses one token per row."""
    plain = [i for i, row in enumerate(rows) if row.generator is None and not _has_penalty(row.params)]
    outputs: dict[int, SampleOutput] = {}
    if plain:  # greedy rows without penalties: one batched argmax / log_softmax
        index = torch.tensor(plain, device=logits.device)
        logprobs = torch.log_softmax(logits[index], dim=-1)  # [P, V]
        chosen = logprobs.argmax(dim=-1)
        chosen_logprobs = logprobs.gather(1, chosen[:, None])[:, 0].tolist()
        for j, (i, token) in enumerate(zip(plain, chosen.tolist(), strict=True)):
            outputs[i] = _with_top(logprobs[j], token, chosen_logprobs[j], rows[i].params.top_n_tokens)
    for i, row in enumerate(rows):
        if i not in outputs:
            outputs[i] = _sample_row(logits[i], row)
    return [outputs[i] for i in range(len(rows))]


def _sample_row(logits: torch.Tensor, row: SampleRequest) -> SampleOutput:  # logits [V]
    scores = _penalize(logits, row)
    if row.generator is not None:
        scores = _warp(scores, row.params)
    logprobs = torch.log_softmax(scores, dim=-1)
    if row.generator is None:
        token = int(torch.argmax(scores))
    else:
        token = int(torch.multinomial(logprobs.exp(), 1, generator=row.generator))
    return _with_top(logprobs, token, float(logprobs[token]), row.params.top_n_tokens)


def _with_top(logprobs: torch.Tensor, token: int, logprob: float, top_n: int) -> SampleOutput:
    if top_n <= 0:
        return SampleOutput(token, logprob, (), ())
    values, ids = torch.topk(logprobs, top_n)
    return SampleOutput(token, logprob, tuple(ids.tolist()), tuple(values.tolist()))


def _has_penalty(p: SamplingParams) -> bool:
    return p.repetition_penalty not in (None, 1.0) or bool(p.frequency_penalty)


def _penalize(scores: torch.Tensor, row: SampleRequest) -> torch.Tensor:  # [V]
    p = row.params
    if not _has_penalty(p):
        return scores
    scores = scores.clone()
    ids = torch.tensor(row.token_ids, dtype=torch.long, device=scores.device)
    if p.repetition_penalty not in (None, 1.0):
        seen = scores[ids]
        scores[ids] = torch.where(seen < 0, seen * p.repetition_penalty, seen / p.repetition_penalty)
    if p.frequency_penalty:
        counts = torch.bincount(ids, minlength=scores.shape[0]).to(scores.dtype)
        scores -= p.frequency_penalty * counts
    return scores


def _warp(scores: torch.Tensor, p: SamplingParams) -> torch.Tensor:  # [V]
    if p.temperature is not None and p.temperature != 1.0:
        scores = scores / p.temperature
    if p.top_k is not None and p.top_k < scores.shape[0]:
        kth = torch.topk(scores, p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.top_p is not None and p.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        remove = cumulative <= (1 - p.top_p)
        remove[-1] = False  # always keep the most likely token
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    if p.typical_p is not None and p.typical_p < 1.0:
        scores = _typical(scores, p.typical_p)
    return scores


def _typical(scores: torch.Tensor, mass: float) -> torch.Tensor:
    # Keep the tokens whose surprisal is closest to the entropy until `mass` is covered (HF's warper).
    logp = torch.log_softmax(scores, dim=-1)
    probs = logp.exp()
    entropy = -torch.nansum(probs * logp)
    shifted = (-logp - entropy).abs()
    sorted_shifted, order = torch.sort(shifted)
    cumulative = probs[order].cumsum(-1)
    last = int((cumulative < mass).sum().clamp(max=scores.shape[0] - 1))
    remove_sorted = sorted_shifted > sorted_shifted[last]
    return scores.masked_fill(remove_sorted.scatter(0, order, remove_sorted), float("-inf"))
