"""A replica's log records are bounded whatever a client sends; tracebacks keep what failed."""

from __future__ import annotations

import logging

from lorafleet.runtime.server.logs import MAX_MESSAGE_CHARS, MAX_RECORD_CHARS, CappedFormatter


def _record(message: str, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("lorafleet.test", logging.WARNING, __file__, 1, "%s", (message,), exc_info)  # type: ignore[arg-type]


def test_a_message_quoting_client_input_is_cut_and_says_how_long_it_was() -> None:
    text = CappedFormatter("%(message)s").format(_record("x" * 1_000_000))
    assert len(text) < MAX_MESSAGE_CHARS + 100 and "1000000 characters in all" in text


def test_a_long_traceback_keeps_its_first_line_and_the_error_at_its_end() -> None:
    def fail(depth: int) -> None:
        if depth == 0:
            raise ValueError("the model file is corrupt")
        fail(depth - 1)

    try:
        fail(300)
    except ValueError:
        import sys

        record = _record("model load failed", sys.exc_info())
    text = CappedFormatter("%(message)s").format(record)
    assert len(text) <= MAX_RECORD_CHARS + 20
    assert text.startswith("model load failed") and text.endswith("ValueError: the model file is corrupt")


def test_short_records_are_untouched() -> None:
    assert CappedFormatter("%(levelname)s %(message)s").format(_record("ready")) == "WARNING ready"
