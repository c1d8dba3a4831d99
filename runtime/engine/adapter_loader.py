"""`AdapterLoader`: writes newly placed adapters into their pages on a thread of its own.

The engine loop never waits for an adapter's weights: the scheduler places a cold adapter (slot
and pages, state *loading*), the loop hands the write to this thread and keeps stepping the
batch; when the write is done, the loader posts `on_done(key, residence, written, error)` (the
loop's inbox), and the loop points the page tables at it and admits its requests. Reading the
weights from the host cache (or from disk again, after a host-cache eviction) happens here too.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from lorafleet.runtime.adapters import AdapterStore, Residence
from lorafleet.runtime.engine.model_runner import AdapterWrite, ModelRunner

logger = logging.getLogger(__name__)

OnDone = Callable[[str, Residence, AdapterWrite | None, BaseException | None], None]


class AdapterLoader:
    def __init__(self, runner: ModelRunner, store: AdapterStore, on_done: OnDone) -> None:
        self._runner = runner
        self._store = store
        self._on_done = on_done
        self._jobs: queue.Queue[tuple[str, Residence] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lorafleet-adapter-loader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def load(self, key: str, residence: Residence) -> None:
        """Writes `key`'s weights into `residence` (placed by the scheduler), then reports."""
        self._jobs.put((key, residence))

    def _run(self) -> None:
        if self._runner.device.type == "cuda":
            import torch

            torch.cuda.set_device(self._runner.device)
        while (job := self._jobs.get()) is not None:
            key, residence = job
            try:
                written = self._runner.write_pages(residence, self._store.weights(key))
            except Exception as e:  # unreadable or changed files: its requests fail, the engine goes on
                logger.warning("adapter %s failed to load: %s", key.rpartition("@")[0][:64], e)
                self._on_done(key, residence, None, e)
            else:
                self._on_done(key, residence, written, None)
