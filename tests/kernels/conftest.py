"""Kernel tests run the Triton kernels on CUDA when there is a GPU, else in Triton's interpreter.

TRITON_INTERPRET must be set before `lorafleet.kernels.lora` is imported (Triton decides at
decoration time); the dispatcher imports that module lazily, so setting it here is early enough.
"""

from __future__ import annotations

import os

import pytest
import torch
from lorafleet.kernels import backend_for

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(params=["torch", "triton"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using this fixture runs once per path, forced through LORAFLEET_KERNELS."""
    monkeypatch.setenv("LORAFLEET_KERNELS", request.param)
    assert backend_for(DEVICE).name == request.param
    return request.param


@pytest.fixture
def triton_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LORAFLEET_KERNELS", "triton")
    return "triton"
