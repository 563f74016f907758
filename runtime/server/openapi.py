"""The server's OpenAPI 3.1 schema, served at ``GET /openapi.json``.

Regenerate the committed copy (``runtime/server/openapi.json``; a test checks it is
current) with::

    python -m runtime.server.openapi
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_FILE = Path(__file__).with_name("openapi.json")


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def schema() -> dict:
    """The OpenAPI document as a dict."""
    scores = {"type": "object", "additionalProperties": {"type": "number"}, "description": "calibrated probability per label; sums to 1"}
    result = {
        "type": "object",
        "required": ["label", "scores", "modalities", "duration_s", "timings_ms", "batch_size"],
        "properties": {
            "label": {"type": "string", "description": "the top-scoring emotion"},
            "scores": scores,
            "modalities": {"type": "array", "items": {"enum": ["audio", "text"]}},
            "duration_s": {"type": ["number", "null"], "description": "seconds of audio the model scored: the clip after its leading and trailing silence was trimmed; null for text-only"},
            "timings_ms": {
                "type": "object",
                "properties": {k: {"type": "number"} for k in ("decode", "queue", "infer", "total")},
                "description": "decode+validate, wait for a batch, the batch's engine call, end to end in the server",
            },
            "batch_size": {"type": "integer", "description": "items in the engine call that served this request"},
        },
    }
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "examples": ["undecodable_audio", "audio_too_long", "text_too_long", "body_too_large", "queue_full"]},
            "message": {"type": "string"},
            "limit": {"type": "string", "description": "the server option that was exceeded, when a limit was",
                      "examples": ["max_body_bytes", "max_audio_seconds", "max_text_chars", "max_queue", "timeout_s"]},
            "max": {"type": "number", "description": "that option's value"},
        }}},
    }
    audio_note = "WAV, FLAC or OGG; any sample rate and channel count; at most the model's max_audio_seconds"
    return {
        "openapi": "3.1.0",
        "info": {"title": "EmoTech emotion server", "version": "1", "description": (
            "Speech (+ optional transcript) emotion recognition with dynamic batching. Started by "
            "`python -m runtime.serve`. With --api-key, every endpoint but /healthz needs `Authorization: Bearer <key>`.")},
        "components": {
            "schemas": {"Result": result, "Error": error},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/v1/recognize": {"post": {
                "summary": "Emotion of one clip and/or transcript",
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "audio": {"type": "string", "format": "binary", "description": audio_note},
                        "text": {"type": "string", "description": "transcript (optional); at most max_text_chars"}}}},
                    "application/json": {"schema": {"type": "object", "properties": {
                        "audio_b64": {"type": "string", "contentEncoding": "base64", "description": audio_note},
                        "text": {"type": "string"}}}},
                }},
                "responses": {
                    "200": {"description": "the prediction", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
                    "400": _error("malformed request: no input; bad JSON (also more arrays, objects and commas than a "
                                  "request can need), form (malformed part headers, more than 16 parts, repeated fields) "
                                  "or base64; a body whose Content-Encoding does not decode; text not a string"),
                    "401": _error("missing or wrong API key"),
                    "403": _error("a Host the server does not answer for (a loopback server answers loopback names and "
                                  "--allow-host), or a web page Origin other than the server's own and --allow-origin"),
                    "408": _error("the request body did not arrive within timeout_s"),
                    "413": _error("a limit was exceeded: max_body_bytes, max_audio_seconds, max_decoded_samples or max_text_chars"),
                    "415": _error("undecodable audio (also zero bytes of it, a WAV of more than 256 chunks, a chained Ogg "
                                  "file), or a Content-Type other than multipart/form-data, application/json or a "
                                  "text-only application/x-www-form-urlencoded form"),
                    "417": _error("an Expect header other than 100-continue (which is answered once the request passed "
                                  "its checks, so a refused upload is refused before its body is sent)"),
                    "431": _error("a request head over 64 KiB"),
                    "422": _error("unusable input: audio empty, silent, too short, non-finite, out of range or at a "
                                  "sample rate outside 4000-1000000 Hz; text that is not valid Unicode, or without "
                                  "words and no audio"),
                    "500": _error("the engine failed on this request's batch"),
                    "503": _error("queue full (see Retry-After), shutting down, max_connections connections open "
                                  "and none can make room, or request bodies filling max_pending_body_bytes for 2 s"),
                    "504": _error("no result within timeout_s"),
                },
            }},
            "/v1/stream": {"get": {
                "summary": "WebSocket: PCM16 16 kHz audio in, one result per utterance out",
                "description": (
                    "Upgrade to a WebSocket. Send binary frames of little-endian PCM16 mono 16 kHz audio, optionally "
                    "text frames {\"type\":\"transcript\",\"text\":...} (attached to the utterance in progress or the next), "
                    "and {\"type\":\"end\"}. The server sends {\"type\":\"ready\"}, then per utterance found by Silero VAD "
                    "{\"type\":\"result\",\"segment\",\"start_s\",\"end_s\", ...Result} or {\"type\":\"error\",...}, and "
                    "finally {\"type\":\"done\",\"segments\":N} before closing. Limits: frames of at most max_frame_bytes "
                    "(else close 1009); at most max_stream_pending utterances in recognition (further frames wait); "
                    "no frame for stream_idle_s: an idle_timeout error and close 1008; faster than stream_speed x real time "
                    "for 10 s without a break: a too_fast error and close 1008."),
                "responses": {"101": {"description": "switching protocols"},
                              "403": _error("a web page Origin other than the server's own and --allow-origin"),
                              "503": _error("no VAD available, max_streams streams open (see Retry-After), or shutting down")},
            }},
            "/v1/model": {"get": {"summary": "Labels, engine, precision, versions, file hashes and server limits",
                                  "responses": {"200": {"description": "model description", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/healthz": {"get": {"summary": "Liveness (no auth)", "security": [],
                                 "responses": {"200": {"description": "the process is serving"}}}},
            "/readyz": {"get": {"summary": "Readiness: model loaded and warmed up, not draining",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "warming up or shutting down"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics: requests by status, per-stage latency, batch sizes, queue depth",
                                 "responses": {"200": {"description": "text exposition format 0.0.4", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
        "security": [{"bearer": []}, {}],
    }


def render() -> str:
    return json.dumps(schema(), indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_FILE.write_text(render())
    print(f"wrote {SCHEMA_FILE}")
