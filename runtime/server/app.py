"""The HTTP application: routes, access checks (Host, Origin, API key), JSON errors, and
the request path of ``POST /v1/recognize`` (parse -> limits -> decode on a thread ->
batcher -> JSON).

``create_app(recognizer, config)`` returns an ``aiohttp`` application; ``runtime.server.runner``
serves it. Nothing here blocks the event loop for long: decoding runs on a small thread
pool, inference on the batcher's worker thread, and bodies are bounded before they are
parsed (``runtime.server.forms``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time

from aiohttp import web

from runtime.recognizer import EmotionRecognizer
from runtime.server import access, demo, forms, limits, openapi
from runtime.server.limits import ApiError, ServeConfig
from runtime.server.state import STATE, ServerState, json_response, result_body, time_limit
from runtime.server.stream import stream
from runtime.server.vad import SileroVad, VadConfig

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # the status recorded (nginx's convention) for a request whose client went away mid-request


def endpoint_of(request: web.Request) -> str:
    """The route template (bounded metric labels), or 'other' for unmatched paths."""
    route = request.match_info.route
    info = route.resource.canonical if route.resource is not None else None
    return info or "other"


@web.middleware
async def errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Host, Origin and API-key checks, JSON errors, request counting, the in-flight gauge,
    and the connection's state for the connection guard."""
    state = request.app[STATE]
    state.connections.reading(request.transport)
    counted = request.path != "/v1/stream"  # open streams have their own gauge
    state.in_flight += counted
    status = 500
    cors = None
    try:
        access.check_host(request, state.config)
        cors = access.check_origin(request, state.config)
        if cors and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = access.preflight(request, cors)
        else:
            access.check_api_key(request, state.config.api_key)
            response = await handler(request)
    except ApiError as e:
        response = json_response(e.body(), e.status, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = json_response({"error": {"code": e.reason.lower().replace(" ", "_"), "message": e.text or e.reason}},
                                 e.status, {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")})
    except ConnectionError as e:  # the client closed the connection mid-request: nobody to answer
        logger.info("%s %s: the client went away (%s)", request.method, request.path, e)
        response = web.Response(status=CLIENT_CLOSED)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        response = json_response({"error": {"code": "internal_error", "message": "internal server error"}}, 500)
    finally:
        state.in_flight -= counted
        state.connections.working(request.transport)  # answering; waiting for the next request once written
    status = response.status
    endpoint = endpoint_of(request)
    if endpoint != "/v1/stream" or status != 101:  # an open stream counts its segments itself
        state.metrics.requests.inc(endpoint, str(status))
    if cors and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = cors
        response.headers["Vary"] = "Origin"
    return response


# ----------------------------------------------------------------------- handlers


async def defer_expect(request: web.Request) -> None:
    """``Expect: 100-continue`` is answered by ``recognize`` once the request passed its
    checks, so a refused upload is refused before the client sends its body."""


async def recognize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cfg = state.config
    start = time.perf_counter()
    deadline = time.monotonic() + cfg.timeout_s
    if request.content_length is not None and request.content_length > cfg.max_body_bytes:
        raise limits.body_too_large(cfg.max_body_bytes, request.content_length)
    expect = request.headers.get("Expect")
    if expect is not None:
        if expect.lower() != "100-continue":
            raise ApiError(417, "expectation_failed", f"Expect: {expect[:100]} is not supported; send 100-continue or nothing")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the response proper has not started
    async with state.bodies.reservation() as room:  # the body's bytes count until its audio is decoded
        try:  # a client that sends its body slowly gets the same deadline as everyone
            async with time_limit(cfg.timeout_s):
                audio, text = await forms.read_request(request, cfg.max_body_bytes, limits.json_values_limit(state.max_text_chars), room)
        except asyncio.TimeoutError as e:
            raise ApiError(408, "request_timeout", f"the request body did not arrive within {cfg.timeout_s:g} s",
                           "timeout_s", cfg.timeout_s) from e
        state.connections.working(request.transport)
        text = limits.check_text(text, state.max_text_chars)
        if audio is None and text is None:
            raise ApiError(400, "missing_input", "send an 'audio' file, a 'text' field, or both")
        item, decode_s = await state.prepare(audio, text, deadline=deadline)
        del audio
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
    body = without_paths(state.recognizer.describe())
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


def without_paths(value: object) -> object:
    """``value`` with every absolute file path replaced by its last component: where the
    model lives on this machine is nobody's business but the operator's."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.basename(value.rstrip("/\\")) or value
    return value


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
    app.router.add_post("/v1/recognize", recognize, expect_handler=defer_expect)
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
        await state.stop_accepting()

    async def on_cleanup(app: web.Application) -> None:
        task = app.get(WARMUP)
        if task is not None and not task.done():
            task.cancel()
        await state.batcher.drain(config.drain_timeout_s)
        await state.batcher.close()
        state.pool.shutdown(wait=False, cancel_futures=True)
        state.vad_pool.shutdown(wait=False, cancel_futures=True)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


WARMUP = web.AppKey("emotech_warmup", asyncio.Task)
