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
        "required": ["label", "scores", "uncertain", "modalities", "duration_s", "transcript", "transcript_source", "timings_ms", "batch_size"],
        "properties": {
            "label": {"type": "string", "description": "the top-scoring emotion"},
            "scores": scores,
            "modalities": {"type": "array", "items": {"enum": ["audio", "text"]}},
            "uncertain": {"type": "boolean", "description": "the top score is below the mode's threshold (spec.json calibration.uncertain_below): the label is more likely wrong than right"},
            "duration_s": {"type": ["number", "null"], "description": "seconds of audio the model scored: the clip after its leading and trailing silence was trimmed; null for text-only"},
            "transcript": {"type": ["string", "null"], "description": "the text the model read: the caller's, or the server's speech recogniser's (--asr) when the caller sent none; null without text"},
            "transcript_source": {"type": ["string", "null"], "examples": ["caller", "asr:pocketsphinx"], "description": "where the transcript came from: 'caller', 'asr:<name>' (--asr), or null"},
            "timings_ms": {
                "type": "object",
                "properties": {k: {"type": "number"} for k in ("decode", "queue", "infer", "total")},
                "description": "decode+validate (and the speech recogniser's transcription, with --asr), wait for a batch, the batch's engine call, end to end in the server",
            },
            "batch_size": {"type": "integer", "description": "items in the engine call that served this request"},
            "modality_scores": {
                "type": "object",
                "properties": {"audio": scores, "text": scores},
                "additionalProperties": False,
                "description": "only from a model whose graph scores each modality on its own (spec.json outputs: the model zoo's "
                               "late-fusion folders): the calibrated probability per label from each modality the item carried, "
                               "alone; absent for other models",
            },
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
                    "500": _error("the engine failed on this request's batch, or the server's speech recogniser failed (transcription_failed)"),
                    "503": _error("queue full (see Retry-After), shutting down, max_connections connections open "
                                  "and none can make room, or request bodies filling max_pending_body_bytes for 2 s"),
                    "504": _error("no result within timeout_s"),
                },
            }},
            "/v1/stream": {"get": {
                "summary": "WebSocket: PCM16 audio in, one result per utterance out",
                "description": (
                    "Upgrade to a WebSocket. Optionally first send {\"type\":\"start\",\"sample_rate\":8000..48000 (default "
                    "16000; the server resamples to 16 kHz),\"smoothing_half_life_s\":0..3600 (default --smoothing-half-life-s),"
                    "\"per_modality\":bool}, before any audio and once (a bad or late one: an invalid_start error and close "
                    "code 1008), answered by {\"type\":\"started\",...}. Send binary frames of little-endian PCM16 mono audio "
                    "at that rate, optionally text frames {\"type\":\"transcript\",\"text\":...} (attached to the utterance "
                    "in progress or the next; without one, the server's --asr recogniser transcribes the utterance), and "
                    "{\"type\":\"end\"}. The server sends {\"type\":\"ready\"}, then per utterance found by Silero VAD "
                    "(--vad-threshold, --vad-min-silence-ms, --vad-pad-ms), in utterance order, {\"type\":\"result\",\"segment\","
                    "\"start_s\",\"end_s\", ...Result, \"smoothed\":{\"label\",\"scores\",\"half_life_s\"} (the decaying mean "
                    "of this stream's scores: weight 2^(-age/half_life_s) by the utterances' end times), and with per_modality "
                    "\"modality_scores\":{\"audio\":scores of the audio alone,\"text\":scores of the transcript alone or null}} "
                    "or {\"type\":\"error\",...}, and finally {\"type\":\"done\",\"segments\":N} before closing. With "
                    "--api-key, a browser (which cannot set headers on a WebSocket) offers the subprotocols \"emotech.v1\" and "
                    "\"emotech.key.<base64url of the key, no padding>\"; the server selects \"emotech.v1\". Limits: frames of "
                    "at most max_frame_bytes (else close 1009); at most max_stream_pending utterances in recognition "
                    "(further frames wait); audio faster than stream_speed x real time is slowed, and closed (too_fast, "
                    "1008) after 10 s of it; no frame for stream_idle_s: an idle_timeout error and close 1008."),
                "responses": {"101": {"description": "switching protocols"}, "401": _error("missing or wrong API key"),
                              "403": _error("a web page Origin other than the server's own and --allow-origin"),
                              "503": _error("no VAD available, max_streams streams open (see Retry-After), or shutting down")},
            }},
            "/": {"get": {"summary": "The live demo page (no auth; off with --no-demo): microphone to /v1/stream in the browser",
                          "security": [],
                          "responses": {"200": {"description": "HTML, same-origin Content-Security-Policy", "content": {"text/html": {}}}}}},
            "/demo/{name}": {"get": {"summary": "The demo page's script, style and AudioWorklet (no auth)", "security": [],
                                     "parameters": [{"name": "name", "in": "path", "required": True, "schema": {
                                         "enum": ["demo.js", "demo.css", "capture-worklet.js", "index.html"]}}],
                                     "responses": {"200": {"description": "the file"}, "404": {"description": "no such file"}}}},
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
