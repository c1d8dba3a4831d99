"""The engine is built on a thread of its own that exits: the caller's thread runs no torch work."""

from __future__ import annotations

import threading

import pytest
from lorafleet.runtime.engine import Engine, GenerationRequest, SamplingParams
from lorafleet.runtime.engine.build_thread import on_build_thread

from tests.fixtures import tiny_model


def test_returns_what_the_build_returns_from_another_thread_that_exits() -> None:
    seen: list[threading.Thread] = []

    def build() -> int:
        seen.append(threading.current_thread())
        return 42

    assert on_build_thread(build) == 42
    assert seen[0] is not threading.current_thread()
    assert seen[0].name == "lorafleet-engine-build"
    assert not seen[0].is_alive()


def test_raises_what_the_build_raises() -> None:
    def build() -> None:
        raise FileNotFoundError("no such model")

    with pytest.raises(FileNotFoundError, match="no such model"):
        on_build_thread(build)


def test_engine_loads_on_the_build_thread_and_serves_from_its_loop() -> None:
    threads: set[str] = set()
    engine = Engine.from_pretrained(
        tiny_model("mistral"), progress=lambda _: threads.add(threading.current_thread().name)
    )
    assert threads == {"lorafleet-engine-build"}
    with engine:
        [result] = engine.generate([GenerationRequest("The adapter", SamplingParams(max_new_tokens=2))])
    assert len(result.tokens) == 2


def test_a_bad_model_fails_in_the_caller(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match="config.json"):
        Engine.from_pretrained(tmp_path, progress=lambda _: None)
