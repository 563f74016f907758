"""The HTTP application: routes, auth, JSON errors, and the request path of
``POST /v1/recognize`` (parse -> limits -> decode on a thread -> batcher -> JSON).

``create_app(recognizer, config)`` returns an ``aiohttp`` application; ``runtime.server.runner``
serves it. Nothing here blocks the event loop: decoding runs on a small thread pool and
inference on the batcher's worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import logging
import time

from aiohttp import web

from runtime.recognizer import EmotionRecognizer
from runtime.server import demo, limits, openapi
from runtime.server.limits import ApiError, ServeConfig
from runtime.server.state import STATE, ServerState, json_response, result_body
from runtime.server.stream import stream
from runtime.server.vad import SileroVad, VadConfig

logger = logging.getLogger(__name__)


def endpoint_of(request: web.Request) -> str:
    """The route template (bounded metric labels), or 'other' for unmatched paths."""
    route = request.match_info.route
    info = route.resource.canonical if route.resource is not None else None
    return info or "other"


@web.middleware
async def errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Auth, JSON errors, request counting and the in-flight gauge."""
    state = request.app[STATE]
    counted = request.path != "/v1/stream"  # open streams have their own gauge
    state.in_flight += counted
    status = 500
    try:
        key = state.config.api_key
        if key and request.path != "/healthz" and not demo.is_page_path(request.path):
            given = request.headers.get("Authorization", "")
            if not given and request.path == "/v1/stream":  # a browser WebSocket sends it as a subprotocol
                given = demo.bearer_from_subprotocol(request)
            # surrogatepass: a header's undecodable bytes arrive as lone surrogates
            # the scheme name is case-insensitive (RFC 9110 11.1), the key is not
            if not (given[:7].lower() == "bearer " and hmac.compare_digest(given[7:].encode("utf-8", "surrogatepass"), key.encode())):
                raise ApiError(401, "unauthorized", "missing or wrong API key; send 'Authorization: Bearer <key>'",
                               headers={"WWW-Authenticate": "Bearer"})
        response = await handler(request)
        status = response.status
        return response
    except ApiError as e:
        status = e.status
        return json_response(e.body(), e.status, e.headers)
    except web.HTTPRequestEntityTooLarge as e:
        status = 413
        err = limits.body_too_large(state.config.max_body_bytes, getattr(e, "actual_size", None))
        return json_response(err.body(), 413)
    except web.HTTPException as e:
        status = e.status
        if e.status < 400:
            raise
        return json_response({"error": {"code": e.reason.lower().replace(" ", "_"), "message": e.text or e.reason}}, e.status,
                            {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")})
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"error": {"code": "internal_error", "message": "internal server error"}}, 500)
    finally:
        state.in_flight -= counted
        endpoint = endpoint_of(request)
        if endpoint != "/v1/stream":  # the stream counts its segments itself
            state.metrics.requests.inc(endpoint, str(status))


# ----------------------------------------------------------------------- handlers


async def read_request(request: web.Request, max_bytes: int) -> tuple[bytes | None, object]:
    """(audio bytes or None, text or None) from a multipart or JSON body."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise limits.body_too_large(max_bytes, request.content_length)
    ctype = request.content_type
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):  # the latter: text-only forms
        try:
            form = await request.post()
        except UnicodeDecodeError as e:  # a part without filename or type is text: curl -F 'audio=<clip.wav'
            raise ApiError(400, "invalid_form", f"a form field is not UTF-8 text ({e}); send audio as a file part, "
                           "e.g. curl -F 'audio=@clip.wav' (or -F 'audio=<clip.wav;type=audio/wav')") from e
        # ValueError: no or wrong boundary, a truncated body; LookupError: an unknown charset;
        # RuntimeError: an unknown Content-Transfer-Encoding
        except (ValueError, LookupError, RuntimeError) as e:
            raise ApiError(400, "invalid_form", f"body is not a valid {ctype} form: {e}") from e
        for field in ("audio", "text"):
            if len(form.getall(field, [])) > 1:
                raise ApiError(400, "invalid_form", f"the form has {len(form.getall(field))} '{field}' fields; send one")
        audio = form.get("audio")
        text = form.get("text")
        if isinstance(audio, str):
            raise ApiError(400, "bad_request", "the 'audio' field must be a file upload (WAV, FLAC or OGG)")
        if isinstance(audio, (bytes, bytearray)):
            # a part without a filename (aiohttp gives its bytes); empty, it is a browser's
            # empty file input (filename="" and no bytes): no audio
            audio = bytes(audio) or None
        elif audio is not None:
            audio = audio.file.read()  # a named file, empty or not, goes to the decoder
        if text is not None and not isinstance(text, str):
            raise ApiError(400, "invalid_text", "the 'text' field must be a plain form field, not a file")
        return audio, text
    if ctype == "application/json":
        body = limits.parse_json(await request.read())
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "body must be a JSON object {\"audio_b64\": ..., \"text\": ...}")
        audio_b64 = body.get("audio_b64")
        audio = None
        if audio_b64 is not None:
            if not isinstance(audio_b64, str):
                raise ApiError(400, "invalid_base64", "audio_b64 must be a base64 string")
            try:
                audio = base64.b64decode(audio_b64, validate=True)
            except (binascii.Error, ValueError) as e:
                raise ApiError(400, "invalid_base64", f"audio_b64 is not valid base64: {e}") from e
        return audio, body.get("text")
    raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype or 'none'} is not accepted; send multipart/form-data "
                   "(fields 'audio', 'text') or application/json ({\"audio_b64\", \"text\"})")


async def recognize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    start = time.perf_counter()
    deadline = time.monotonic() + state.config.timeout_s
    try:  # a client that sends its body slowly gets the same deadline as everyone
        audio, text = await asyncio.wait_for(read_request(request, state.config.max_body_bytes), state.config.timeout_s)
    except asyncio.TimeoutError as e:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {state.config.timeout_s:g} s",
                       "timeout_s", state.config.timeout_s) from e
    text = limits.check_text(text, state.max_text_chars)
    if audio is None and text is None:
        raise ApiError(400, "missing_input", "send an 'audio' file, a 'text' field, or both")
    item, decode_s = await state.prepare(audio, text, deadline=deadline)
    result = await state.infer(item, deadline)
    total_s = time.perf_counter() - start
    state.metrics.stage.observe(total_s, "total")
    return json_response(result_body(result, decode_s, total_s))


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not state.ready:
        return json_response({"status": "not ready"}, 503, {"Retry-After": "1"})
    return json_response({"status": "ready"})


async def model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cfg = state.config
    body = state.recognizer.describe()
    body["server"] = {
        "max_batch": cfg.max_batch,
        "max_delay_ms": cfg.max_delay_ms,
        "max_queue": cfg.max_queue,
        "timeout_s": cfg.timeout_s,
        "max_body_bytes": cfg.max_body_bytes,
        "max_audio_seconds": state.max_audio_seconds,
        "max_text_chars": state.max_text_chars,
        "stream": {"available": state.vad is not None, "sample_rate": 16000, "smoothing_half_life_s": cfg.smoothing_half_life_s,
                   "vad": state.vad_config.__dict__ if state.vad_config is not None else None},
    }
    return json_response(body)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[STATE].metrics.render(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(openapi.schema())


# -------------------------------------------------------------------------- app


def create_app(recognizer: EmotionRecognizer, config: ServeConfig | None = None, vad: SileroVad | None = None,
               vad_config: VadConfig | None = None, warm_up: bool = True, demo_page: bool = True) -> web.Application:
    """The server application for a loaded recognizer.

    Args:
        recognizer: the model on its engine; the server calls ``prepare`` and ``run``.
        config: batching, queue and limit options (default: ``ServeConfig()``).
        vad: the voice-activity detector for ``/v1/stream`` (None: the stream endpoint
            answers 503).
        vad_config: segmentation options (default: ``VadConfig()``); its ``max_speech_s`` is
            capped at the longest clip the server accepts.
        warm_up: run the warm-up batches at start-up before ``/readyz`` turns ready.
        demo_page: serve the live demo page at ``/`` (``runtime.server.demo``).
    """
    config = config or ServeConfig()
    if vad is not None:
        # streamed utterances are cut at the length /v1/recognize accepts (--max-audio-seconds)
        model_max = recognizer.spec.frontend.max_audio_seconds
        longest = min(config.max_audio_seconds or model_max, model_max)
        vad_config = vad_config or VadConfig()
        try:
            vad_config = dataclasses.replace(vad_config, max_speech_s=min(vad_config.max_speech_s, longest))
        except ValueError as e:
            raise ValueError(f"max_audio_seconds {longest:g} is too short to stream utterances: {e}") from e
    app = web.Application(middlewares=[errors_middleware], client_max_size=config.max_body_bytes)
    state = ServerState(recognizer, config, vad, vad_config)
    app[STATE] = state
    app.router.add_post("/v1/recognize", recognize)
    app.router.add_get("/v1/stream", stream)
    app.router.add_get("/v1/model", model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    if demo_page:
        demo.add_routes(app)

    async def on_startup(app: web.Application) -> None:
        state.batcher.start()
        if warm_up:
            app[WARMUP] = asyncio.get_running_loop().create_task(state.warm_up())
        else:
            state.ready = True

    async def on_shutdown(app: web.Application) -> None:
        # Stops accepting work: /readyz turns 503; open streams are flushed and closed.
        state.ready = False
        await asyncio.gather(*(s.finish(1001) for s in list(state.streams)), return_exceptions=True)

    async def on_cleanup(app: web.Application) -> None:
        task = app.get(WARMUP)
        if task is not None and not task.done():
            task.cancel()
        await state.batcher.drain(config.drain_timeout_s)
        await state.batcher.close()
        state.pool.shutdown(wait=False, cancel_futures=True)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


WARMUP = web.AppKey("emotech_warmup", asyncio.Task)
