"""Run the application: in the foreground with graceful SIGTERM / SIGINT handling
(``serve``), or on a background thread for tests and embedding (``BackgroundServer``).

The listening socket is created here, under the app's ``ConnectionGuard``
(``runtime.server.connections``): connection cap, head and keep-alive deadlines.

Shutdown order: stop listening -> ``/readyz`` turns 503 and open streams are flushed and
closed -> every request already received is answered, including requests pipelined
behind another on one connection, and idle connections are closed (up to
``drain_timeout_s``) -> the batcher drains and stops -> the engine is released.

Logging: one access line per request at INFO on ``runtime.server.runner.access``
(method, path, status, body bytes, milliseconds, client); a client's malformed request
(an HTTP parse error, a body that does not decode) is one DEBUG line from aiohttp's
protocol, not an ERROR traceback.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import sys
import threading
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from runtime.server.connections import ConnectionGuard, accept_burst
from runtime.server.state import STATE

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(f"{__name__}.access")

FD_RESERVE = 64  # file descriptors kept for the model, the VAD, threads and logs beyond max_connections
SHUTDOWN_GRACE_S = 2.0  # after the drain: how long aiohttp waits for handlers before cancelling them


class AccessLog(AbstractAccessLogger):
    """One line per request: method, path, status, body bytes, milliseconds, client.

    aiohttp calls it once a response is written (or the client is gone), the one hook it
    has at that moment, so it also tells the connection guard (``guard``, set on the
    subclass ``serve`` makes) that the connection now waits for its next request."""

    guard: ConnectionGuard | None = None

    def log(self, request, response, time: float) -> None:  # noqa: A002 - aiohttp's signature
        if self.guard is not None:
            self.guard.finished(request.transport)
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info("%s %s %d %d B %.1f ms %s", request.method, request.path, response.status, response.body_length,
                             time * 1000.0, request.remote)

    @property
    def enabled(self) -> bool:
        return True  # always called: the guard needs it whatever the log level


class ProtocolLog:
    """The logger aiohttp's protocol reports errors to: a client's malformed request or a
    connection it dropped is a DEBUG line; anything else an ERROR with its traceback."""

    CLIENT_ERRORS = (HttpProcessingError, web.RequestPayloadError, ConnectionError)

    def __init__(self, log: logging.Logger):
        self._log = log

    def exception(self, msg: str, *args, exc_info: object = True, **kwargs) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, self.CLIENT_ERRORS) or isinstance(getattr(exc, "__cause__", None), self.CLIENT_ERRORS):
            self._log.debug(msg + " (%s: %s)", *args, type(exc).__name__, exc)
        else:
            self._log.error(msg, *args, exc_info=exc_info, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._log, name)


def queued_requests(handler: object) -> int:
    """Requests aiohttp has parsed on a connection but not yet handed to the app (pipelined
    behind the one being answered). aiohttp keeps them in ``RequestHandler._messages``,
    which no public API exposes; without it the drain waits only for running handlers."""
    return len(getattr(handler, "_messages", ()))


def fit_open_files(max_connections: int) -> int:
    """``max_connections``, or fewer if this process may not open that many files: the soft
    ``RLIMIT_NOFILE`` is raised towards the hard one first (Linux/macOS)."""
    want = max_connections + FD_RESERVE
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    except (ValueError, OSError):
        return max_connections
    if soft != resource.RLIM_INFINITY and soft < want:
        fitted = max(1, soft - FD_RESERVE)
        logger.warning("max_connections %d lowered to %d: the process may open %d files (ulimit -n)", max_connections, fitted, soft)
        return fitted
    return max_connections


async def drain(app: web.Application, runner: web.AppRunner, timeout: float) -> bool:
    """Answer what was received and close connections as they go idle, for up to
    ``timeout`` seconds; True if nothing was left."""
    state = app[STATE]
    await state.stop_accepting()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        busy = state.connections.close_idle(queued_requests)
        if busy == 0:
            return True
        if loop.time() >= deadline:
            logger.warning("drain timed out after %.0f s with %d connections still busy", timeout, busy)
            return False
        await asyncio.sleep(0.02)


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
    state = app[STATE]
    guard = state.connections
    guard.max_connections = fit_open_files(guard.max_connections)
    signals = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
    # aiohttp's own keep-alive timer backs the guard's deadlines up; the guard acts first
    backstop_s = max(state.config.header_timeout_s, state.config.keepalive_s) + 1.0
    access_log_class = type("AccessLog", (AccessLog,), {"guard": guard})
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S, keepalive_timeout=backstop_s,
                           access_log=access_logger, access_log_class=access_log_class,
                           logger=ProtocolLog(logging.getLogger("aiohttp.server")))
    await runner.setup()
    listener: asyncio.AbstractServer | None = None
    try:
        listener = await loop.create_server(guard.protocol_factory(runner.server), host, port,
                                            backlog=accept_burst(guard.max_connections))
        bound_host, bound_port = listener.sockets[0].getsockname()[:2]
        logger.info("listening on http://%s:%d", bound_host, bound_port)
        if on_started:
            on_started(bound_host, bound_port)
        await stop.wait()
        logger.info("shutting down: draining in-flight requests (up to %.0f s)", drain_timeout_s)
        listener.close()
        await drain(app, runner, drain_timeout_s)
    finally:
        if listener is not None:
            listener.close()
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
