"""``WS /v1/stream``: microphone audio in, one emotion result per utterance out.

Protocol (all JSON messages are text frames):

* server -> client on connect: ``{"type": "ready", "sample_rate": 16000, "window": 512}``
* client -> server, optionally first: ``{"type": "start", "sample_rate": 48000, ...}``
  (``runtime.server.stream_options``), answered by ``{"type": "started", ...}``.
* client -> server: binary frames of little-endian PCM16 mono audio at 16 kHz (or the
  ``start`` message's rate), any length (an even number of bytes); optionally
  ``{"type": "transcript", "text": ...}``, which is attached to the utterance in progress
  (or the next one to start); and ``{"type": "end"}`` when the audio is over.
* server -> client per utterance, in utterance order: ``{"type": "result", "segment",
  "start_s", "end_s", "label", "scores", "modalities", "duration_s", "transcript",
  "transcript_source", "timings_ms", "batch_size", "smoothed": {"label", "scores",
  "half_life_s"}}`` (plus ``"modality_scores": {"audio", "text"}`` when asked for, or
  always from a model whose graph scores each modality on its own), or
  ``{"type": "error", "segment"?, "error": {code, message}}``.
* after ``end`` (or when the server shuts down): the last utterance is closed, every
  pending result is sent, then ``{"type": "done", "segments": N}`` and the socket closes.

Limits (``ServeConfig``): at most ``max_streams`` open streams (then 503 before the
upgrade); frames of at most ``max_frame_bytes`` (a larger one closes the socket with
1009); text frames of at most ``text_frame_limit`` characters; at most
``max_stream_pending`` utterances of one stream in recognition at a time, and audio at
``stream_speed`` times real time on average after a first ``BURST_SECONDS`` (the server
reads no further frames meanwhile, so a fast sender is slowed, not queued); a stream that sends nothing for ``stream_idle_s`` gets an ``idle_timeout``
error and is closed with 1008, and one held back by ``stream_speed`` for
``MAX_THROTTLED_S`` without a break gets a ``too_fast`` error and is closed with 1008.

Utterances are found by Silero VAD (``runtime.server.vad``); their recognition goes
through the same batcher as ``/v1/recognize``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import numpy as np
from aiohttp import WSMsgType, web

from runtime.audio import StreamResampler
from runtime.engines.base import MODALITY_OUTPUTS
from runtime.recognizer import Item
from runtime.server import limits
from runtime.server.limits import ApiError
from runtime.server.smoothing import ScoreSmoother
from runtime.server.state import STATE, ServerState, result_body
from runtime.server.stream_options import StreamOptions, parse_start
from runtime.server.vad import SAMPLE_RATE, WINDOW, Segment, Segmenter, pcm16_to_float

logger = logging.getLogger(__name__)
ENDPOINT = "/v1/stream"
SUBPROTOCOL = "emotech.v1"  # the WebSocket subprotocol the server selects when a client offers it
IDLE_CLOSE_CODE = 1008  # policy violation: nothing sent for stream_idle_s, or too fast for too long
BURST_SECONDS = 10.0  # audio a stream may send at once, beyond its stream_speed pace
# Seconds a stream may be held back without a break before it is closed: a sender that is
# always ahead of stream_speed (or that sent a burst and hung up, leaving megabytes in the
# socket buffers for the server to pace through) would otherwise keep its slot for minutes.
MAX_THROTTLED_S = 10.0


class TooFast(Exception):
    """The stream kept ahead of ``stream_speed`` for ``MAX_THROTTLED_S``."""


def text_frame_limit(max_text_chars: int) -> int:
    """Characters a text frame may have: a transcript of ``max_text_chars`` characters,
    each JSON-escaped to at most 6 (``\\uXXXX``), and the message around it."""
    return 6 * max_text_chars + 256


class StreamSession:
    """One client's stream: VAD state, pending transcript and in-flight results."""

    def __init__(self, state: ServerState, ws: web.WebSocketResponse):
        self.state = state
        self.ws = ws
        self.segmenter = Segmenter(state.vad, state.vad_config)
        self.text: list[str] = []  # transcript for the utterance in progress
        self.tasks: set[asyncio.Task] = set()
        self.count = 0
        # utterances of this stream in recognition at once (queued for the batcher or in it)
        self._recognizing = asyncio.Semaphore(state.config.max_stream_pending)
        self._allowance = BURST_SECONDS * SAMPLE_RATE  # samples the stream may send now (see _pace)
        self._paced_at = asyncio.get_running_loop().time()
        self._throttled_since: float | None = None  # when the stream began to be held back without a break
        self._send_lock = asyncio.Lock()
        self._vad_lock = asyncio.Lock()  # feed() and flush() may come from two tasks (run, shutdown)
        self._finished = asyncio.Event()
        self._finishing = False
        self._close_code = 1000
        self.options = StreamOptions()
        # the graph returns each modality's own scores with the fused ones: per_modality then
        # needs one recognition per utterance, not three
        self.graph_scores_modalities = set(MODALITY_OUTPUTS.values()) <= set(state.recognizer.engine.extra_outputs)
        self.resampler: StreamResampler | None = None  # set by a start message with another rate
        self.smoother = ScoreSmoother(state.config.smoothing_half_life_s)
        self._got_audio = False  # a start message is refused after the first audio frame
        self._started = False  # and after a first one
        self._previous: asyncio.Future | None = None  # set once the previous segment's message is sent

    async def send(self, body: dict) -> None:
        async with self._send_lock:
            if not self.ws.closed:
                try:
                    await self.ws.send_str(json.dumps(body, separators=(",", ":")))
                except (ConnectionError, RuntimeError):
                    pass  # the client went away; its results have nowhere to go

    async def run(self) -> None:
        cfg = self.state.config
        await self.send({"type": "ready", "sample_rate": SAMPLE_RATE, "window": WINDOW})
        max_samples = int(cfg.max_stream_seconds * SAMPLE_RATE)
        while not self._finishing:
            # no frame is read while max_stream_pending utterances wait for results
            while len(self.tasks) >= cfg.max_stream_pending:
                await asyncio.wait(list(self.tasks), return_when=asyncio.FIRST_COMPLETED)
            try:
                msg = await self.ws.receive(timeout=cfg.stream_idle_s)
            except asyncio.TimeoutError:
                await self.send({"type": "error", "error": {"code": "idle_timeout", "message": (
                    f"no frame for {cfg.stream_idle_s:g} s; the stream is closed"), "limit": "stream_idle_s",
                    "max": cfg.stream_idle_s}})
                await self.finish(IDLE_CLOSE_CODE)
                return
            if msg.type == WSMsgType.BINARY:
                try:
                    samples = pcm16_to_float(msg.data)
                except ValueError as e:
                    await self.send({"type": "error", "error": {"code": "bad_frame", "message": str(e)}})
                    continue
                self._got_audio = True
                arriving = samples.size * SAMPLE_RATE // self.options.sample_rate  # at 16 kHz
                if self.segmenter.position + arriving > max_samples:
                    await self.send({"type": "error", "error": {"code": "stream_too_long", "message": (
                        f"a stream may carry at most {cfg.max_stream_seconds:g} s of audio; reconnect"),
                        "limit": "max_stream_seconds", "max": cfg.max_stream_seconds}})
                    break
                try:
                    await self._pace(arriving)
                except TooFast:
                    await self.send({"type": "error", "error": {"code": "too_fast", "message": (
                        f"the stream sent audio faster than {cfg.stream_speed:g} x real time for over {MAX_THROTTLED_S:g} s; "
                        "send it at most that fast (or use /v1/recognize for recordings)"), "limit": "stream_speed",
                        "max": cfg.stream_speed}})
                    await self.finish(IDLE_CLOSE_CODE)
                    return
                self.schedule(await self.segment(self._feed, samples))
            elif msg.type == WSMsgType.TEXT:
                await self.on_text(msg.data)
                if self._finishing:
                    break
            else:  # CLOSE, CLOSING, CLOSED, ERROR (a frame over max_frame_bytes): the client is gone or leaving
                break
        await self.finish(self._close_code)

    async def _pace(self, n: int) -> None:
        """Hold a stream to ``stream_speed`` times real time on average (bursts of up to
        ``BURST_SECONDS`` of audio pass at once): the stream is not read while it waits, so
        a sender faster than that is slowed by TCP, and the streams together cost the
        server at most ``max_streams * stream_speed`` seconds of audio per second. Raises
        ``TooFast`` once it has been held back for ``MAX_THROTTLED_S`` without a break."""
        speed = self.state.config.stream_speed
        if not speed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        rate = speed * SAMPLE_RATE
        self._allowance = min(BURST_SECONDS * SAMPLE_RATE, self._allowance + (now - self._paced_at) * rate)
        self._paced_at = now
        if self._allowance < n:
            if self._throttled_since is None:
                self._throttled_since = now
            elif now - self._throttled_since > MAX_THROTTLED_S:
                raise TooFast
            await asyncio.sleep((n - self._allowance) / rate)
            self._paced_at = loop.time()
            self._allowance = n
        else:
            self._throttled_since = None
        self._allowance -= n

    async def on_text(self, data: str) -> None:
        limit = text_frame_limit(self.state.max_text_chars)
        if len(data) > limit:
            await self.send({"type": "error", "error": {"code": "bad_message", "message": (
                f"a text frame of {len(data)} characters; at most {limit} are accepted"), "limit": "max_text_chars",
                "max": self.state.max_text_chars}})
            return
        try:
            body = limits.parse_json(data, limits.json_values_limit(self.state.max_text_chars))
            kind = body.get("type") if isinstance(body, dict) else None
        except ApiError:
            kind = None
        if kind == "end":
            self._finishing = True
        elif kind == "start":
            await self.on_start(body)
        elif kind == "transcript":
            try:
                text = limits.check_text(body.get("text"), self.state.max_text_chars)
                if text:
                    self.text.append(text)
                    self._cap_text()
            except ApiError as e:
                await self.send({"type": "error", "error": e.body()["error"]})
        else:
            await self.send({"type": "error", "error": {"code": "bad_message", "message": (
                'text frames must be JSON: {"type": "start", ...} first, {"type": "transcript", "text": ...} or {"type": "end"}')}})

    async def on_start(self, body: dict) -> None:
        """Apply a start message; a bad or late one ends the stream (code 1008): audio
        read at the wrong rate would give wrong results."""
        try:
            if self._got_audio or self._started:
                raise ValueError("the start message must come once, before the first audio frame")
            self._started = True
            options = parse_start(body)
        except ValueError as e:
            await self.send({"type": "error", "error": {"code": "invalid_start", "message": str(e)}})
            self._finishing, self._close_code = True, 1008
            return
        self.options = options
        if options.sample_rate != SAMPLE_RATE:
            self.resampler = StreamResampler(options.sample_rate, SAMPLE_RATE)
        if options.smoothing_half_life_s is not None:
            self.smoother = ScoreSmoother(options.smoothing_half_life_s)
        await self.send({"type": "started", "sample_rate": options.sample_rate, "per_modality": options.per_modality,
                         "smoothing_half_life_s": self.smoother.half_life_s})

    def _cap_text(self) -> None:
        """Keep at most the last ``max_text_chars`` characters of the transcripts waiting for
        the next segment (what ``recognize`` would use of them): a client sending text and
        no audio cannot grow the session without bound."""
        limit = self.state.max_text_chars
        if sum(len(t) + 1 for t in self.text) > limit + 1:
            self.text = [" ".join(self.text)[-limit:]]

    async def segment(self, fn, *args) -> list[Segment]:
        """Run the resampler and VAD (``_feed`` or ``_flush``) on the VAD thread, one call at a time."""
        async with self._vad_lock:
            return await asyncio.get_running_loop().run_in_executor(self.state.vad_pool, fn, *args)

    def schedule(self, segments: list[Segment]) -> None:
        loop = asyncio.get_running_loop()
        for seg in segments:
            text = " ".join(self.text) or None
            self.text = []
            self.count += 1
            self.state.metrics.segments.inc()
            previous, self._previous = self._previous, loop.create_future()
            task = loop.create_task(self.recognize(seg, text, previous, self._previous))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def recognize(self, seg: Segment, text: str | None, previous: asyncio.Future | None, sent: asyncio.Future) -> None:
        """Recognise one segment (concurrently with the others), then, once the previous
        segment's message is out, smooth and send its own: results leave in order."""
        try:
            body = await self._result(seg, text)
            if previous is not None:
                await previous
            if body["type"] == "result":
                body["smoothed"] = self.smoother.update(body["scores"], seg.end_s)
            await self.send(body)
        finally:
            if not sent.done():
                sent.set_result(None)

    async def _result(self, seg: Segment, text: str | None) -> dict:
        start = time.perf_counter()
        deadline = time.monotonic() + self.state.config.timeout_s
        head = {"type": "result", "segment": seg.index, "start_s": round(seg.start_s, 3), "end_s": round(seg.end_s, 3)}
        try:
            text = limits.check_text(text, self.state.max_text_chars)  # at most max_text_chars: _cap_text
            async with self._recognizing:
                item, decode_s = await self.state.prepare(seg.audio, text, SAMPLE_RATE, deadline=deadline)
                if self.options.per_modality and item.text is not None and not self.graph_scores_modalities:
                    # the fused item and each modality alone, submitted together: one batch
                    result, audio_only, text_only = await asyncio.gather(
                        self.state.infer(item, deadline, background=True),
                        self.state.infer(Item(item.audio, None), deadline, background=True),
                        self.state.infer(Item(None, item.text, item.text_source), deadline, background=True))
                    per_modality = {"audio": audio_only.prediction.scores, "text": text_only.prediction.scores}
                else:
                    result = await self.state.infer(item, deadline, background=True)
                    own = result.prediction.modality_scores or {}
                    per_modality = {"audio": own.get("audio", result.prediction.scores), "text": own.get("text")}
        except ApiError as e:
            self.state.metrics.requests.inc(ENDPOINT, str(e.status))
            return {"type": "error", "segment": seg.index, "start_s": head["start_s"], "end_s": head["end_s"], "error": e.body()["error"]}
        total_s = time.perf_counter() - start
        self.state.metrics.stage.observe(total_s, "total")
        self.state.metrics.requests.inc(ENDPOINT, "200")
        body = {**head, **result_body(result, decode_s, total_s)}
        if self.options.per_modality:
            body["modality_scores"] = per_modality
        return body

    def _feed(self, samples) -> list[Segment]:
        """Audio at the client's rate: resampled to 16 kHz (on the pool, like the VAD), then segmented."""
        return self.segmenter.feed(samples if self.resampler is None else self.resampler(samples))

    def _flush(self) -> list[Segment]:
        """End of audio: the resampler's tail, then the open utterance."""
        tail = [] if self.resampler is None else self.segmenter.feed(self.resampler(np.zeros(0, np.float32), last=True))
        return tail + self.segmenter.flush()

    async def finish(self, code: int) -> None:
        """Close the open utterance, wait for every result, say done, close (once)."""
        self._finishing = True
        if self._finished.is_set():
            return
        self._finished.set()
        if not self.ws.closed:
            self.schedule(await self.segment(self._flush))
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        await self.send({"type": "done", "segments": self.count})
        await self.ws.close(code=code)


def limit_receive_buffer(transport: asyncio.BaseTransport | None, size: int) -> None:
    """Cap the kernel's receive buffer of a stream's socket at ``size`` bytes. A stream the
    server paces (``_pace``) leaves its sender's audio in that buffer, and a client that
    sends a burst and hangs up would hold its stream slot until the server has read all of
    it: with Linux's autotuning up to 6 MB, minutes of audio."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError:  # not a TCP socket (a test's pipe), or the platform refuses
            pass


async def stream(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
    cfg = state.config
    if state.vad is None:
        raise ApiError(503, "stream_unavailable", "this server runs without a voice-activity detector; /v1/stream is off")
    if state.closing:
        raise ApiError(503, "shutting_down", "the server is shutting down")
    if state.stream_slots >= cfg.max_streams:
        raise ApiError(503, "too_many_streams", f"{cfg.max_streams} streams are open; retry later", "max_streams",
                       cfg.max_streams, headers={"Retry-After": "5"})
    state.stream_slots += 1  # taken before the first await: concurrent handshakes count
    try:
        # No permessage-deflate: max_msg_size bounds a message after decompression, so 10 kB of
        # deflated zeros on the wire would cost the server the CPU of 10 MB of audio.
        # aiohttp refuses a frame of max_msg_size bytes or more: one more lets max_frame_bytes through
        ws = web.WebSocketResponse(max_msg_size=cfg.max_frame_bytes + 1, heartbeat=30.0, compress=False, protocols=(SUBPROTOCOL,))
        await ws.prepare(request)
        limit_receive_buffer(request.transport, 2 * cfg.max_frame_bytes)
        state.connections.working(request.transport)
        session = StreamSession(state, ws)
        state.streams.add(session)
        state.metrics.streams.set(len(state.streams))
        try:
            await session.run()
        finally:
            state.streams.discard(session)
            state.metrics.streams.set(len(state.streams))
    finally:
        state.stream_slots -= 1
    return ws
