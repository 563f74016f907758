"""What the HTTP handlers and the stream share: ``ServerState`` (the recognizer, the
batcher, the decode pool, the metrics) stored on the app as ``app[STATE]``, and the
JSON bodies of results and responses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import sys
import time

import numpy as np
from aiohttp import web

from runtime.errors import EmotionError
from runtime.recognizer import EmotionRecognizer, Item
from runtime.server import limits
from runtime.server.batcher import Batcher, BatcherClosedError, BatchResult, QueueFullError
from runtime.server.connections import ConnectionGuard
from runtime.server.forms import BodyBudget
from runtime.server.limits import ApiError, ServeConfig
from runtime.server.metrics import Metrics
from runtime.server.vad import SileroVad, VadConfig

logger = logging.getLogger(__name__)


def time_limit(seconds: float | None):
    """A deadline for the awaits inside ``async with`` (``asyncio.TimeoutError`` after it).
    Unlike ``asyncio.wait_for`` it wraps nothing in a task: a task that failed holds its
    exception, whose traceback holds the task, and that cycle would keep a refused 10-MB
    body alive until the next cyclic garbage collection."""
    if sys.version_info >= (3, 11):
        return asyncio.timeout(seconds)
    import async_timeout  # aiohttp's dependency before Python 3.11

    return async_timeout.timeout(seconds)


class ServerState:
    """Everything the handlers share. Stored on the app as ``app[STATE]``."""

    def __init__(self, recognizer: EmotionRecognizer, config: ServeConfig, vad: SileroVad | None, vad_config: VadConfig | None):
        spec = recognizer.spec
        self.recognizer = recognizer
        self.config = config
        self.vad = vad
        self.vad_config = vad_config
        self.max_audio_seconds = min(config.max_audio_seconds or spec.frontend.max_audio_seconds, spec.frontend.max_audio_seconds)
        self.max_text_chars = min(config.max_text_chars or spec.max_text_chars, spec.max_text_chars)
        self.in_flight = 0
        self.closing = False  # set when the server begins to shut down
        self.metrics = Metrics(queue_depth=lambda: self.batcher.depth, in_flight=lambda: self.in_flight,
                               open_connections=lambda: self.connections.open)
        self.connections = ConnectionGuard(config.max_connections, config.header_timeout_s, config.keepalive_s,
                                           on_close=lambda reason: self.metrics.connections_closed.inc(reason))
        self.batcher = Batcher(recognizer, config.max_batch, config.max_delay_ms, config.max_queue, self.metrics)
        self.pool = concurrent.futures.ThreadPoolExecutor(config.decode_threads, thread_name_prefix="emotech-decode")
        # the streams' voice-activity detection: its own thread, so a busy stream never
        # queues ahead of a request's decoding
        self.vad_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emotech-vad")
        self.ready = False  # set after warm-up, cleared when draining
        self.streams: set = set()  # open StreamSession objects
        self.bodies = BodyBudget(config.max_pending_body_bytes)  # request bodies held at once
        self.stream_slots = 0  # /v1/stream handshakes and open streams (at most config.max_streams)

    async def stop_accepting(self) -> None:
        """The first step of a shutdown: ``/readyz`` turns 503, new streams are refused, and
        open streams are flushed (their last utterance answered) and closed."""
        self.ready = False
        self.closing = True
        await asyncio.gather(*(s.finish(1001) for s in list(self.streams)), return_exceptions=True)

    async def prepare(self, audio: bytes | np.ndarray | None, text: str | None, sample_rate: int | None = None,
                      deadline: float | None = None) -> tuple[Item, float]:
        """Decode and validate audio on the decode pool (text alone here: a length check),
        by ``deadline`` (``time.monotonic()``; 504 after it); returns (item, seconds it took)."""
        start = time.perf_counter()
        try:
            if audio is None:
                item = self.recognizer.prepare(None, text)
            else:
                timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                async with time_limit(timeout):
                    item = await asyncio.get_running_loop().run_in_executor(self.pool, self._prepare_audio, audio, text, sample_rate)
        except EmotionError as e:
            raise limits.from_emotion_error(e) from e
        except asyncio.TimeoutError as e:
            raise ApiError(504, "timeout", f"the audio was not decoded within {self.config.timeout_s:g} s", "timeout_s",
                           self.config.timeout_s) from e
        decode_s = time.perf_counter() - start
        self.metrics.stage.observe(decode_s, "decode")
        return item, decode_s

    def _prepare_audio(self, audio: bytes | np.ndarray, text: str | None, sample_rate: int | None) -> Item:
        """The decode pool's job: decode encoded audio (its header read once: a clip over
        ``max_audio_seconds`` is refused undecoded), then ``prepare`` the mono clip."""
        return self.recognizer.prepare(audio, text, sample_rate, max_seconds=self.max_audio_seconds)

    async def infer(self, item: Item, deadline: float, background: bool = False) -> BatchResult:
        """Queue ``item`` for the next batch (``background``: after every waiting request; a
        stream's utterances) and wait for its result until ``deadline``
        (``time.monotonic()``); raises ``ApiError`` 503 / 504 / 500."""
        try:
            fut = self.batcher.submit(item, background)
        except QueueFullError as e:
            raise ApiError(503, "queue_full", str(e), "max_queue", self.config.max_queue,
                           headers={"Retry-After": str(e.retry_after_s)}) from e
        try:
            async with time_limit(max(deadline - time.monotonic(), 0.0)):
                result = await fut
        except asyncio.TimeoutError as e:
            raise ApiError(504, "timeout", f"no result within {self.config.timeout_s:g} s", "timeout_s", self.config.timeout_s) from e
        except BatcherClosedError as e:
            raise ApiError(503, "shutting_down", str(e)) from e
        except Exception as e:
            raise ApiError(500, "inference_failed", f"inference failed: {e}") from e
        self.metrics.stage.observe(result.queue_s, "queue")
        return result

    async def warm_up(self) -> None:
        """One engine call at batch 1 and one at ``max_batch`` (allocates buffers and
        builds kernels before the first real request), then mark the server ready."""
        sr = self.recognizer.sample_rate
        rng = np.random.default_rng(0)
        clip = (0.05 * rng.standard_normal(2 * sr)).astype(np.float32)
        item = self.recognizer.prepare(clip, "warm up", sr)
        start = time.perf_counter()
        try:
            for n in sorted({1, self.config.max_batch}):
                await self.batcher.run_now([item] * n)
        except Exception:  # noqa: BLE001 - stay alive but never report ready
            logger.exception("warm-up failed; /readyz stays 503")
            return
        logger.info("warm-up done in %.2f s (batches of %s)", time.perf_counter() - start, sorted({1, self.config.max_batch}))
        self.ready = True


STATE = web.AppKey("emotech_state", ServerState)


def json_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=lambda o: json.dumps(o, separators=(",", ":")))


def result_body(result: BatchResult, decode_s: float, total_s: float) -> dict:
    ms = 1000.0
    return {
        **result.prediction.to_dict(),
        "timings_ms": {
            "decode": round(decode_s * ms, 3),
            "queue": round(result.queue_s * ms, 3),
            "infer": round(result.infer_s * ms, 3),
            "total": round(total_s * ms, 3),
        },
        "batch_size": result.batch_size,
    }


