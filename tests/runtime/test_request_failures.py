"""A request that fails inside the engine loop fails alone: the batch and the engine go on."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from lorafleet.runtime.engine import (
    Engine,
    FinishReason,
    GenerationError,
    GenerationRequest,
    SamplingParams,
)

from tests.fixtures import standard_adapters, tiny_model

PROMPT = "The adapter answers the question"
LONG = SamplingParams(max_new_tokens=450, ignore_eos=True)  # with the prompt, within 480
HOST_CACHE = 2  # adapters read after the broken one: with a 1-byte host budget, each evicts the last
SHORT = SamplingParams(max_new_tokens=4, ignore_eos=True)
BYSTANDER = SamplingParams(max_new_tokens=64, ignore_eos=True)
ATTEMPTS = 3


@pytest.fixture(scope="module")
def engine():  # type: ignore[no-untyped-def]
    # One adapter slot and no pinned adapter: a request for a second adapter waits for the slot.
    engine = Engine.from_pretrained(
        tiny_model("mistral"),
        max_loaded_adapters=1,
        max_total_tokens=480,
        adapter_host_memory=1,  # the host cache keeps only the adapter read last
        progress=lambda _: None,
    )
    for name, path in standard_adapters(tiny_model("mistral")).items():
        engine.register_adapter(name, str(path))  # registered, not preloaded: nothing is pinned
    with engine:
        yield engine


def _copies(engine: Engine, source: Path, folder: Path, n: int) -> list[str]:
    """`n` registered copies of the adapter in `source`; their names are unique to `folder`."""
    folder.mkdir()
    names = []
    for i in range(n):
        shutil.copytree(source, folder / f"copy-{i}")
        names.append(f"{folder.parent.name}-copy-{i}")
        engine.register_adapter(names[-1], str(folder / f"copy-{i}"))
    return names


async def _one_attempt(engine: Engine, tmp_path: Path) -> bool:
    """False when the slot holder finished before the test could break the waiting adapter."""
    adapters = standard_adapters(tiny_model("mistral"))
    broken, broken_name = tmp_path / "broken", f"{tmp_path.name}-broken"
    shutil.copytree(adapters["r8-qv"], broken)
    engine.register_adapter(broken_name, str(broken))
    holder = engine.stream(GenerationRequest(PROMPT, LONG, adapter_id="r16-all"))
    await holder.__anext__()  # running: it holds the only adapter slot
    victim = engine.stream(GenerationRequest(PROMPT, SHORT, adapter_id=broken_name))
    victim_first = asyncio.ensure_future(victim.__anext__())  # validated (weights cached), then waits
    while engine.stats().queue_size == 0:  # queued behind the slot
        await asyncio.sleep(0.005)
    # Between its validation and its first step the adapter's file is corrupted and its cached
    # weights are evicted from the host cache: the loop must reload it, and that fails.
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    for other in _copies(engine, adapters["r8-mlp-patterns"], tmp_path / "others", HOST_CACHE):
        engine.prepare(GenerationRequest(PROMPT, adapter_id=other))
    holder_alive = engine.stats().batch_size >= 1 and not victim_first.done()
    bystander = asyncio.ensure_future(_collect(engine.stream(GenerationRequest(PROMPT, BYSTANDER))))
    await holder.aclose()  # frees the slot: the victim is admitted next to the bystander
    if not holder_alive:  # the victim may have run with its cached weights: inconclusive
        await asyncio.gather(victim_first, bystander, return_exceptions=True)
        return False
    with pytest.raises(GenerationError, match="failed to load"):
        await victim_first
    events = await bystander  # the request next to it went on
    assert events[-1].finish_reason is FinishReason.LENGTH and len(events) == BYSTANDER.max_new_tokens
    return True


async def _collect(stream):  # type: ignore[no-untyped-def]
    return [event async for event in stream]


async def test_an_adapter_that_breaks_while_queued_fails_its_request_alone(engine, tmp_path):  # type: ignore[no-untyped-def]
    for attempt in range(ATTEMPTS):
        if await _one_attempt(engine, tmp_path / f"attempt-{attempt}"):
            break
    else:
        pytest.fail(f"{LONG.max_new_tokens} tokens always finished before the adapter could be broken")
    # The engine still serves, including a request on another adapter (the slot was given
    # back), and every block is free again.
    other = GenerationRequest(PROMPT, SHORT, adapter_id="r8-qv")
    [after] = engine.generate([other])
    assert len(after.tokens) == SHORT.max_new_tokens
    stats = engine.stats()
    assert (stats.batch_size, stats.queue_size, stats.num_free_blocks) == (0, 0, engine.info.num_kv_blocks)
