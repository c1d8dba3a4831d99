"""The reference the runtime is checked against: transformers + peft on the same fixture files."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from lorafleet.runtime.engine import Engine, SamplingParams
from lorafleet.runtime.engine.scheduler import ScheduledBatch, ScheduledSeq
from lorafleet.runtime.engine.sequence import Sequence, SequenceStatus

from tests.fixtures import standard_adapters, tiny_model

# Gemma 2's attention soft-capping exists only in transformers' eager attention (SDPA skips it).
ATTENTION = {"gemma2": "eager"}


def reference_model(model_dir: Path, arch: str):  # type: ignore[no-untyped-def]
    """transformers' model of `arch` on `model_dir`, in float32 and the attention that implements it."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=ATTENTION.get(arch, "sdpa")
    ).eval()


@functools.lru_cache(maxsize=3)
def peft_model(arch: str):  # type: ignore[no-untyped-def]
    """A PeftModel over the tiny `arch` checkpoint with every standard adapter loaded by name."""
    from peft import PeftModel

    model_dir = tiny_model(arch)
    adapters = standard_adapters(model_dir)
    base = reference_model(model_dir, arch)
    names = list(adapters)
    model = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0]).eval()
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    return model


@contextlib.contextmanager
def active(model, adapter: str | None) -> Iterator[None]:  # type: ignore[no-untyped-def]
    if adapter is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(adapter)
        yield


@torch.no_grad()
def oracle_logits(arch: str, ids: list[int], adapter: str | None) -> torch.Tensor:  # [n, V]
    model = peft_model(arch)
    with active(model, adapter):
        return model(torch.tensor([ids])).logits[0].float()


def oracle_greedy(arch: str, ids: list[int], adapter: str | None, num_tokens: int) -> list[int]:
    """Greedy continuation by transformers + peft with their own KV cache (no EOS handling: the
    engine runs with ignore_eos). On every fixture it gave the same tokens as recomputing the whole
    sequence each step, 2-10x faster. Memoised per process: the batching and the preemption tests
    ask for the same continuations.
    """
    return list(_oracle_greedy(arch, tuple(ids), adapter, num_tokens))


@functools.lru_cache(maxsize=256)
@torch.no_grad()
def _oracle_greedy(arch: str, ids: tuple[int, ...], adapter: str | None, num_tokens: int) -> tuple[int, ...]:
    model = peft_model(arch)
    tokens: list[int] = []
    with active(model, adapter):
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(num_tokens):
            tokens.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([tokens[-1:]]), past_key_values=out.past_key_values, use_cache=True)
    return tuple(tokens)


def engine_for(arch: str, **kwargs) -> Engine:  # type: ignore[no-untyped-def]
    model_dir = tiny_model(arch)
    adapters = {name: str(path) for name, path in standard_adapters(model_dir).items()}
    return Engine.from_pretrained(model_dir, adapters=adapters, progress=lambda _: None, **kwargs)


def engine_prefill_logits(
    engine: Engine, ids: list[int], adapter: str | None, chunk: int | None = None
) -> torch.Tensor:
    """Runs one prefill (in chunks of `chunk` tokens if given) through the engine's runner and
    paged cache, with the engine not started; returns the logits of every position [n, V]."""
    seq = Sequence(
        seq_id=10**6,
        token_ids=list(ids),
        num_prompt_tokens=len(ids),
        max_new_tokens=1,
        params=SamplingParams(),
        adapter_id=adapter,
        status=SequenceStatus.RUNNING,
    )
    if adapter is not None:  # a preloaded (pinned, so resident) adapter
        residence = engine.loop.scheduler.adapters.residence(engine.adapters.store.current(adapter).key)
        assert residence is not None
        seq.adapter_slot = residence.slot
    pieces = []
    try:
        while seq.num_computed < len(ids):
            n = min(chunk or len(ids), len(ids) - seq.num_computed)
            engine.loop.scheduler.block_manager.allocate(seq, n)
            out = engine.loop.runner.execute(ScheduledBatch([ScheduledSeq(seq, n)]), {seq.seq_id})
            start, logits = out.prompt_logits[seq.seq_id]
            assert start == seq.num_computed
            pieces.append(logits)
            seq.num_computed += n
    finally:
        engine.loop.scheduler.block_manager.free(seq)
    return torch.cat(pieces)


def corpus_prompts(engine: Engine, count: int) -> list[list[int]]:
    lines = [
        line
        for line in (Path(__file__).parents[1] / "fixtures" / "corpus.txt").read_text().splitlines()
        if line
    ]
    return [engine.tokenizer.encode(lines[i * 7 % len(lines)])[:24] for i in range(count)]
