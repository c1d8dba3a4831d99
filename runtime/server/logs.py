"""Where a replica's log goes, and how big it may get.

Without `--log-file` everything goes to stderr, as before. With it, the whole process's logging
(ours and uvicorn's, access lines included) goes to a size-rotated file with one backup
(`--log-max-bytes`), so a replica's log never grows past twice that however hostile its
traffic. Every record is capped, because log messages may quote client input (a request path,
an error naming a field): a message keeps its first `MAX_MESSAGE_CHARS` characters, and a
record with a long traceback keeps its beginning and its end (the line that says what failed).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_MESSAGE_CHARS = 1_000
MAX_RECORD_CHARS = 8_000
MIN_LOG_MAX_BYTES = 64 * 1024  # several capped records fit in one file before it rotates
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class CappedFormatter(logging.Formatter):
    """Formats a record with its message and traceback cut to bounded sizes."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)  # a copy: other handlers see the original
        message = record.getMessage()
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... [{len(message)} characters in all]"
        record.msg, record.args = message, None
        text = super().format(record)
        if len(text) > MAX_RECORD_CHARS:  # a long traceback: keep the head and what failed
            tail = MAX_RECORD_CHARS - MAX_MESSAGE_CHARS
            text = f"{text[:MAX_MESSAGE_CHARS]}\n[...]\n{text[-tail:]}"
        return text


def configure_logging(level: str, log_file: str | None, max_bytes: int) -> None:
    """Sends every logger (uvicorn's too) to stderr or to `log_file`, rotated at `max_bytes`.

    Raises `OSError` when the file cannot be opened.
    """
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=1, encoding="utf-8"
        )
    handler.setFormatter(CappedFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in UVICORN_LOGGERS:  # uvicorn is started with log_config=None: it adds no handlers
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
