"""Per-request output state: detokenization, stop criteria, log-probs, events and the result."""

from __future__ import annotations

from collections.abc import Callable

from lorafleet.runtime.layers.sampler import SampleOutput
from lorafleet.runtime.tokenizer import IncrementalDetokenizer, Tokenizer
from lorafleet.runtime.types import FinishReason, GenerationResult, PreparedRequest, TokenEvent, TokenInfo

Sink = Callable[[TokenEvent | BaseException], None]


class RequestOutput:
    """Collects one request's tokens and emits a `TokenEvent` per token through `sink`."""

    def __init__(
        self, prepared: PreparedRequest, tokenizer: Tokenizer, eos_token_ids: frozenset[int], sink: Sink
    ) -> None:
        self.request = prepared.request
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.prompt_ids = list(prepared.prompt_ids)
        self.max_new_tokens = prepared.max_new_tokens
        self.seed = prepared.seed
        self.sink = sink
        self.prompt_logprobs: list[float | None] = [None] * len(self.prompt_ids)
        self.tokens: list[TokenInfo] = []
        self.top_tokens: list[tuple[TokenInfo, ...]] = []
        self.text = ""  # streamed text, special tokens included (what stop sequences match)
        self.finished = False
        self._detokenizer = IncrementalDetokenizer(tokenizer, self.prompt_ids)

    def add_prompt_logprobs(self, start: int, logprobs: list[float]) -> None:
        """Log-probs of prompt tokens start+1 .. (`logprobs[j]` is token start+j+1's)."""
        for j, value in enumerate(logprobs):
            self.prompt_logprobs[start + j + 1] = value

    def add_token(self, sample: SampleOutput) -> TokenEvent:
        """Records one sampled token and returns its event (the last one carries the result)."""
        tid = sample.token_id
        special = self.tokenizer.is_special(tid)
        piece = self._detokenizer.add(tid)
        self.text += piece
        token = TokenInfo(tid, self._token_text(tid), sample.logprob, special)
        self.tokens.append(token)
        top = tuple(
            TokenInfo(i, self._token_text(i), lp, self.tokenizer.is_special(i))
            for i, lp in zip(sample.top_ids, sample.top_logprobs, strict=True)
        )
        self.top_tokens.append(top)
        reason = self._finish_reason(tid)
        if reason is None:
            return TokenEvent(len(self.tokens), token, piece, top)
        # The last event carries whatever the detokenizer still holds back (an incomplete
        # character), so the events' texts add up to the final text.
        held_back = self._detokenizer.flush()
        piece += held_back
        self.text += held_back
        self.finished = True
        return TokenEvent(len(self.tokens), token, piece, top, reason, self.result(reason))

    def _finish_reason(self, token_id: int) -> FinishReason | None:
        params = self.request.params
        if token_id in self.eos_token_ids and not params.ignore_eos:
            return FinishReason.EOS_TOKEN
        if any(self.text.endswith(stop) for stop in params.stop if stop):
            return FinishReason.STOP_SEQUENCE
        if len(self.tokens) >= self.max_new_tokens:
            return FinishReason.LENGTH
        return None

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def result(self, reason: FinishReason) -> GenerationResult:
        ids = [t.id for t in self.tokens]
        tail = self.prompt_ids[-5:]
        full = self.tokenizer.decode(tail + ids, skip_special_tokens=True)
        generated = full[len(self.tokenizer.decode(tail, skip_special_tokens=True)) :]
        prompt_tokens = tuple(
            TokenInfo(tid, self._token_text(tid), lp, self.tokenizer.is_special(tid))
            for tid, lp in zip(self.prompt_ids, self.prompt_logprobs, strict=True)
        )
        return GenerationResult(
            generated_text=generated,
            finish_reason=reason,
            tokens=tuple(self.tokens),
            prompt_tokens=prompt_tokens,
            top_tokens=tuple(self.top_tokens),
            seed=self.seed,
            num_prompt_tokens=len(self.prompt_ids),
            adapter_id=self.request.adapter_id,
        )
