"""Admission, the token-rate meter and the error body, without a model."""

from __future__ import annotations

import pytest
from lorafleet.runtime.server.errors import InputValidationError, OverloadedError
from lorafleet.runtime.server.metrics import ServerMetrics, TokenRateMeter
from lorafleet.runtime.server.state import AdmissionGate, EngineHolder


def test_gate_refuses_past_max_concurrent_requests_and_release_is_idempotent():
    gate = AdmissionGate(2)
    first, _second = gate.acquire(), gate.acquire()
    with pytest.raises(OverloadedError, match="--max-concurrent-requests=2"):
        gate.acquire()
    first()
    first()  # a second release must not free a slot someone else holds
    assert gate.in_flight == 1
    gate.acquire()
    assert gate.in_flight == 2


def test_token_rate_counts_only_the_last_window():
    now = [100.0]
    meter = TokenRateMeter(window_s=10.0, clock=lambda: now[0])
    for _ in range(30):
        meter.add(1)
    assert meter.rate() == 3.0
    now[0] += 11
    assert meter.rate() == 0.0


def test_validation_errors_have_tgis_body():
    error = InputValidationError("`top_k` must be strictly positive")
    assert error.to_json() == {
        "error": "Input validation error: `top_k` must be strictly positive",
        "error_type": "validation",
    }
    assert error.status_code == 422


def test_metrics_before_the_model_loads_report_not_ready_and_an_empty_queue():
    holder = EngineHolder()
    text = ServerMetrics(holder, AdmissionGate(4)).render().decode()
    assert "lorafleet_ready 0.0" in text
    assert "lorafleet_queue_size 0.0" in text
    assert "lorafleet_max_concurrent_requests 4.0" in text
