"""The engine's public API as the server uses it: validation, streaming, cancellation, adapters."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest
import torch
from lorafleet.runtime.engine import (
    AdapterLoadError,
    Engine,
    EngineValidationError,
    FinishReason,
    GenerationRequest,
    SamplingParams,
)

from tests.fixtures import standard_adapters, tiny_model
from tests.runtime.oracle import oracle_logits

PROMPT = "The adapter answers the question"


@pytest.fixture(scope="module")
def engine(adapter_dirs):  # type: ignore[no-untyped-def]
    engine = Engine.from_pretrained(
        tiny_model("mistral"),
        adapters={"qv": adapter_dirs["r8-qv"]},  # preloaded and pinned
        max_loaded_adapters=2,
        max_total_tokens=96,
        max_input_tokens=64,
        progress=lambda _: None,
    )
    for name, path in adapter_dirs.items():  # registered: loaded on first use, evicted LRU
        engine.register_adapter(name, path)
    with engine:
        yield engine


@pytest.fixture(scope="module")
def adapter_dirs():  # type: ignore[no-untyped-def]
    return {name: str(path) for name, path in standard_adapters(tiny_model("mistral")).items()}


@pytest.mark.parametrize(
    ("params", "name"),
    [
        (SamplingParams(temperature=0.0), "temperature"),
        (SamplingParams(top_p=1.0), "top_p"),
        (SamplingParams(typical_p=0.0), "typical_p"),
        (SamplingParams(top_k=0), "top_k"),
        (SamplingParams(repetition_penalty=0.0), "repetition_penalty"),
        (SamplingParams(frequency_penalty=2.5), "frequency_penalty"),
        (SamplingParams(top_n_tokens=6), "top_n_tokens"),
        (SamplingParams(stop=("a", "b", "c", "d", "e")), "stop"),
        (SamplingParams(max_new_tokens=0), "max_new_tokens"),
        (SamplingParams(max_new_tokens=90), "max_new_tokens"),
        (SamplingParams(temperature=float("nan")), "temperature"),  # NaN passes every comparison
        (SamplingParams(top_p=float("nan")), "top_p"),
        (SamplingParams(typical_p=float("nan")), "typical_p"),
        (SamplingParams(repetition_penalty=float("inf")), "repetition_penalty"),
        (SamplingParams(frequency_penalty=float("-inf")), "frequency_penalty"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(engine, params, name) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EngineValidationError, match=f"`{name}`"):
        engine.prepare(GenerationRequest(PROMPT, params))


def test_input_length_limits_and_truncate(engine) -> None:  # type: ignore[no-untyped-def]
    long_ids = list(range(10, 80))  # 70 > max_input_tokens=64
    with pytest.raises(EngineValidationError, match="`inputs`"):
        engine.prepare(GenerationRequest(long_ids, SamplingParams(max_new_tokens=4)))
    [result] = engine.generate([GenerationRequest(long_ids, SamplingParams(max_new_tokens=4), truncate=20)])
    assert result.num_prompt_tokens == 20
    [result] = engine.generate([GenerationRequest(list(range(10, 40)), SamplingParams(ignore_eos=True))])
    assert (
        len(result.tokens) == 96 - 30 and result.finish_reason is FinishReason.LENGTH
    )  # max_new_tokens=None


def test_unknown_adapter_is_an_adapter_load_error(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AdapterLoadError, match="no-such"):
        engine.prepare(GenerationRequest(PROMPT, adapter_id="no-such-adapter"))
    with pytest.raises(AdapterLoadError):
        engine.generate([GenerationRequest(PROMPT, adapter_id="no-such-adapter")])


def test_stop_sequence_ends_generation_and_is_kept_in_the_text(engine) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    [full] = engine.generate([GenerationRequest(PROMPT, params)])
    stop = full.generated_text[6:9]
    assert len(stop) == 3
    [stopped] = engine.generate(
        [GenerationRequest(PROMPT, SamplingParams(max_new_tokens=24, ignore_eos=True, stop=(stop,)))]
    )
    assert stopped.finish_reason is FinishReason.STOP_SEQUENCE
    assert stopped.generated_text.endswith(stop) and full.generated_text.startswith(stopped.generated_text)
    assert len(stopped.tokens) < len(full.tokens)


def test_log_probs_and_top_alternatives_are_consistent(engine) -> None:  # type: ignore[no-untyped-def]
    [result] = engine.generate([GenerationRequest(PROMPT, SamplingParams(max_new_tokens=6, top_n_tokens=3))])
    assert result.seed is None  # greedy
    for token, top in zip(result.tokens, result.top_tokens, strict=True):
        assert len(top) == 3 and top[0].id == token.id and top[0].logprob == pytest.approx(token.logprob)
        assert top[0].logprob >= top[1].logprob >= top[2].logprob
        assert token.logprob <= 0


def test_prompt_log_probs_match_the_oracle(engine) -> None:  # type: ignore[no-untyped-def]
    request = GenerationRequest(PROMPT, SamplingParams(max_new_tokens=1), decoder_input_details=True)
    [result] = engine.generate([request])
    ids = [t.id for t in result.prompt_tokens]
    reference = torch.log_softmax(oracle_logits("mistral", ids, None), dim=-1)
    assert result.prompt_tokens[0].logprob is None
    for i in range(1, len(ids)):
        assert result.prompt_tokens[i].logprob == pytest.approx(float(reference[i - 1, ids[i]]), abs=1e-4)


async def test_closing_a_stream_early_cancels_the_request_and_frees_its_blocks(engine) -> None:  # type: ignore[no-untyped-def]
    free = engine.info.num_kv_blocks
    stream = engine.stream(GenerationRequest(PROMPT, SamplingParams(max_new_tokens=60, ignore_eos=True)))
    seen = [await stream.__anext__() for _ in range(3)]
    assert [e.index for e in seen] == [1, 2, 3] and engine.stats().num_free_blocks < free
    await stream.aclose()
    deadline = time.monotonic() + 120  # bounds a hang only: the abort is handled asynchronously
    while time.monotonic() < deadline:
        if engine.stats().num_free_blocks == free and engine.stats().batch_size == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.stats().num_free_blocks == free and engine.stats().batch_size == 0


async def test_stats_never_show_an_aborted_requests_blocks_free_while_it_still_counts_in_the_batch(
    engine,
) -> None:  # type: ignore[no-untyped-def]
    total = engine.info.num_kv_blocks
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def watch() -> None:  # reads stats from another thread, as /metrics does
        while not done.is_set():
            s = engine.stats()
            seen.append((s.batch_size, s.num_free_blocks))

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads finely, so a torn read would show
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(10):
            request = GenerationRequest(PROMPT, SamplingParams(max_new_tokens=60, ignore_eos=True))
            stream = engine.stream(request)
            await stream.__anext__()
            await stream.aclose()
            while engine.stats().batch_size or engine.stats().num_free_blocks != total:
                await asyncio.sleep(0.005)
    finally:
        done.set()
        watcher.join()
        sys.setswitchinterval(switch_interval)
    torn = [(batch, free) for batch, free in seen if (batch == 0) != (free == total)]
    assert not torn, f"{len(torn)} of {len(seen)} reads mixed two moments, e.g. {torn[:3]}"
    assert seen and (engine.stats().batch_size, engine.stats().num_free_blocks) == (0, total)


async def test_stream_ends_with_the_result_and_matches_generate(engine) -> None:  # type: ignore[no-untyped-def]
    request = GenerationRequest(PROMPT, SamplingParams(max_new_tokens=8, ignore_eos=True), adapter_id="qv")
    events = [event async for event in engine.stream(request)]
    [result] = engine.generate([request])  # its prompt comes from the prefix cache: same tokens,
    streamed = events[-1].result  # log-probs equal up to float rounding (another attention path)
    assert events[-1].finish_reason is FinishReason.LENGTH and streamed is not None
    assert [t.id for t in streamed.tokens] == [t.id for t in result.tokens]
    assert streamed.generated_text == result.generated_text
    assert [t.logprob for t in streamed.tokens] == pytest.approx([t.logprob for t in result.tokens], abs=1e-5)
    assert all(e.result is None for e in events[:-1])
    assert "".join(e.text for e in events) == result.generated_text


def _cut_inside_a_character(engine) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """A prompt and a length at which the greedy continuation stops inside a UTF-8 character."""
    for prompt in ("Hello", PROMPT, "Tell me a long story"):
        params = SamplingParams(max_new_tokens=16, ignore_eos=True)
        [full] = engine.generate([GenerationRequest(prompt, params)])
        ids = [t.id for t in full.tokens]
        for n in range(1, len(ids) + 1):
            if engine.tokenizer.decode(ids[:n]).endswith("\ufffd"):
                return prompt, n
    raise AssertionError("no greedy continuation of the fixture model stops inside a character")


async def test_a_stream_ending_inside_a_character_carries_the_held_back_text_in_its_last_event(
    engine,
) -> None:  # type: ignore[no-untyped-def]
    prompt, n = _cut_inside_a_character(engine)
    request = GenerationRequest(prompt, SamplingParams(max_new_tokens=n, ignore_eos=True))
    events = [event async for event in engine.stream(request)]
    result = events[-1].result
    assert result is not None and result.generated_text.endswith("\ufffd")  # the premise
    assert "".join(e.text for e in events) == result.generated_text


def test_adapters_load_on_first_use_and_idle_ones_are_evicted_lru_but_not_pinned(engine) -> None:  # type: ignore[no-untyped-def]
    before = engine.stats()
    params = SamplingParams(max_new_tokens=2)
    for name in ("r16-all", "r64-rslora", "r16-all"):
        engine.generate([GenerationRequest(PROMPT, params, adapter_id=name)])
    after = engine.stats()
    assert (
        after.adapter_loads - before.adapter_loads == 3
        and after.adapter_evictions - before.adapter_evictions == 2
    )
    assert engine.loaded_adapters() == ["qv", "r16-all"]  # the pinned one stays


def test_more_concurrent_adapters_than_slots_all_complete(engine, adapter_dirs) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    requests = [GenerationRequest(PROMPT, params, adapter_id=n) for n in adapter_dirs]
    results = engine.generate(requests)  # 4 adapters, 1 free slot: they take turns
    assert [len(r.tokens) for r in results] == [4] * 4
    assert [r.adapter_id for r in results] == list(adapter_dirs)


def test_info_and_stats_describe_the_engine(engine) -> None:  # type: ignore[no-untyped-def]
    info = engine.info
    assert (info.max_input_tokens, info.max_total_tokens, info.dtype, info.device) == (
        64,
        96,
        "float32",
        "cpu",
    )
    assert info.max_batch_total_tokens == info.num_kv_blocks * info.block_size and info.eos_token_id == 2
    stats = engine.stats()
    assert stats.queue_size == 0 and stats.generated_tokens > 0


def test_generate_needs_a_started_engine() -> None:
    engine = Engine.from_pretrained(tiny_model("mistral"), progress=lambda _: None)
    with pytest.raises(Exception, match="not running"):
        engine.generate([GenerationRequest(PROMPT)])
    with engine:
        assert engine.generate([GenerationRequest(PROMPT, SamplingParams(max_new_tokens=1))])[0].tokens
    engine.shutdown()  # idempotent: no thread to stop, returns at once (a hang trips pytest-timeout)
    assert not engine.loop.is_running


def test_dynamic_adapter_is_refused_when_every_slot_is_pinned(adapter_dirs) -> None:  # type: ignore[no-untyped-def]
    model_dir = tiny_model("mistral")
    engine = Engine.from_pretrained(
        model_dir, adapters={"qv": adapter_dirs["r8-qv"]}, max_loaded_adapters=1, progress=lambda _: None
    )
    engine.register_adapter("r16-all", adapter_dirs["r16-all"])
    with engine:
        with pytest.raises(AdapterLoadError, match="pinned"):
            engine.prepare(GenerationRequest(PROMPT, adapter_id="r16-all"))
        [result] = engine.generate(
            [GenerationRequest(PROMPT, SamplingParams(max_new_tokens=2), adapter_id="qv")]
        )
        assert len(result.tokens) == 2
