"""Request bodies of ``POST /v1/recognize`` to ``(audio bytes or None, text or None)``:
``multipart/form-data`` (fields ``audio`` and ``text``), a text-only
``application/x-www-form-urlencoded`` form, or JSON ``{"audio_b64", "text"}``.

Everything a client can get wrong is an ``ApiError`` 4xx: malformed part headers (a line
over 8190 bytes, a NUL, no colon, too many lines), an unknown charset or transfer
encoding, a body whose ``Content-Encoding`` does not decode, more than
``MAX_FORM_PARTS`` parts, a body over ``max_body_bytes``. Parts are read into memory as
they arrive, never into temporary files.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import urllib.parse

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from runtime.server import limits, memory
from runtime.server.limits import ApiError

FIELDS = ("audio", "text")
# Parts a form may have: 'audio' and 'text', and room for a few a client library adds
# (a submit button, a CSRF token); more is no form this server expects.
MAX_FORM_PARTS = 16
CHUNK_BYTES = 64 * 1024  # bytes read from a part at a time

# What aiohttp raises for a malformed body: HttpProcessingError for part headers and a
# Content-Encoding that does not decode (also wrapped in RequestPayloadError); ValueError
# for a missing boundary or a truncated body; LookupError for an unknown charset;
# RuntimeError for an unknown Content-Transfer-Encoding.
BAD_BODY = (HttpProcessingError, web.RequestPayloadError, ValueError, LookupError, RuntimeError)


BUDGET_WAIT_S = 2.0  # how long a request waits for room in the body budget before a 503
TRIM_AFTER_BYTES = 16 << 20  # bodies passed through since the last memory trim that make another worth it
TRIM_EVERY_S = 1.0  # memory trims at most this often


class BodyBudget:
    """Bytes of request bodies the server holds at once (being read, parsed or decoded),
    at most ``limit``: bytes are taken as they arrive and given back when the request's
    audio is decoded, so memory stays bounded however many uploads run together. A
    request that finds no room within ``BUDGET_WAIT_S`` gets 503; it never holds room
    while it waits, so uploads cannot block one another for long."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()
        self._since_trim = 0  # bytes taken since memory was last given back to the system
        self._trimmed_at = 0.0

    def reservation(self) -> Reservation:
        return Reservation(self)

    async def _take(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUDGET_WAIT_S
        while self.used + n > self.limit:
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise ApiError(503, "server_busy", f"the server already holds {self.used} bytes of request bodies; retry",
                               "max_pending_body_bytes", self.limit, headers={"Retry-After": "1"}) from None
        self.used += n
        self._since_trim += n

    def _give(self, n: int) -> None:
        self.used -= n
        self._freed.set()
        if self.used == 0 and self._since_trim >= TRIM_AFTER_BYTES:
            loop = asyncio.get_running_loop()
            if loop.time() - self._trimmed_at >= TRIM_EVERY_S:
                self._since_trim, self._trimmed_at = 0, loop.time()
                loop.run_in_executor(None, memory.trim)  # large bodies are gone: give their pages back


class Reservation:
    """One request's share of a ``BodyBudget``; ``async with`` gives it all back."""

    def __init__(self, budget: BodyBudget):
        self.budget, self.held = budget, 0

    async def take(self, n: int) -> None:
        await self.budget._take(n)
        self.held += n

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.budget._give(self.held)
        self.held = 0


async def read_body(request: web.Request, max_bytes: int, room: Reservation | None) -> bytearray:
    """The whole (decompressed) body, at most ``max_bytes``, taking room as it arrives
    (a bytearray: json.loads and the decoders take it as it is, with no copy)."""
    buf = bytearray()
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        if len(buf) + len(chunk) > max_bytes:
            raise limits.body_too_large(max_bytes, request.content_length)
        if room is not None:
            await room.take(len(chunk))
        buf += chunk
    return buf


def _curl_hint(e: Exception) -> ApiError:
    return ApiError(400, "invalid_form", f"a form field is not UTF-8 text ({e}); send audio as a file part, "
                    "e.g. curl -F 'audio=@clip.wav' (or -F 'audio=<clip.wav;type=audio/wav')")


async def read_request(request: web.Request, max_bytes: int, max_values: int,
                       room: Reservation | None = None) -> tuple[bytes | None, object]:
    """(audio bytes or None, text or None) from a form or JSON body of at most
    ``max_bytes`` (and, for JSON, at most ``max_values`` arrays, objects and commas),
    taking the bytes it reads from ``room``."""
    ctype = request.content_type
    try:
        if ctype == "multipart/form-data":
            return await read_multipart(request, max_bytes, room)
        if ctype == "application/x-www-form-urlencoded":  # text-only forms
            return read_urlencoded(await read_body(request, max_bytes, room), request.charset)
        if ctype == "application/json":
            return read_json(await read_body(request, max_bytes, room), max_values)
    except UnicodeDecodeError as e:  # a part without filename or type is text: curl -F 'audio=<clip.wav'
        raise _curl_hint(e) from e
    except BAD_BODY as e:
        raise ApiError(400, "invalid_form" if "form" in ctype else "invalid_body", f"body is not a valid {ctype} body: {e}") from e
    raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype or 'none'} is not accepted; send multipart/form-data "
                   "(fields 'audio', 'text') or application/json ({\"audio_b64\", \"text\"})")


async def read_multipart(request: web.Request, max_bytes: int, room: Reservation | None = None) -> tuple[bytes | None, str | None]:
    """The ``audio`` and ``text`` fields of a ``multipart/form-data`` body; other fields
    are read and dropped."""
    reader = await request.multipart()
    found: dict[str, bytes | str | None] = {}
    parts = total = 0
    while (part := await reader.next()) is not None:
        parts += 1
        if parts > MAX_FORM_PARTS:
            raise ApiError(400, "invalid_form", f"the form has more than {MAX_FORM_PARTS} parts; send 'audio' and/or 'text'")
        if isinstance(part, MultipartReader):
            raise ApiError(400, "invalid_form", "nested multipart parts are not accepted; send 'audio' and 'text' as plain parts")
        assert isinstance(part, BodyPartReader)
        raw = bytearray()
        while chunk := await part.read_chunk(CHUNK_BYTES):
            total += len(chunk)
            if total > max_bytes:
                raise limits.body_too_large(max_bytes)
            if room is not None:
                await room.take(len(chunk))
            raw += chunk
        name = part.name
        if name not in FIELDS:
            continue
        if name in found:
            raise ApiError(400, "invalid_form", f"the form has more than one '{name}' field; send one")
        data = part.decode(raw)  # Content-Transfer-Encoding (the same buffer when there is none)
        data = bytes(data) if not isinstance(data, bytes) else data
        del raw
        ctype = part.headers.get("Content-Type")
        if name == "audio":
            found[name] = _audio_field(part, data, ctype)
        else:
            if part.filename or (ctype is not None and not ctype.startswith("text/")):
                raise ApiError(400, "invalid_text", "the 'text' field must be a plain form field, not a file")
            found[name] = data.decode(part.get_charset(default="utf-8"))
    return found.get("audio"), found.get("text")  # type: ignore[return-value]


def _audio_field(part: BodyPartReader, data: bytes, ctype: str | None) -> bytes | None:
    """The bytes of the ``audio`` part, or None for an empty part without filename (a
    browser's empty file input). A named file, even empty, goes to the decoder; a part
    without filename is audio if it has a non-text type (curl -F
    'audio=<clip.wav;type=audio/wav'); a part without filename or type is a text field,
    which audio is not."""
    if part.filename:
        return data
    if not data:
        return None
    if ctype is None or ctype.startswith("text/"):
        try:
            data.decode(part.get_charset(default="utf-8"))
        except UnicodeDecodeError as e:
            raise _curl_hint(e) from e
        raise ApiError(400, "bad_request", "the 'audio' field must be a file upload (WAV, FLAC or OGG)")
    return data


def read_urlencoded(body: bytes | bytearray, charset: str | None) -> tuple[None, str | None]:
    """The ``text`` field of an urlencoded form (such a form carries no audio)."""
    codecs.lookup(charset or "utf-8")  # LookupError for an unknown charset, even if nothing needs decoding
    try:
        pairs = urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding=charset or "utf-8",
                                       errors="strict", max_num_fields=MAX_FORM_PARTS)
    except ValueError as e:  # max_num_fields
        if "Max number of fields" in str(e):
            raise ApiError(400, "invalid_form", f"the form has more than {MAX_FORM_PARTS} fields; send 'text'") from e
        raise
    texts = [v for k, v in pairs if k == "text"]
    if len(texts) > 1:
        raise ApiError(400, "invalid_form", f"the form has {len(texts)} 'text' fields; send one")
    if any(k == "audio" for k, _ in pairs):
        raise ApiError(400, "bad_request", "the 'audio' field must be a file upload in a multipart/form-data body")
    return None, (texts[0] if texts else None)


def read_json(body: bytes | bytearray, max_values: int) -> tuple[bytes | None, object]:
    """``audio_b64`` (decoded) and ``text`` of a JSON object body."""
    data = limits.parse_json(body, max_values)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object {\"audio_b64\": ..., \"text\": ...}")
    audio_b64 = data.get("audio_b64")
    audio = None
    if audio_b64 is not None:
        if not isinstance(audio_b64, str):
            raise ApiError(400, "invalid_base64", "audio_b64 must be a base64 string")
        try:
            audio = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ApiError(400, "invalid_base64", f"audio_b64 is not valid base64: {e}") from e
    return audio, data.get("text")
