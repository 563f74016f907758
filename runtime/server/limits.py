"""Server options, request limits, and the JSON errors a client sees.

Every rejected request gets ``{"error": {"code", "message", "limit"?, "max"?}}`` with a
4xx/5xx status; ``limit`` names the option that was exceeded so a client knows which
knob the operator controls.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass

from runtime.asr import TranscriptionError
from runtime.errors import AudioDecodeError, AudioError, AudioTooLargeError, EmotionError, TextError
from runtime.server.smoothing import DEFAULT_HALF_LIFE_S, check_half_life
from runtime.text import unicode_problem


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches, queues and limits work."""

    host: str = "127.0.0.1"  # loopback unless exposed on purpose
    port: int = 8080
    max_batch: int = 32  # items per engine call
    max_delay_ms: float = 5.0  # how long the first item of a batch waits for company
    max_queue: int = 256  # items waiting for a batch; beyond this: 503 + Retry-After
    timeout_s: float = 30.0  # per request, queueing and inference included; beyond: 504
    max_body_bytes: int = 10 * 1024 * 1024  # request body (and one stream message)
    max_audio_seconds: float | None = None  # None: the model's own maximum
    max_text_chars: int | None = None  # None: the model's own maximum
    max_stream_seconds: float = 3600.0  # audio per /v1/stream connection
    api_key: str | None = None  # when set, every endpoint but /healthz needs "Authorization: Bearer <key>"
    decode_threads: int = 2  # threads that decode and resample request audio
    drain_timeout_s: float = 30.0  # on SIGTERM, how long in-flight requests may take to finish
    smoothing_half_life_s: float = DEFAULT_HALF_LIFE_S  # /v1/stream score smoothing (runtime.server.smoothing); 0: off

    def __post_init__(self) -> None:
        validate_config(self)


def validate_config(cfg: ServeConfig) -> None:
    """Raise ``ValueError`` naming the offending option."""
    if not 1 <= cfg.max_batch <= 1024:
        raise ValueError(f"max_batch must be in [1, 1024], got {cfg.max_batch}")
    if not 0 <= cfg.max_delay_ms <= 10_000:
        raise ValueError(f"max_delay_ms must be in [0, 10000], got {cfg.max_delay_ms}")
    if cfg.max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got {cfg.max_queue}")
    if not (0 < cfg.timeout_s < math.inf and 0 <= cfg.drain_timeout_s < math.inf):
        raise ValueError(f"timeout_s must be > 0 and drain_timeout_s >= 0 (finite), got {cfg.timeout_s} and {cfg.drain_timeout_s}")
    if not 0 < cfg.max_stream_seconds < math.inf:
        raise ValueError(f"max_stream_seconds must be > 0 (finite), got {cfg.max_stream_seconds}")
    if cfg.max_audio_seconds is not None and not 0 < cfg.max_audio_seconds < math.inf:
        raise ValueError(f"max_audio_seconds must be > 0 (finite), or None for the model's, got {cfg.max_audio_seconds}")
    if cfg.max_text_chars is not None and cfg.max_text_chars < 1:
        raise ValueError(f"max_text_chars must be >= 1, or None for the model's, got {cfg.max_text_chars}")
    if cfg.max_body_bytes < 1024:
        raise ValueError(f"max_body_bytes must be >= 1024, got {cfg.max_body_bytes}")
    if not 0 <= cfg.port <= 65535:
        raise ValueError(f"port must be in [0, 65535], got {cfg.port}")
    if cfg.decode_threads < 1:
        raise ValueError(f"decode_threads must be >= 1, got {cfg.decode_threads}")
    if cfg.api_key is not None and len(cfg.api_key) < 8:
        raise ValueError("api_key must be at least 8 characters")
    check_half_life(cfg.smoothing_half_life_s)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiError(Exception):
    """A request the server refuses; becomes a JSON error response."""

    def __init__(self, status: int, code: str, message: str, limit: str | None = None, max: float | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.limit, self.max, self.headers = limit, max, headers or {}

    def body(self) -> dict:
        err: dict = {"code": self.code, "message": self.message}
        if self.limit is not None:
            err["limit"] = self.limit
            err["max"] = self.max
        return {"error": err}


def body_too_large(max_bytes: int, size: int | None = None) -> ApiError:
    got = f"{size} bytes" if size is not None else "larger"
    return ApiError(413, "body_too_large", f"request body is {got}; the limit is {max_bytes} bytes", "max_body_bytes", max_bytes)


def parse_json(data: bytes | str) -> object:
    """``json.loads``, raising ``ApiError`` 400 for anything it cannot take: bad syntax or
    UTF-8, an integer of over 4300 digits, nesting deep enough to exhaust the stack."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {str(e)[:200]}") from e


def check_text(text: object, max_chars: int) -> str | None:
    """The transcript if acceptable (None stays None); raises ``ApiError``."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ApiError(400, "invalid_text", f"text must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ApiError(413, "text_too_long", f"text is {len(text)} characters long; the maximum is {max_chars}",
                       "max_text_chars", max_chars)
    problem = unicode_problem(text)
    if problem:
        raise ApiError(422, "invalid_text", f"text cannot be read: {problem}")
    return text


def check_audio_duration(data: bytes, max_seconds: float) -> None:
    """Reject encoded audio longer than ``max_seconds`` from its header alone, before
    decoding it. Audio whose header cannot be read, or gives no length, is left to the
    decoder (which also refuses audio that would decode to too many samples: 413 below)."""
    from runtime.audio import probe

    header = probe(data)
    if header is None or header[0] is None or header[1] <= 0:
        return
    frames, rate, _ = header
    if frames / rate > max_seconds:
        raise ApiError(413, "audio_too_long", f"audio is {frames / rate:.6g} s long; the maximum is {max_seconds:g} s "
                       "(split long recordings, e.g. with /v1/stream)", "max_audio_seconds", max_seconds)


def from_emotion_error(e: EmotionError) -> ApiError:
    """The HTTP answer to an error raised while preparing an item."""
    if isinstance(e, AudioDecodeError):
        return ApiError(415, "undecodable_audio", str(e))
    if isinstance(e, AudioTooLargeError):
        from runtime.audio import decoder

        return ApiError(413, "audio_too_large", str(e), "max_decoded_samples", decoder.MAX_DECODED_SAMPLES)
    if isinstance(e, AudioError):
        return ApiError(422, "invalid_audio", str(e))
    if isinstance(e, TextError):
        return ApiError(422, "invalid_text", str(e))
    if isinstance(e, TranscriptionError):  # the server's recogniser failed, not the input
        return ApiError(500, "transcription_failed", str(e))
    return ApiError(400, "bad_request", str(e))
