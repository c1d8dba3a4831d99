"""The server process's life: listen at once, load the model, serve, stop on a signal, and go
down for a restart when a shard of a sharded model dies (`cli.main` calls `serve`)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from lorafleet.runtime.server.config import ServerConfig

logger = logging.getLogger("lorafleet.runtime.server")

DOWN_503_S = 2.0  # a replica whose shard died answers 503 this long, then stops
EXIT_GRACE_S = 15.0  # a replica whose shard died exits at most this long after


def serve(config: ServerConfig) -> int:
    """Listens at once (503 until ready), loads the model on this (main) thread, serves."""
    import uvicorn
    from lorafleet.runtime.server.app import create_app
    from lorafleet.runtime.server.loading import load_engine

    app = create_app(config, load_on_startup=False)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.hostname,
            port=config.port,
            log_level=config.log_level,
            log_config=None,  # logging is configured already (stderr or the rotated --log-file)
            timeout_graceful_shutdown=30,
        )
    )
    http = threading.Thread(target=server.run, name="lorafleet-http", daemon=True)
    stop = _install_stop_handlers(server, app.state.context.holder)
    http.start()
    while not server.started and http.is_alive():
        http.join(0.05)
    if not http.is_alive():  # uvicorn logged why (e.g. the port is taken)
        return 1
    logger.info("listening on http://%s:%d; loading %s", config.hostname, config.port, config.engine.model_id)
    try:
        if not stop.is_set():
            app.state.context.holder.load(lambda progress: load_engine(config, progress))
    except KeyboardInterrupt:  # SIGTERM/SIGINT while loading: a normal stop
        logger.info("stopped while loading the model")
        server.should_exit = True
        http.join(60)
        return 0
    except BaseException:  # noqa: BLE001 - logged by the holder; the exit code tells the launcher
        server.should_exit = True
        http.join(60)
        return 1
    engine = app.state.context.holder.engine
    if engine is not None:
        engine.on_failure = lambda reason: _exit_for_restart(server)
        if engine.failure is not None:  # died before it could be told
            _exit_for_restart(server)
    while http.is_alive():
        http.join(0.5)
    return 1 if engine is not None and engine.failure is not None else 0


def _exit_for_restart(server: Any) -> None:
    """A shard died: /health answers 503 from now on (the holder sees `engine.failure`), for
    DOWN_503_S so that load balancers see it; then stop serving and exit non-zero so the
    launcher's reconciler restarts the replica. A loop stuck in a collective with the dead shard
    cannot hold the exit: the process ends EXIT_GRACE_S later."""

    def stop() -> None:
        server.should_exit = True

    for delay, action in ((DOWN_503_S, stop), (DOWN_503_S + EXIT_GRACE_S, lambda: os._exit(1))):
        timer = threading.Timer(delay, action)
        timer.daemon = True
        timer.start()


def _install_stop_handlers(server: Any, holder: Any) -> threading.Event:
    """SIGTERM/SIGINT stop the server; during the model load they abort it."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        first = not stop.is_set()
        stop.set()
        server.should_exit = True
        if first and holder.engine is None and holder.load_error is None:
            raise KeyboardInterrupt  # interrupts a load in progress on this thread

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    return stop
