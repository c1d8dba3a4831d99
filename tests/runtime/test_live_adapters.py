"""Adapters added, replaced and removed on a running engine, under a byte budget: answers equal
transformers + peft for the version each request ran with, loads are coalesced and happen off
the decoding loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from lorafleet.kernels import pages_for_rank
from lorafleet.runtime.engine import AdapterLoadError, Engine, GenerationRequest, SamplingParams
from lorafleet.runtime.engine.adapter_service import AdapterReader

from tests.fixtures import standard_adapters, tiny_model
from tests.runtime.oracle import corpus_prompts, oracle_greedy

ARCH = "mistral"
TOKENS = 10
GREEDY = SamplingParams(max_new_tokens=TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def adapter_dirs() -> dict[str, Path]:
    return standard_adapters(tiny_model(ARCH))


def _engine(**options) -> Engine:  # type: ignore[no-untyped-def]
    return Engine.from_pretrained(tiny_model(ARCH), progress=lambda _: None, **options)


def _tokens(engine: Engine, prompt: list[int], name: str | None) -> list[int]:
    [result] = engine.generate([GenerationRequest(prompt, GREEDY, adapter_id=name)])
    return [t.id for t in result.tokens]


def test_adapters_added_replaced_and_removed_while_running_answer_as_peft(adapter_dirs) -> None:  # type: ignore[no-untyped-def]
    with _engine(max_loaded_adapters=2) as engine:
        prompt = corpus_prompts(engine, 1)[0]
        with pytest.raises(AdapterLoadError, match="live"):
            engine.prepare(GenerationRequest(prompt, adapter_id="live"))
        first = engine.load_adapter("live", str(adapter_dirs["r8-qv"]))
        assert _tokens(engine, prompt, "live") == oracle_greedy(ARCH, prompt, "r8-qv", TOKENS)
        second = engine.load_adapter("live", str(adapter_dirs["r16-all"]))  # new files: a new version
        assert second.digest != first.digest
        assert _tokens(engine, prompt, "live") == oracle_greedy(ARCH, prompt, "r16-all", TOKENS)
        assert engine.load_adapter("live", str(adapter_dirs["r16-all"])).key == second.key  # same files
        assert [(a.name, a.digest) for a in engine.list_adapters()] == [("live", second.digest)]
        assert engine.unload_adapter("live") is not None and engine.unload_adapter("live") is None
        with pytest.raises(AdapterLoadError, match="live"):
            engine.prepare(GenerationRequest(prompt, adapter_id="live"))
        assert _tokens(engine, prompt, None) == oracle_greedy(ARCH, prompt, None, TOKENS)


async def test_replacing_an_adapter_under_load_never_mixes_versions(adapter_dirs) -> None:  # type: ignore[no-untyped-def]
    with _engine(max_loaded_adapters=2, block_size=8) as engine:
        prompts = corpus_prompts(engine, 12)
        engine.load_adapter("live", str(adapter_dirs["r8-qv"]))
        params = SamplingParams(max_new_tokens=24, ignore_eos=True)

        async def run(prompt: list[int]) -> list[int]:
            prepared = await asyncio.to_thread(
                engine.prepare, GenerationRequest(prompt, params, adapter_id="live")
            )
            return [event.token.id async for event in engine.stream(prepared)]

        tasks = [asyncio.create_task(run(p)) for p in prompts[:6]]
        await asyncio.sleep(0.05)  # some run on the first version...
        await asyncio.to_thread(engine.load_adapter, "live", str(adapter_dirs["r16-all"]))
        tasks += [asyncio.create_task(run(p)) for p in prompts[6:]]  # ...later ones on the second
        outputs = await asyncio.gather(*tasks)
    versions = []
    for prompt, tokens in zip(prompts, outputs, strict=True):
        old, new = (oracle_greedy(ARCH, prompt, name, 24) for name in ("r8-qv", "r16-all"))
        assert tokens in (old, new), "a request mixed two versions of the adapter"
        versions.append("old" if tokens == old else "new")
    assert versions[6:] == ["new"] * 6  # prepared after the replacement: the new version


def test_ten_concurrent_requests_for_a_cold_adapter_read_and_place_it_once(adapter_dirs) -> None:  # type: ignore[no-untyped-def]
    with _engine(max_loaded_adapters=2) as engine:
        engine.register_adapter("cold", str(adapter_dirs["r64-rslora"]))
        prompts = corpus_prompts(engine, 10)
        reads, loads = engine.adapters.store.num_reads, engine.stats().adapter_loads
        results: list[list[int]] = []

        def one(prompt: list[int]) -> None:
            results.append(_tokens(engine, prompt, "cold"))

        threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert engine.adapters.store.num_reads - reads == 1
        assert engine.stats().adapter_loads - loads == 1
    assert len(results) == 10


def test_the_byte_budget_holds_mixed_ranks_at_their_real_size_and_evicts_lru(adapter_dirs) -> None:  # type: ignore[no-untyped-def]
    page_rank_rows = pages_for_rank(64)  # the budget must hold one rank-64 adapter on every projection
    with _engine(max_loaded_adapters=4) as probe:
        per_page = sum(size for _, size in probe.config.adapter_page_bytes)
    budget = (page_rank_rows + 2) * per_page  # one rank-64 all-projection adapter plus two pages
    with _engine(max_loaded_adapters=4, adapter_memory=budget) as engine:
        assert (
            engine.info.memory.adapters
            >= engine.config.adapter_bytes
            == engine.config.adapter_pages * per_page
        )
        prompt = corpus_prompts(engine, 1)[0]
        for name in ("r8-qv", "r16-all", "r64-rslora"):
            engine.register_adapter(name, str(adapter_dirs[name]))
        expected_bytes = {}
        for name in ("r8-qv", "r16-all", "r64-rslora"):
            assert _tokens(engine, prompt, name) == oracle_greedy(ARCH, prompt, name, TOKENS)
            version = engine.adapters.store.current(name)
            page_bytes = dict(engine.config.adapter_page_bytes)
            expected_bytes[name] = sum(pages_for_rank(r) * page_bytes[g] for g, r in version.ranks.items())
            stats = engine.stats()
            assert stats.adapter_bytes_used <= engine.config.adapter_bytes
            assert stats.adapter_bytes_used == sum(expected_bytes[n] for n in engine.loaded_adapters())
        # r64-rslora (rank 64 on q/k/v/o) did not fit next to the others: the least recently used went.
        assert engine.loaded_adapters()[-1] == "r64-rslora" and "r8-qv" not in engine.loaded_adapters()
        assert expected_bytes["r8-qv"] < expected_bytes["r16-all"] < expected_bytes["r64-rslora"]


async def test_an_adapter_in_use_is_never_evicted_and_others_wait_for_room(adapter_dirs) -> None:  # type: ignore[no-untyped-def]
    with _engine(max_loaded_adapters=1) as engine:  # one slot
        for name in ("r8-qv", "r16-all"):
            engine.register_adapter(name, str(adapter_dirs[name]))
        prompt = corpus_prompts(engine, 1)[0]
        long = SamplingParams(max_new_tokens=40, ignore_eos=True)
        holder = [
            e.token.id async for e in engine.stream(GenerationRequest(prompt, long, adapter_id="r8-qv"))
        ]
        first = engine.stream(GenerationRequest(prompt, long, adapter_id="r8-qv"))
        tokens = [(await first.__anext__()).token.id]  # running: it holds the only slot
        waiting = asyncio.ensure_future(asyncio.to_thread(_tokens, engine, prompt, "r16-all"))
        tokens += [event.token.id async for event in first]  # never evicted mid-run: same as alone
        assert tokens == holder == oracle_greedy(ARCH, prompt, "r8-qv", 40)
        assert await waiting == oracle_greedy(ARCH, prompt, "r16-all", TOKENS)  # admitted after


async def test_other_adapters_keep_decoding_while_a_cold_adapter_loads(adapter_dirs, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    read = AdapterReader.__call__
    reads_of_slow, entered, release = [], threading.Event(), threading.Event()

    def slow_disk(self, name, source, revision):  # type: ignore[no-untyped-def]
        if name == "slow":
            reads_of_slow.append(threading.current_thread().name)
            if len(reads_of_slow) == 2:  # the loader thread reads it again: a slow disk, held by the test
                entered.set()
                release.wait(60)
        return read(self, name, source, revision)

    monkeypatch.setattr(AdapterReader, "__call__", slow_disk)
    # A 1-byte host cache keeps only the adapter read last: the loader must read "slow" again.
    options = {
        "max_loaded_adapters": 2,
        "adapter_host_memory": 1,
        "adapters": {"fast": str(adapter_dirs["r8-qv"])},
    }
    with _engine(**options) as engine:
        engine.register_adapter("slow", str(adapter_dirs["r16-all"]))
        engine.register_adapter("evictor", str(adapter_dirs["r64-rslora"]))
        prompt = corpus_prompts(engine, 1)[0]
        counted = [0]
        long = SamplingParams(max_new_tokens=400, ignore_eos=True)

        async def fast() -> None:
            async for _ in engine.stream(GenerationRequest(prompt, long, adapter_id="fast")):
                counted[0] += 1

        runner = asyncio.create_task(fast())
        prepared = engine.prepare(GenerationRequest(prompt, GREEDY, adapter_id="slow"))  # read 1
        engine.prepare(GenerationRequest(prompt, adapter_id="evictor"))  # pushes "slow" out of the host cache
        slow = asyncio.create_task(_collect(engine, prepared))
        assert await asyncio.to_thread(entered.wait, 60)  # the loader is inside its read of "slow"
        before = counted[0]
        await asyncio.wait_for(_until(lambda: counted[0] >= before + 10), 60)  # "fast" keeps decoding
        assert not slow.done()
        release.set()
        tokens = await slow
        runner.cancel()
    assert reads_of_slow[1] == "lorafleet-adapter-loader"
    assert tokens == oracle_greedy(ARCH, prompt, "r16-all", TOKENS)


async def _until(condition) -> None:  # type: ignore[no-untyped-def]
    while not condition():
        await asyncio.sleep(0.01)


async def _collect(engine: Engine, prepared) -> list[int]:  # type: ignore[no-untyped-def]
    return [event.token.id async for event in engine.stream(prepared)]
