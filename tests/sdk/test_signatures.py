"""The async SDK mirrors the sync one: same functions, methods, parameters and defaults."""

from __future__ import annotations

import inspect

import lorafleet
import pytest
from lorafleet import aio, endpoints


def _shape(fn: object) -> list[tuple[str, object, object]]:
    """(name, kind, default) of each parameter: annotations differ (sync vs async types), the rest may not."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


def _public_functions(module: object) -> dict[str, object]:
    return {
        name: value
        for name, value in vars(module).items()
        if name.endswith("_inference_endpoint") or name.endswith("_inference_endpoints")
    }


def test_every_endpoint_function_has_an_async_twin_with_the_same_parameters() -> None:
    sync, async_ = _public_functions(endpoints), _public_functions(aio)
    assert sync.keys() == async_.keys() and len(sync) >= 8
    for name, fn in sync.items():
        assert inspect.iscoroutinefunction(async_[name]), name
        assert _shape(fn) == _shape(async_[name]), name


ASYNC_NAME = {"aclose": "close"}  # httpx's convention: an async close is `aclose`


def _public_methods(cls: type) -> dict[str, object]:
    return {
        ASYNC_NAME.get(name, name): member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (inspect.isfunction(member) or inspect.ismethod(member))
    }


@pytest.mark.parametrize(
    ("sync_cls", "async_cls"),
    [
        (lorafleet.InferenceEndpoint, lorafleet.AsyncInferenceEndpoint),
        (lorafleet.Client, lorafleet.AsyncClient),
    ],
)
def test_sync_and_async_classes_have_the_same_methods_and_parameters(sync_cls: type, async_cls: type) -> None:
    sync, async_ = _public_methods(sync_cls), _public_methods(async_cls)
    assert sync.keys() == async_.keys()
    for name, method in sync.items():
        assert _shape(method) == _shape(async_[name]), f"{sync_cls.__name__}.{name}"
