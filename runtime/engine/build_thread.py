"""`on_build_thread`: the engine is built on a thread of its own, which exits when it is done.

On the CPU, torch's OpenMP runtime (GNU libgomp in the PyPI wheels) keeps one worker pool for
every thread that ever ran a parallel region, for as long as that thread lives. Loading a model
runs such regions (copies, dtype conversions), so a model loaded on the caller's thread (the
server's main thread, a notebook's) leaves a pool behind that the engine loop never uses: two
pools on a 2-CPU host oversubscribe it, and libgomp then puts every worker to sleep between
parallel regions, so each of a decode step's hundreds of regions pays a wake-up. Built here, the
only pool left is the engine loop's: the engine thread owns torch's CPU work (docs/runtime.md,
"CPU threads (OpenMP)").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_build_thread(build: Callable[[], T]) -> T:
    """Runs `build` on a new thread and returns what it returns, or raises what it raises.

    The caller waits. A signal that interrupts the wait (Ctrl-C, the server's SIGTERM) raises in
    the caller at once; the build thread is a daemon and ends with the process.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(build())
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            failure.append(e)

    thread = threading.Thread(target=run, name="lorafleet-engine-build", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
