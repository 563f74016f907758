"""Run the application: in the foreground with graceful SIGTERM / SIGINT handling
(``serve``), or on a background thread for tests and embedding (``BackgroundServer``).

Shutdown order: stop listening -> ``/readyz`` turns 503 and open streams are flushed
and closed -> requests already received finish (up to ``drain_timeout_s``) -> the
batcher drains and stops -> the engine is released.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

from aiohttp import web

logger = logging.getLogger(__name__)


async def serve(app: web.Application, host: str, port: int, drain_timeout_s: float = 30.0,
                stop: asyncio.Event | None = None, on_started: Callable[[str, int], None] | None = None) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM / SIGINT (main thread) or ``stop``
    is set, then drain in-flight work and return.

    Args:
        app: from ``runtime.server.app.create_app``.
        host, port: where to listen (port 0: any free port).
        drain_timeout_s: how long requests already received may take to finish.
        stop: set it to shut down (used when not on the main thread).
        on_started: called with the bound (host, port) once listening.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=drain_timeout_s, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        logger.info("listening on http://%s:%d", bound_host, bound_port)
        if on_started:
            on_started(bound_host, bound_port)
        await stop.wait()
        logger.info("shutting down: draining in-flight requests (up to %.0f s)", drain_timeout_s)
    finally:
        await runner.cleanup()
        for sig in signals:
            loop.remove_signal_handler(sig)
    logger.info("stopped")


class BackgroundServer:
    """``app`` served on its own thread and event loop; a context manager.

        with BackgroundServer(create_app(rec, cfg), port=0) as srv:
            requests.get(srv.url + "/healthz")
    """

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0, drain_timeout_s: float = 30.0):
        self.app, self.host, self.port, self.drain_timeout_s = app, host, port, drain_timeout_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread = threading.Thread(target=self._main, name="emotech-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"server did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError("server failed to start") from self._error
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown, as on SIGTERM; returns when the thread has ended."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        async def run() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

            def started(host: str, port: int) -> None:
                self.host, self.port = host, port
                self._started.set()

            await serve(self.app, self.host, self.port, self.drain_timeout_s, self._stop, started)

        try:
            asyncio.run(run())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._error = e
            self._started.set()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
