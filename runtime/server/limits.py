"""Server options, request limits, and the JSON errors a client sees.

Every rejected request gets ``{"error": {"code", "message", "limit"?, "max"?}}`` with a
4xx/5xx status; ``limit`` names the option that was exceeded so a client knows which
knob the operator controls.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from runtime.asr import TranscriptionError
from runtime.errors import AudioDecodeError, AudioError, AudioTooLargeError, AudioTooLongError, EmotionError, TextError
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
    max_connections: int = 256  # open connections; at the cap the longest-waiting idle one is closed (else 503)
    header_timeout_s: float = 10.0  # a request's head must arrive within this (from connect or its first byte)
    keepalive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_streams: int = 16  # open /v1/stream connections; beyond: 503
    stream_idle_s: float = 60.0  # a stream that sends no frame for this long is closed
    max_frame_bytes: int = 256 * 1024  # one /v1/stream frame (8.2 s of 16-kHz PCM16); larger: closed with 1009
    max_stream_pending: int = 4  # utterances of one stream waiting for results; the stream is not read beyond it
    stream_speed: float = 2.0  # audio a stream may send, in multiples of real time on average (0: any speed)
    max_pending_body_bytes: int | None = None  # request bodies held at once (read, parsed, decoding); beyond: wait, then 503.
    # None: 64 MiB, or twice max_body_bytes if that is more
    allow_origins: tuple[str, ...] = ()  # browser origins allowed besides the server's own ("*": any)
    allow_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback ones when bound to loopback ("*": any)

    def __post_init__(self) -> None:
        # origins are compared lower-cased without a trailing slash, as browsers send them
        object.__setattr__(self, "allow_origins", tuple(o.strip().lower().rstrip("/") for o in self.allow_origins))
        object.__setattr__(self, "allow_hosts", tuple(h.strip().lower() for h in self.allow_hosts))
        if self.max_pending_body_bytes is None:
            object.__setattr__(self, "max_pending_body_bytes", max(64 * 1024 * 1024, 2 * self.max_body_bytes))
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
    if cfg.api_key is not None:
        check_api_key(cfg.api_key)
    check_half_life(cfg.smoothing_half_life_s)
    if not 1 <= cfg.max_connections <= 65536:
        raise ValueError(f"max_connections must be in [1, 65536], got {cfg.max_connections}")
    for name in ("header_timeout_s", "keepalive_s", "stream_idle_s"):
        if not 0 < getattr(cfg, name) <= 3600:
            raise ValueError(f"{name} must be in (0, 3600] seconds, got {getattr(cfg, name)}")
    if not 1 <= cfg.max_streams <= cfg.max_connections:
        raise ValueError(f"max_streams must be in [1, max_connections={cfg.max_connections}], got {cfg.max_streams}")
    if not 1024 <= cfg.max_frame_bytes <= cfg.max_body_bytes:
        raise ValueError(f"max_frame_bytes must be in [1024, max_body_bytes={cfg.max_body_bytes}], got {cfg.max_frame_bytes}")
    if not isinstance(cfg.max_pending_body_bytes, int) or cfg.max_pending_body_bytes < cfg.max_body_bytes:
        raise ValueError(f"max_pending_body_bytes must be >= max_body_bytes={cfg.max_body_bytes}, got {cfg.max_pending_body_bytes}")
    if not 0 <= cfg.stream_speed <= 1000:
        raise ValueError(f"stream_speed must be in [0, 1000] (0: unlimited), got {cfg.stream_speed}")
    if not 1 <= cfg.max_stream_pending <= 64:
        raise ValueError(f"max_stream_pending must be in [1, 64], got {cfg.max_stream_pending}")
    for origin in cfg.allow_origins:
        if origin not in ("*", "null") and not re.fullmatch(r"https?://[^/\s?#]+", origin):
            raise ValueError(f"allow_origins: {origin!r} is not an origin: give scheme://host[:port] (no path), 'null' or '*'")
    for host in cfg.allow_hosts:
        if not re.fullmatch(r"\*|[A-Za-z0-9.\-\[\]:]+", host):
            raise ValueError(f"allow_hosts: {host!r} is not a host name")


def check_api_key(key: str) -> None:
    """Raise ``ValueError`` unless ``key`` is 8 to 4096 printable ASCII characters without
    spaces: what a client can send in ``Authorization: Bearer <key>`` (a key read from
    undecodable command-line bytes holds lone surrogates, which no request can match)."""
    if not 8 <= len(key) <= 4096:
        raise ValueError(f"api_key must be 8 to 4096 characters long, got {len(key)}")
    bad = next((c for c in key if not "!" <= c <= "~"), None)
    if bad is not None:
        raise ValueError(f"api_key must be printable ASCII without spaces (what an HTTP header carries); "
                         f"it holds {ascii(bad)} at position {key.index(bad)}")


# --------------------------------------------------------------- command line

# The connection, stream and access options of ``python -m runtime.serve`` (ServeConfig
# field, option, type, help); defaults come from ServeConfig, so they are written once.
_LIMIT_OPTIONS = (
    ("max_connections", "--max-connections", int, "open connections; at the cap the longest-waiting idle one is closed, "
     "and if every one is busy the new one gets 503"),
    ("header_timeout_s", "--header-timeout-s", float, "seconds a request's head may take to arrive (from connect or its first byte)"),
    ("keepalive_s", "--keepalive-s", float, "seconds an idle keep-alive connection stays open"),
    ("max_streams", "--max-streams", int, "open /v1/stream connections (503 beyond)"),
    ("stream_idle_s", "--stream-idle-s", float, "a stream that sends no frame for this long is closed"),
    ("max_frame_bytes", "--max-frame-bytes", int, "bytes of one /v1/stream frame (a larger one closes the stream with 1009)"),
    ("max_stream_pending", "--max-stream-pending", int, "utterances of one stream in recognition at once; "
     "the stream is not read further until one is answered"),
    ("stream_speed", "--stream-speed", float, "audio a stream may send, in multiples of real time on average after a "
     "first 10 s (faster senders are slowed; 0: any speed)"),
    ("max_pending_body_bytes", "--max-pending-body-bytes", int, "bytes of request bodies held at once, all requests "
     "together (a request that finds no room within 2 s gets 503)"),
)


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    """Add the connection, stream and browser-access options to ``parser``."""
    defaults = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    group = parser.add_argument_group("connections, streams and browsers")
    for name, flag, kind, text in _LIMIT_OPTIONS:
        group.add_argument(flag, dest=name, type=kind, default=defaults[name], help=text)
    group.add_argument("--allow-origin", dest="allow_origins", action="append", default=[], metavar="ORIGIN",
                       help="a web page origin (scheme://host[:port]) allowed to call the server besides pages it serves "
                            "itself; repeat for more; '*' allows any page")
    group.add_argument("--allow-host", dest="allow_hosts", action="append", default=[], metavar="NAME",
                       help="a Host name answered besides loopback names when bound to loopback (or the only names "
                            "answered on another address); repeat for more; '*' answers any")
    group.add_argument("--api-key-file", default=None, metavar="PATH",
                       help="read the API key from this file (one line; keep it chmod 600) instead of --api-key")


def limit_config(args: argparse.Namespace) -> dict:
    """``ServeConfig`` keyword arguments from the options ``add_limit_args`` added."""
    out = {name: getattr(args, name) for name, *_ in _LIMIT_OPTIONS}
    out["allow_origins"] = tuple(args.allow_origins)
    out["allow_hosts"] = tuple(args.allow_hosts)
    return out


def resolve_api_key(given: str | None, key_file: str | None, environ: dict | None = None) -> str | None:
    """The API key: from ``key_file``, else ``given`` (``--api-key``, which other users can
    read in ``ps``), else ``$EMOTECH_API_KEY``; None if none is set. Raises ``ValueError``
    for both options at once, an unreadable file, or a key ``check_api_key`` refuses."""
    environ = os.environ if environ is None else environ
    if given and key_file:
        raise ValueError("give --api-key or --api-key-file, not both")
    if key_file:
        path = Path(key_file)
        try:
            raw = path.read_bytes()
            mode = path.stat().st_mode
        except OSError as e:
            raise ValueError(f"--api-key-file {key_file}: cannot read it ({e.strerror or e})") from e
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            logging.getLogger(__name__).warning("the API key file %s is readable by other users: chmod 600 it", key_file)
        try:
            key = raw.decode("ascii").strip()
        except UnicodeDecodeError as e:
            raise ValueError(f"--api-key-file {key_file}: the key must be printable ASCII (byte {raw[e.start]:#x} at {e.start})") from e
    else:
        key = given or environ.get("EMOTECH_API_KEY") or None
    if key is not None:
        check_api_key(key)
    return key


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


def parse_json(data: bytes | bytearray | str, max_values: int | None = None) -> object:
    """``json.loads``, raising ``ApiError`` 400 for anything it cannot take: bad syntax or
    UTF-8, an integer of over 4300 digits, nesting deep enough to exhaust the stack, or
    (with ``max_values``) more arrays, objects and commas than that. The count comes
    first, at C speed (~1.5 ms per MB, no copy): a body of millions of tiny values would
    otherwise hold the event loop for seconds while ``json.loads`` builds them."""
    if max_values is not None:
        comma, bracket, brace = (b",", b"[", b"{") if isinstance(data, (bytes, bytearray)) else (",", "[", "{")
        n = data.count(comma) + data.count(bracket) + data.count(brace)
        if n > max_values:
            raise ApiError(400, "invalid_json", f"the JSON holds {n} arrays, objects and commas; at most {max_values} are "
                           "accepted (a body is one object: {\"audio_b64\": ..., \"text\": ...})")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {str(e)[:200]}") from e


def json_values_limit(max_text_chars: int) -> int:
    """Arrays, objects and commas a request's JSON may hold: a few for the object itself,
    and two per transcript character (a transcript may be all commas and brackets)."""
    return 2 * max_text_chars + 64


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


def from_emotion_error(e: EmotionError) -> ApiError:
    """The HTTP answer to an error raised while preparing an item."""
    if isinstance(e, AudioDecodeError):
        return ApiError(415, "undecodable_audio", str(e))
    if isinstance(e, AudioTooLongError):
        return ApiError(413, "audio_too_long", str(e), "max_audio_seconds", e.max_seconds)
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
