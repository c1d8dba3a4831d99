"""The server's two pieces of state: the engine being loaded/served, and the admission count."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from lorafleet.runtime.server.errors import NotReadyError, OverloadedError

if TYPE_CHECKING:
    from lorafleet.runtime.engine import Engine

logger = logging.getLogger("lorafleet.runtime.server")


class EngineHolder:
    """Owns the engine while it loads and serves; `/health` reports 503 until `engine` is set.

    The HTTP listener answers from the start. The CLI loads the engine from the process's main
    thread, which waits while the engine builds itself on a thread of its own (so that on the
    CPU the engine loop's OpenMP pool is the process's only one: docs/runtime.md, "CPU
    threads"). Only embedders use `start_loading`.
    """

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.phase = "starting"
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def load(self, load: Callable[[Callable[[str], None]], Engine]) -> None:
        """Loads the engine, the calling thread waiting (the CLI calls it from the main thread).

        Raises what `load` raises, after recording it for `/health` and the log.
        """

        def progress(message: str) -> None:
            self.phase = message
            logger.info("loading: %s", message)

        try:
            engine = load(progress)
        except KeyboardInterrupt:
            self.phase = "stopped"
            raise
        except BaseException as e:
            logger.exception("model load failed")
            self.load_error = f"{type(e).__name__}: {e}"
            self.phase = "failed"
            raise
        with self._lock:
            if self._closed:  # the server stopped while we were loading
                engine.shutdown()
                return
            self.engine = engine
        self.phase = "ready"
        logger.info("model loaded and ready")

    def start_loading(
        self, load: Callable[[Callable[[str], None]], Engine], on_fatal: Callable[[], None]
    ) -> None:
        """Loads on a background thread (for an app embedded in another process's server)."""

        def run() -> None:
            try:
                self.load(load)
            except BaseException:  # noqa: BLE001 - recorded by load(); tell the owner
                on_fatal()

        self._thread = threading.Thread(target=run, name="lorafleet-engine-loader", daemon=True)
        self._thread.start()

    def require(self) -> Engine:
        """The engine, or a 503 while it is not ready."""
        engine = self.engine
        if engine is None:
            if self.load_error is not None:
                raise NotReadyError(f"Model failed to load: {self.load_error}")
            raise NotReadyError(f"Model is loading ({self.phase})")
        if engine.failure is not None:  # a shard died: the process is exiting for a restart
            raise NotReadyError(f"Model is down: {engine.failure}")
        return engine

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()


class AdmissionGate:
    """Counts requests in flight; refuses with 429 past `max_concurrent_requests`.

    Only the event loop touches it, so it needs no lock.
    """

    def __init__(self, max_concurrent_requests: int) -> None:
        self.max_concurrent_requests = max_concurrent_requests
        self.in_flight = 0

    def acquire(self) -> Callable[[], None]:
        """Admits one request; returns its idempotent release function."""
        if self.in_flight >= self.max_concurrent_requests:
            raise OverloadedError(
                f"Model is overloaded: {self.in_flight} requests in flight "
                f"(--max-concurrent-requests={self.max_concurrent_requests})"
            )
        self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        return release
