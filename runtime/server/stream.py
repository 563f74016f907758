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
  "half_life_s"}}`` (plus ``"modality_scores": {"audio", "text"}`` when asked for), or
  ``{"type": "error", "segment"?, "error": {code, message}}``.
* after ``end`` (or when the server shuts down): the last utterance is closed, every
  pending result is sent, then ``{"type": "done", "segments": N}`` and the socket closes.

Utterances are found by Silero VAD (``runtime.server.vad``); their recognition goes
through the same batcher as ``/v1/recognize``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
from aiohttp import WSMsgType, web

from runtime.audio import StreamResampler
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


class StreamSession:
    """One client's stream: VAD state, pending transcript and in-flight results."""

    def __init__(self, state: ServerState, ws: web.WebSocketResponse):
        self.state = state
        self.ws = ws
        self.segmenter = Segmenter(state.vad, state.vad_config)
        self.text: list[str] = []  # transcript for the utterance in progress
        self.tasks: set[asyncio.Task] = set()
        self.count = 0
        self._send_lock = asyncio.Lock()
        self._vad_lock = asyncio.Lock()  # feed() and flush() may come from two tasks (run, shutdown)
        self._finished = asyncio.Event()
        self._finishing = False
        self._close_code = 1000
        self.options = StreamOptions()
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
        await self.send({"type": "ready", "sample_rate": SAMPLE_RATE, "window": WINDOW})
        max_samples = int(self.state.config.max_stream_seconds * SAMPLE_RATE)
        while not self._finishing:
            msg = await self.ws.receive()
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
                        f"a stream may carry at most {self.state.config.max_stream_seconds:g} s of audio; reconnect"),
                        "limit": "max_stream_seconds", "max": self.state.config.max_stream_seconds}})
                    break
                self.schedule(await self.segment(self._feed, samples))
            elif msg.type == WSMsgType.TEXT:
                await self.on_text(msg.data)
                if self._finishing:
                    break
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the client is gone or leaving
                break
        await self.finish(self._close_code)

    async def on_text(self, data: str) -> None:
        try:
            body = limits.parse_json(data)
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
        """Run the resampler and VAD (``_feed`` or ``_flush``) on the decode pool, one call at a time."""
        async with self._vad_lock:
            return await asyncio.get_running_loop().run_in_executor(self.state.pool, fn, *args)

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
            item, decode_s = await self.state.prepare(seg.audio, text, SAMPLE_RATE, deadline=deadline)
            if self.options.per_modality and item.text is not None:
                # the fused item and each modality alone, submitted together: one batch
                result, audio_only, text_only = await asyncio.gather(
                    self.state.infer(item, deadline), self.state.infer(Item(item.audio, None), deadline),
                    self.state.infer(Item(None, item.text, item.text_source), deadline))
                per_modality = {"audio": audio_only.prediction.scores, "text": text_only.prediction.scores}
            else:
                result = await self.state.infer(item, deadline)
                per_modality = {"audio": result.prediction.scores, "text": None}
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


async def stream(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
    if state.vad is None:
        raise ApiError(503, "stream_unavailable", "this server runs without a voice-activity detector; /v1/stream is off")
    # No permessage-deflate: max_msg_size bounds a message after decompression, so 10 kB of
    # deflated zeros on the wire would cost the server the CPU of 10 MB of audio.
    ws = web.WebSocketResponse(max_msg_size=state.config.max_body_bytes, heartbeat=30.0, compress=False, protocols=(SUBPROTOCOL,))
    await ws.prepare(request)
    session = StreamSession(state, ws)
    state.streams.add(session)
    state.metrics.streams.set(len(state.streams))
    try:
        await session.run()
    finally:
        state.streams.discard(session)
        state.metrics.streams.set(len(state.streams))
    return ws
