"""Connection limits below aiohttp: a cap on open connections, a deadline for each
request's head, an idle timeout between requests, and the graceful drain on shutdown.

aiohttp's server has no header-read timeout and no connection cap: a client that opens
connections and sends nothing (or a header line every few seconds) holds a file
descriptor each until the process runs out of them. ``ConnectionGuard`` wraps the
protocol factory aiohttp gives ``loop.create_server`` and tracks each connection in one
of four states:

* ``head``: waiting for a request's head (from the moment the connection opens, or from
  the first byte after a response); closed after ``header_timeout_s``;
* ``idle``: a keep-alive connection between requests; closed after ``keepalive_s``;
* ``body``: the head is in and the handler runs, its body may still be arriving (the
  handler's own ``timeout_s`` bounds that: 408);
* ``busy``: the body is in; the request is being decoded, inferred or answered (until
  its response is written), or the connection is an open ``/v1/stream`` (which has its
  own idle timeout).

At ``max_connections`` a new connection displaces the ``idle``, ``head`` or ``body``
connection that has heard nothing from its client for longest (never one opened in the
last ``EVICT_GRACE_S``); if there is none, the new one is answered 503 and closed. Slow clients therefore cost at most
``max_connections`` file descriptors and never keep an ordinary client out.

The server reports the states, keyed by the request's transport: ``reading`` when a
request's head has been parsed and ``working`` when its body is in or its response is
being written (``runtime.server.app``), ``finished`` once the response is written
(``runtime.server.runner``'s access log, which aiohttp calls at that moment).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

HEAD, IDLE, BODY, BUSY = "head", "idle", "body", "busy"
# Which connections make room at the cap, first to last (busy ones never do).
_EVICTABLE = (IDLE, HEAD, BODY)
# Seconds a connection is never displaced after it opens: asyncio accepts a burst of
# connections (``accept_burst``) before it reads from any, and a client's head, sent right
# after its connect, must get the chance to arrive. Short, so that under a flood of new
# connections there is always an older one to displace.
EVICT_GRACE_S = 0.02


def accept_burst(max_connections: int) -> int:
    """The listen backlog, which is also how many connections asyncio accepts per loop
    iteration: at most half the cap, so that a burst displaces only connections older than
    the one before it, never a connection whose head has not yet been read."""
    return max(1, min(128, max_connections // 2))
REPORT_EVERY_S = 10.0  # at the connection cap, one log line per this many seconds
# Bytes a request head may have (aiohttp's own limits, 8190 bytes a line and 128 lines,
# are checked after this; real heads are well under 8 kB).
MAX_HEAD_BYTES = 64 * 1024


class _Conn:
    __slots__ = ("transport", "handler", "state", "opened", "since", "first_byte", "timer", "peer")

    def __init__(self, transport: asyncio.Transport, now: float):
        self.transport = transport
        self.handler: asyncio.Protocol | None = None  # aiohttp's RequestHandler
        self.state = HEAD
        self.opened = now  # loop time, seconds
        self.since = now  # when it entered its state (loop time, seconds)
        self.first_byte = False  # whether part of a request's head has arrived (state head)
        self.timer: asyncio.TimerHandle | None = None
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"


class ConnectionGuard:
    """Caps open connections and enforces head and keep-alive deadlines (see the module doc).

    Args:
        max_connections: open connections at most.
        header_timeout_s: seconds a request's head may take to arrive.
        keepalive_s: seconds an idle keep-alive connection stays open.
        on_close: called with a reason ("header_timeout", "idle", "evicted", "refused")
            for each connection the guard closes (the server's metrics).
    """

    def __init__(self, max_connections: int, header_timeout_s: float, keepalive_s: float,
                 on_close: Callable[[str], None] | None = None):
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.keepalive_s = keepalive_s
        self.on_close = on_close
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        # connections per state in the order they entered it: the first is the oldest
        self._by_state: dict[str, dict[_Conn, None]] = {s: {} for s in (HEAD, IDLE, BODY, BUSY)}
        # idle, head and body connections, the one that has waited longest for its client first
        # (moved to the end whenever bytes arrive or it starts waiting)
        self._waiting: dict[_Conn, None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._at_cap = {"evicted": 0, "refused": 0}  # since the last report
        self._reported_at: float | None = None  # loop time of the last cap report

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._conns)

    def count(self, state: str) -> int:
        """Open connections in ``state`` (``head``, ``idle``, ``body`` or ``busy``)."""
        return len(self._by_state[state])

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that puts ``inner``'s
        protocols (aiohttp's ``runner.server``) under this guard."""
        return lambda: _GuardedProtocol(self, inner)

    # ------------------------------------------------------------ handler reports

    def reading(self, transport: asyncio.BaseTransport | None) -> None:
        """A request's head arrived; its handler runs and may be reading the body."""
        self._move(transport, BODY, None)

    def working(self, transport: asyncio.BaseTransport | None) -> None:
        """The request's body is in: the connection is never displaced or timed out here."""
        self._move(transport, BUSY, None)

    def finished(self, transport: asyncio.BaseTransport | None) -> None:
        """The response is written: the connection waits for the next request."""
        self._move(transport, IDLE, self.keepalive_s)

    # ------------------------------------------------------------ shutdown

    def close_idle(self, queued: Callable[[asyncio.Protocol], int]) -> int:
        """Close every connection that waits for its client (a keep-alive one, or one whose
        next request's head is incomplete) and has no request queued (``queued(handler)``:
        requests received but not yet handled, which pipelining leaves behind); return how
        many connections still have work."""
        busy = 0
        for conn in list(self._conns.values()):
            if conn.state in (BODY, BUSY) or (conn.handler is not None and queued(conn.handler)):
                busy += 1
            else:
                self._close(conn, None)
        return busy

    # ------------------------------------------------------------ internals

    def _admit(self, transport: asyncio.Transport, proto: _GuardedProtocol) -> _Conn | None:
        loop = self._loop = self._loop or asyncio.get_running_loop()
        if len(self._conns) >= self.max_connections:
            victim = self._oldest_waiting(loop.time() - EVICT_GRACE_S)
            if victim is None:
                self._refuse(transport)
                return None
            logger.debug("connection cap (%d) reached: closing the %s connection from %s (%.1f s in that state)",
                         self.max_connections, victim.state, victim.peer, loop.time() - victim.since)
            self._close(victim, "evicted")
        conn = _Conn(transport, loop.time())
        self._conns[transport] = conn
        self._by_state[HEAD][conn] = None
        self._waiting[conn] = None
        self._arm(conn, self.header_timeout_s)
        return conn

    def _oldest_waiting(self, opened_before: float) -> _Conn | None:
        """The connection to displace: of those opened before ``opened_before`` and waiting
        for their client (idle, head or body), the one that has heard nothing from it for
        longest: a slow or silent sender, never a client whose bytes are streaming in."""
        for conn in self._waiting:
            if conn.opened < opened_before:
                return conn
        return None

    def _refuse(self, transport: asyncio.Transport) -> None:
        _answer(transport, "503 Service Unavailable", {
            "code": "too_many_connections",
            "message": f"the server has {self.max_connections} connections open, all of them busy; retry shortly",
            "limit": "max_connections", "max": self.max_connections}, "Retry-After: 1\r\n")
        self._count("refused")

    def _too_large_head(self, conn: _Conn) -> None:
        self._forget(conn)
        _answer(conn.transport, "431 Request Header Fields Too Large", {
            "code": "head_too_large", "message": f"the request head is over {MAX_HEAD_BYTES} bytes",
            "limit": "max_head_bytes", "max": MAX_HEAD_BYTES})

    def _move(self, transport: asyncio.BaseTransport | None, state: str, timeout: float | None) -> None:
        conn = self._conns.get(transport) if transport is not None else None
        if conn is None:
            return
        del self._by_state[conn.state][conn]
        conn.state, conn.since, conn.first_byte = state, self._loop.time(), False
        self._by_state[state][conn] = None
        self._waiting.pop(conn, None)
        if state in _EVICTABLE:
            self._waiting[conn] = None
        self._arm(conn, timeout)

    def _data(self, conn: _Conn) -> None:
        if conn.state == IDLE:  # the next request's head begins
            self._move(conn.transport, HEAD, self.header_timeout_s)
        elif conn.state in _EVICTABLE:  # it has just heard from its client: the last to displace
            del self._waiting[conn]
            self._waiting[conn] = None
        conn.first_byte = True

    def _arm(self, conn: _Conn, timeout: float | None) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        conn.timer = None if timeout is None else self._loop.call_later(timeout, self._expire, conn)

    def _expire(self, conn: _Conn) -> None:
        conn.timer = None
        if self._conns.get(conn.transport) is not conn or conn.state not in (HEAD, IDLE):
            return
        reason = "header_timeout" if conn.state == HEAD else "idle"
        logger.debug("closing %s connection from %s after %.1f s", conn.state, conn.peer, self._loop.time() - conn.since)
        self._close(conn, reason)

    def _close(self, conn: _Conn, reason: str | None) -> None:
        self._forget(conn)
        conn.transport.close()
        if reason:
            self._count(reason)

    def _count(self, reason: str) -> None:
        """Report a closed connection to ``on_close``, and at the cap, once per
        ``REPORT_EVERY_S``, log how many were displaced or refused (one line, however many)."""
        if self.on_close:
            self.on_close(reason)
        if reason in ("evicted", "refused"):
            self._at_cap[reason] += 1
            now = self._loop.time() if self._loop else 0.0
            if self._reported_at is None or now - self._reported_at >= 6 * REPORT_EVERY_S:  # a new episode
                logger.warning("reached the connection cap (%d): closing idle or slow connections to make room "
                               "(a count follows every %.0f s while it lasts)", self.max_connections, REPORT_EVERY_S)
                self._at_cap, self._reported_at = {"evicted": 0, "refused": 0}, now
            elif now - self._reported_at >= REPORT_EVERY_S:
                logger.warning("at the connection cap (%d): %d idle or slow connections closed to make room and %d new ones "
                               "refused in the last %.0f s", self.max_connections, self._at_cap["evicted"],
                               self._at_cap["refused"], now - self._reported_at)
                self._at_cap, self._reported_at = {"evicted": 0, "refused": 0}, now

    def _forget(self, conn: _Conn) -> None:
        if self._conns.get(conn.transport) is conn:
            del self._conns[conn.transport]
            del self._by_state[conn.state][conn]
            self._waiting.pop(conn, None)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None


def _answer(transport: asyncio.Transport, status: str, error: dict, headers: str = "") -> None:
    """Write a JSON error response on a connection aiohttp never saw, and close it."""
    body = json.dumps({"error": error}, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}"
            "Connection: close\r\n\r\n").encode()
    try:
        transport.write(head + body)
    finally:
        transport.close()


class _GuardedProtocol(asyncio.Protocol):
    """Holds a new connection's bytes until its first request head is complete, then
    hands the connection to aiohttp's protocol (made only then: a connection that never
    completes a head costs a socket and this object, no aiohttp handler or task); reports
    arriving bytes to the guard."""

    __slots__ = ("guard", "factory", "conn", "inner", "transport", "head")

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]):
        self.guard, self.factory = guard, factory
        self.conn: _Conn | None = None
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()  # the first request's bytes until its head is complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn = self.guard._admit(transport, self)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.conn is None or self.transport is None:
            return
        self.guard._data(self.conn)
        if self.inner is None:
            seen = len(self.head)
            self.head += data
            # the head ends at an empty line (CRLF CRLF; a bare LF LF from lenient clients)
            start = max(seen - 3, 0)
            if self.head.find(b"\r\n\r\n", start) < 0 and self.head.find(b"\n\n", start) < 0:
                if len(self.head) > MAX_HEAD_BYTES:
                    self.guard._too_large_head(self.conn)
                return
            self.inner = self.conn.handler = self.factory()
            self.inner.connection_made(self.transport)
            data, self.head = bytes(self.head), bytearray()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.guard._forget(self.conn)
        if self.inner is not None:
            self.inner.connection_lost(exc)
            self.inner = None
        self.transport = None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
