"""Engine → asyncio event delivery: one wakeup per burst, order kept, closed loops refused."""

from __future__ import annotations

import asyncio
import threading

import pytest
from lorafleet.runtime.engine.delivery import DeliveryRegistry, LoopDelivery


async def test_a_burst_from_another_thread_reaches_every_stream_in_order_with_one_wakeup() -> None:
    loop = asyncio.get_running_loop()
    delivery = LoopDelivery(loop)
    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(4)]
    sinks = [delivery.sink(q.put_nowait) for q in queues]
    wakeups = 0
    real = loop.call_soon_threadsafe

    def counting(callback, *args):  # type: ignore[no-untyped-def]
        nonlocal wakeups
        wakeups += 1
        return real(callback, *args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:

        def engine_step() -> None:  # one decode step: every stream gets its next tokens
            for token in range(3):
                for sink in sinks:
                    sink(token)

        thread = threading.Thread(target=engine_step)
        thread.start()
        thread.join()  # the whole burst is queued before the loop runs again
        got = [[await asyncio.wait_for(q.get(), 10) for _ in range(3)] for q in queues]
    finally:
        del loop.call_soon_threadsafe
    assert got == [[0, 1, 2]] * 4
    assert wakeups == 1


async def test_items_sent_after_a_flush_schedule_a_new_wakeup() -> None:
    delivery = LoopDelivery(asyncio.get_running_loop())
    q: asyncio.Queue[str] = asyncio.Queue()
    sink = delivery.sink(q.put_nowait)
    await asyncio.to_thread(sink, "first")
    assert await asyncio.wait_for(q.get(), 10) == "first"
    await asyncio.to_thread(sink, "second")
    assert await asyncio.wait_for(q.get(), 10) == "second"


def test_a_sink_of_a_closed_event_loop_raises_so_the_engine_drops_the_request() -> None:
    loop = asyncio.new_event_loop()
    sink = LoopDelivery(loop).sink(lambda item: None)
    loop.close()
    with pytest.raises(RuntimeError):
        sink("token")


def test_the_registry_keeps_one_delivery_per_event_loop() -> None:
    registry = DeliveryRegistry()
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert registry.for_loop(first) is registry.for_loop(first)
        assert registry.for_loop(first) is not registry.for_loop(second)
    finally:
        first.close()
        second.close()
