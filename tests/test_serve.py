"""``python -m runtime.serve``: a real server on 127.0.0.1 (in-process thread, and a
subprocess for the CLI and SIGTERM), driven over HTTP and WebSocket.

The model is the bundled weights when ``weights/emotech`` is complete, else a tiny
model built in a fixture (needs torch). Audio is synthetic (``speechlike`` voiced
signals that Silero VAD accepts as speech) or the repository's espeak example; RAVDESS
clips are used only in ``requires_data`` tests. The load generator gets a smoke test at
the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")

from benchmarks import loadgen
from benchmarks.loadgen import speechlike, wav_bytes
from runtime.errors import ModelFolderError
from runtime.recognizer import EmotionRecognizer
from runtime.server.app import STATE, create_app
from runtime.server.limits import ServeConfig
from runtime.server.runner import BackgroundServer
from runtime.server.vad import SileroVad
from runtime.spec import load_spec
from tests.helpers import encode

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EMOTECH_DATA", ROOT.parent / "shared" / "data"))
RAVDESS = DATA / "ravdess"
SR = 16000
TOL = 1e-5  # |server score - EmotionRecognizer.predict score|, the server's parity bound

requires_data = pytest.mark.requires_data
needs_ravdess = pytest.mark.skipif(not RAVDESS.is_dir(), reason=f"RAVDESS not found at {RAVDESS}")


# ------------------------------------------------------------------ fixtures


def build_tiny_model(out: Path) -> Path:
    """A randomly initialised, small EmoTech folder (weights, ONNX graphs, spec)."""
    torch = pytest.importorskip("torch", reason="no bundled weights and no torch to build a tiny model")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from export import bundle
    from export.model import EmoTech, ModelConfig
    from export.onnx import GRAPHS, export_all
    from runtime.frontend import FrontendConfig

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "i", "am", "so", "happy", "sad", "angry", "what", "a", "day", "kids", "are", "talking", "by", "the", "door", "dogs", "sitting"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok_file = out.parent / "tiny_tokenizer.json"
    tok.save(str(tok_file))
    torch.manual_seed(0)
    # export.onnx draws example token ids from [1000, vocab_size): keep the table a little larger.
    cfg = ModelConfig(vocab_size=1100, embed_dim=16, audio_cnn_channels=(4, 8, 8), audio_lstm_hidden=8,
                      audio_conv_channels=8, text_lstm_hidden=8, text_conv_channels=8, fusion_dim=16)
    model = EmoTech(FrontendConfig(), cfg).eval()
    labels = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    spec = bundle.save_model(model, out, labels, tok_file, max_tokens=32)
    diffs = export_all(model, out)
    bundle.register_graphs(spec, {name: GRAPHS[name].filename for name in diffs})
    bundle.update_files(out, spec)
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    try:
        return load_spec(None).root
    except ModelFolderError:
        return build_tiny_model(tmp_path_factory.mktemp("serve") / "tiny_model")


@pytest.fixture(scope="session")
def recognizer(model_dir) -> EmotionRecognizer:
    rec = EmotionRecognizer.load(model_dir, max_batch=32)
    yield rec
    rec.close()


@pytest.fixture(scope="session")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def server(recognizer, vad):
    """The default server, with a longer batching delay so concurrent tests batch."""
    app = create_app(recognizer, ServeConfig(max_delay_ms=30), vad=vad)
    with BackgroundServer(app) as srv:
        wait_ready(srv.url)
        yield srv


class Wrapped:
    """The recognizer with a slower or failing ``run`` (to reach the overload paths)."""

    def __init__(self, rec: EmotionRecognizer, delay: float = 0.0, fail_first: int = 0):
        self.rec, self.delay, self.fail_first, self.calls = rec, delay, fail_first, 0

    def __getattr__(self, name):
        return getattr(self.rec, name)

    def run(self, items):
        self.calls += 1
        time.sleep(self.delay)
        if self.calls <= self.fail_first:
            raise RuntimeError("simulated engine failure")
        return self.rec.run(items)


# ------------------------------------------------------------------ helpers


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, _ = call("GET", url + "/readyz")
        if status == 200:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready")


async def _call(session, method: str, url: str, audio: bytes | None = None, text: str | None = None, json_body=None,
                data=None, headers=None):
    kw: dict = {"headers": headers or {}}
    if audio is not None or (text is not None and json_body is None and data is None):
        form = aiohttp.FormData()
        if audio is not None:
            form.add_field("audio", audio, filename="clip.wav", content_type="audio/wav")
        if text is not None:
            form.add_field("text", text)
        kw["data"] = form
    elif json_body is not None:
        kw["json"] = json_body
    elif data is not None:
        kw["data"] = data
    async with session.request(method, url, **kw) as r:
        raw = await r.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return r.status, dict(r.headers), body


def call(method: str, url: str, **kw):
    """One request: (status, headers, parsed body)."""
    async def main():
        async with aiohttp.ClientSession() as s:
            return await _call(s, method, url, **kw)

    return asyncio.run(main())


def call_many(url: str, requests: list[dict]):
    """Concurrent POST /v1/recognize requests; results in the same order."""
    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=len(requests))) as s:
            return await asyncio.gather(*(_call(s, "POST", url + "/v1/recognize", **r) for r in requests))

    return asyncio.run(main())


def metrics(url: str, headers=None) -> dict[str, float]:
    _, _, text = call("GET", url + "/metrics", headers=headers)
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\S+?(?:\{[^}]*\})?) (\S+)$", line)
        if m and not line.startswith("#"):
            out[m.group(1)] = float(m.group(2))
    return out


def assert_same(body: dict, pred, tol: float = TOL) -> None:
    assert body["label"] == pred.label
    assert set(body["scores"]) == set(pred.scores)
    worst = max(abs(body["scores"][k] - pred.scores[k]) for k in pred.scores)
    assert worst <= tol, f"scores differ by {worst:.2e}"
    assert body["modalities"] == list(pred.modalities)
    assert body["duration_s"] == pred.duration_s


def ravdess_clips(n: int) -> list[Path]:
    return sorted(RAVDESS.glob("Actor_2*/*.flac"))[:n]


# ------------------------------------------------------------------ recognize


def test_synthetic_clip_matches_predict(server, recognizer):
    wav = wav_bytes(speechlike(2.0, seed=3))
    status, _, body = call("POST", server.url + "/v1/recognize", audio=wav, text="what a day")
    assert status == 200, body
    assert_same(body, recognizer.predict(audio=wav, text="what a day"))
    assert set(body["timings_ms"]) == {"decode", "queue", "infer", "total"}
    assert body["timings_ms"]["total"] >= body["timings_ms"]["infer"] > 0
    assert body["batch_size"] >= 1


def test_json_base64_body_matches_multipart(server, recognizer):
    wav = wav_bytes(speechlike(1.3, seed=4))
    status, _, body = call("POST", server.url + "/v1/recognize", json_body={"audio_b64": base64.b64encode(wav).decode()})
    assert status == 200, body
    assert_same(body, recognizer.predict(audio=wav))
    status, _, body = call("POST", server.url + "/v1/recognize", json_body={"text": "i am so angry"})
    assert status == 200 and body["modalities"] == ["text"] and body["duration_s"] is None
    assert_same(body, recognizer.predict(text="i am so angry"))


EXAMPLE = ROOT / "examples" / "espeak_angry_words.wav"


@pytest.mark.skipif(not EXAMPLE.is_file(), reason="examples/espeak_angry_words.wav not in this checkout")
def test_example_speech_clip_matches_predict(server, recognizer):
    text = "I can't believe you did this to me"
    status, _, body = call("POST", server.url + "/v1/recognize", audio=EXAMPLE.read_bytes(), text=text)
    assert status == 200, body
    assert_same(body, recognizer.predict(audio=str(EXAMPLE), text=text))


@requires_data
@needs_ravdess
def test_real_clip_matches_predict(server, recognizer):
    clip = ravdess_clips(1)[0]
    status, _, body = call("POST", server.url + "/v1/recognize", audio=clip.read_bytes(), text="Kids are talking by the door")
    assert status == 200, body
    assert_same(body, recognizer.predict(audio=str(clip), text="Kids are talking by the door"))


def test_32_concurrent_requests_each_get_their_own_result_and_are_batched(server, recognizer):
    before = metrics(server.url)
    reqs = [{"audio": wav_bytes(speechlike(0.5 + 0.1 * i, seed=100 + i)), "text": "i am so happy" if i % 2 else None}
            for i in range(32)]
    results = call_many(server.url, reqs)
    for r, (status, _, body) in zip(reqs, results):
        assert status == 200, body
        assert_same(body, recognizer.predict(audio=r["audio"], text=r["text"]))
    after = metrics(server.url)
    key = "emotech_batch_size_bucket{le=\"1\"}"
    batches = after["emotech_batch_size_count"] - before.get("emotech_batch_size_count", 0)
    singles = after[key] - before.get(key, 0)
    assert batches - singles >= 1, "no engine call had more than one item"
    assert batches < 32
    assert max(body["batch_size"] for _, _, body in results) > 1


BIG = 10 * 1024 * 1024 + 1024


@pytest.mark.parametrize("case, kw, status, code, limit", [
    ("undecodable", {"audio": b"RIFF not really a wav file" * 10}, 415, "undecodable_audio", None),
    ("too long", {"audio": "LONG"}, 413, "audio_too_long", "max_audio_seconds"),
    ("text too long", {"text": "x" * 2001}, 413, "text_too_long", "max_text_chars"),
    ("body too large", {"data": b"0" * BIG, "headers": {"Content-Type": "application/json"}}, 413, "body_too_large", "max_body_bytes"),
    ("nothing", {"json_body": {}}, 400, "missing_input", None),
    ("bad base64", {"json_body": {"audio_b64": "!!not base64!!"}}, 400, "invalid_base64", None),
    ("bad json", {"data": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json", None),
    ("text not a string", {"json_body": {"text": 42}}, 400, "invalid_text", None),
    ("silent", {"audio": "SILENT"}, 422, "invalid_audio", None),
    ("too short", {"audio": "SHORT"}, 422, "invalid_audio", None),
    ("wrong content type", {"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type", None),
    ("lone surrogate", {"data": b'{"text": "x \\udfff"}', "headers": {"Content-Type": "application/json"}}, 422, "invalid_text", None),
    ("5000-digit number", {"data": b'{"text": ' + b"9" * 5000 + b"}", "headers": {"Content-Type": "application/json"}}, 400,
     "invalid_json", None),
    ("deep nesting", {"data": b"[" * 100_000 + b"]" * 100_000, "headers": {"Content-Type": "application/json"}}, 400, "invalid_json", None),
    ("form without boundary", {"data": b"xx", "headers": {"Content-Type": "multipart/form-data"}}, 400, "invalid_form", None),
    ("form of garbage", {"data": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=abc"}}, 400, "invalid_form", None),
    ("truncated form", {"data": b'--abc\r\nContent-Disposition: form-data; name="text"\r\n\r\nhel',
                        "headers": {"Content-Type": "multipart/form-data; boundary=abc"}}, 400, "invalid_form", None),
    ("form field not UTF-8", {"data": b'--abc\r\nContent-Disposition: form-data; name="text"\r\n\r\ncaf\xe9\r\n--abc--\r\n',
                              "headers": {"Content-Type": "multipart/form-data; boundary=abc"}}, 400, "invalid_form", None),
    ("too loud", {"audio": "LOUD"}, 422, "invalid_audio", None),
])
def test_bad_input_gets_its_4xx(server, recognizer, case, kw, status, code, limit):
    kw = dict(kw)
    if kw.get("audio") == "LONG":
        kw["audio"] = wav_bytes(np.full(int(recognizer.spec.frontend.max_audio_seconds * 8000) + 8000, 0.1, np.float32), sr=8000)
    elif kw.get("audio") == "SILENT":
        kw["audio"] = wav_bytes(np.zeros(SR, np.float32))
    elif kw.get("audio") == "SHORT":
        kw["audio"] = wav_bytes(speechlike(0.1, seed=1))
    elif kw.get("audio") == "LOUD":
        kw["audio"] = encode(speechlike(1.0, seed=1) * 1e20, SR, "WAV", "FLOAT")
    if case == "text too long":
        kw["text"] = "x" * (recognizer.spec.max_text_chars + 1)
    got, _, body = call("POST", server.url + "/v1/recognize", **kw)
    assert got == status, body
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    if limit:
        assert body["error"]["limit"] == limit and body["error"]["max"] > 0
    assert call("GET", server.url + "/healthz")[0] == 200


def test_unknown_path_and_method_are_json_errors(server):
    status, _, body = call("GET", server.url + "/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, headers, body = call("GET", server.url + "/v1/recognize")
    assert status == 405 and "POST" in headers.get("Allow", "")


# ------------------------------------------------------------------ overload and failures


def test_queue_full_returns_503_with_retry_after(recognizer):
    slow = Wrapped(recognizer, delay=0.5)
    app = create_app(slow, ServeConfig(max_batch=1, max_delay_ms=0, max_queue=2), warm_up=False)
    wav = wav_bytes(speechlike(1.0, seed=7))
    with BackgroundServer(app) as srv:
        results = call_many(srv.url, [{"audio": wav}] * 8)
        m = metrics(srv.url)
    statuses = sorted(s for s, _, _ in results)
    # At most 1 in the engine + max_queue (2) waiting are accepted; the rest are refused.
    assert set(statuses) <= {200, 503} and 2 <= statuses.count(200) <= 3, statuses
    for status, headers, body in results:
        if status == 503:
            assert int(headers["Retry-After"]) >= 1
            assert body["error"]["code"] == "queue_full" and body["error"]["limit"] == "max_queue"
    assert m['emotech_requests_total{endpoint="/v1/recognize",status="503"}'] == statuses.count(503)


def test_failing_batch_fails_only_its_requests(recognizer):
    flaky = Wrapped(recognizer, fail_first=1)
    app = create_app(flaky, ServeConfig(max_batch=4, max_delay_ms=50), warm_up=False)
    wav = wav_bytes(speechlike(1.0, seed=8))
    with BackgroundServer(app) as srv:
        first = call_many(srv.url, [{"audio": wav}, {"text": "i am so sad"}])  # one batch, which fails
        status, _, body = call("POST", srv.url + "/v1/recognize", audio=wav)
        m = metrics(srv.url)
    assert [s for s, _, _ in first] == [500, 500]
    assert first[0][2]["error"]["code"] == "inference_failed"
    assert status == 200 and body["label"] in recognizer.labels
    assert m["emotech_batch_failures_total"] == 1


def test_request_timeout_returns_504(recognizer):
    app = create_app(Wrapped(recognizer, delay=0.6), ServeConfig(timeout_s=0.2), warm_up=False)
    with BackgroundServer(app) as srv:
        status, _, body = call("POST", srv.url + "/v1/recognize", text="what a day")
    assert status == 504 and body["error"]["limit"] == "timeout_s"


# ------------------------------------------------------------------ other endpoints


def test_health_model_metrics_openapi(server, recognizer):
    assert call("GET", server.url + "/healthz")[:3:2] == (200, {"status": "ok"})
    assert call("GET", server.url + "/readyz")[:3:2] == (200, {"status": "ready"})
    status, _, model = call("GET", server.url + "/v1/model")
    assert status == 200
    assert model["labels"] == list(recognizer.labels)
    assert model["engine"] == "ort" and model["precision"] == "fp32"
    assert model["files"] == recognizer.spec.files and model["versions"] == recognizer.spec.raw.get("versions", {})
    assert model["server"]["max_batch"] == 32 and model["server"]["stream"]["available"] is True
    assert call("POST", server.url + "/v1/recognize", text="what a day")[0] == 200  # one of each stage, also when run alone
    text = call("GET", server.url + "/metrics")[2]
    for name in ("emotech_requests_total", "emotech_stage_seconds_bucket", "emotech_batch_size_bucket", "emotech_queue_depth",
                 "process_resident_memory_bytes"):
        assert name in text
    from runtime.server import openapi

    status, _, doc = call("GET", server.url + "/openapi.json")
    assert status == 200 and doc == openapi.schema()
    assert json.loads(openapi.SCHEMA_FILE.read_text()) == doc, "runtime/server/openapi.json is stale: python -m runtime.server.openapi"
    assert {"/v1/recognize", "/v1/stream", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])


def test_readyz_turns_ready_only_after_warm_up(recognizer):
    slow = Wrapped(recognizer, delay=0.4)
    with BackgroundServer(create_app(slow, ServeConfig(max_batch=4))) as srv:
        status, headers, body = call("GET", srv.url + "/readyz")
        assert (status, body["status"], headers.get("Retry-After")) == (503, "not ready", "1")
        assert call("GET", srv.url + "/healthz")[0] == 200
        wait_ready(srv.url, timeout=10)
    assert slow.calls == 2  # batch 1 and batch max_batch


def test_api_key_is_required_except_for_healthz(recognizer):
    app = create_app(recognizer, ServeConfig(api_key="s3cret-key"), warm_up=False)
    with BackgroundServer(app) as srv:
        assert call("GET", srv.url + "/healthz")[0] == 200
        status, headers, body = call("GET", srv.url + "/v1/model")
        assert status == 401 and headers.get("WWW-Authenticate") == "Bearer" and body["error"]["code"] == "unauthorized"
        assert call("GET", srv.url + "/v1/model", headers={"Authorization": "Bearer wrong-key!"})[0] == 401
        assert call("GET", srv.url + "/v1/model", headers={"Authorization": "Bearer s3cret-key"})[0] == 200
        status, _, _ = call("POST", srv.url + "/v1/recognize", text="what a day", headers={"Authorization": "Bearer s3cret-key"})
        assert status == 200


def multipart(*parts: tuple[dict, bytes]) -> tuple[bytes, dict]:
    """A hand-built multipart/form-data body (aiohttp's FormData cannot send malformed parts)."""
    body = b""
    for headers, payload in parts:
        body += b"--XX\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n" + payload + b"\r\n"
    return body + b"--XX--\r\n", {"Content-Type": "multipart/form-data; boundary=XX"}


def test_malformed_forms_get_400_and_odd_but_valid_ones_work(server, recognizer):
    """Found by a fuzz of the form parser: each of these was a 500."""
    url = server.url + "/v1/recognize"
    clip = wav_bytes(speechlike(1.0, seed=3), SR)
    want = recognizer.predict(audio=clip, text="what a day")
    # a file part without a filename (curl -F 'audio=<clip.wav'): its bytes are the audio
    body, headers = multipart(({"Content-Disposition": 'form-data; name="audio"', "Content-Type": "audio/wav"}, clip),
                              ({"Content-Disposition": 'form-data; name="text"'}, b"what a day"))
    status, _, got = call("POST", url, data=body, headers=headers)
    assert status == 200, got
    assert_same(got, want)
    # an empty file input (a browser sends filename="" and no bytes) is no audio
    body, headers = multipart(({"Content-Disposition": 'form-data; name="audio"; filename=""', "Content-Type": "application/octet-stream"}, b""),
                              ({"Content-Disposition": 'form-data; name="text"'}, b"what a day"))
    status, _, got = call("POST", url, data=body, headers=headers)
    assert status == 200 and got["modalities"] == ["text"], got
    # but an empty named file is empty audio
    body, headers = multipart(({"Content-Disposition": 'form-data; name="audio"; filename="rec.wav"', "Content-Type": "audio/wav"}, b""))
    status, _, got = call("POST", url, data=body, headers=headers)
    assert status == 415 and "empty" in got["error"]["message"], got
    # curl -F 'audio=<clip.wav' sends no filename and no type: a text field, which WAV bytes are not
    body, headers = multipart(({"Content-Disposition": 'form-data; name="audio"'}, clip))
    status, _, got = call("POST", url, data=body, headers=headers)
    assert status == 400 and "audio=@clip.wav" in got["error"]["message"], got
    bad = [
        multipart(({"Content-Disposition": 'form-data; name="text"', "Content-Type": "text/plain; charset=foo"}, b"hello")),
        multipart(({"Content-Disposition": 'form-data; name="text"', "Content-Transfer-Encoding": "x-uuencode"}, b"hello")),
        (b"text=hello", {"Content-Type": "application/x-www-form-urlencoded; charset=foo"}),
        multipart(({"Content-Disposition": 'form-data; name="text"'}, b"one"), ({"Content-Disposition": 'form-data; name="text"'}, b"two")),
    ]
    for body, headers in bad:
        status, _, got = call("POST", url, data=body, headers=headers)
        assert status == 400 and got["error"]["code"] == "invalid_form", (headers, got)


def test_bearer_scheme_is_case_insensitive(recognizer):
    app = create_app(recognizer, ServeConfig(api_key="s3cret-key"), warm_up=False)
    with BackgroundServer(app) as srv:
        for given in ("bearer s3cret-key", "BEARER s3cret-key"):
            assert call("GET", srv.url + "/v1/model", headers={"Authorization": given})[0] == 200
        assert call("GET", srv.url + "/v1/model", headers={"Authorization": "bearer S3CRET-KEY"})[0] == 401


def test_stream_cuts_utterances_at_the_servers_max_audio_seconds(recognizer, vad):
    """--max-audio-seconds bounds streamed utterances as it bounds /v1/recognize's."""
    app = create_app(recognizer, ServeConfig(max_audio_seconds=5.0), vad=vad, warm_up=False)
    assert app[STATE].vad_config.max_speech_s == 5.0
    assert create_app(recognizer, ServeConfig(), vad=vad, warm_up=False)[STATE].vad_config.max_speech_s == recognizer.spec.frontend.max_audio_seconds
    with pytest.raises(ValueError, match="too short to stream"):
        create_app(recognizer, ServeConfig(max_audio_seconds=0.2), vad=vad, warm_up=False)
    app = create_app(recognizer, ServeConfig(max_audio_seconds=0.25), vad=None, warm_up=False)  # --no-stream: no such check
    assert app[STATE].vad_config is None


def test_stream_does_not_negotiate_compression(server):
    """Deflated WebSocket frames would let 10 kB on the wire cost 10 MB of server work."""
    async def main():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/v1/stream", compress=15) as ws:
            await ws.receive_json()
            return ws.compress

    assert asyncio.run(main()) == 0


def test_config_validation():
    with pytest.raises(ValueError, match="max_batch"):
        ServeConfig(max_batch=0)
    with pytest.raises(ValueError, match="api_key"):
        ServeConfig(api_key="short")
    for bad in ({"timeout_s": float("nan")}, {"timeout_s": float("inf")}, {"max_audio_seconds": -5.0}, {"max_audio_seconds": 0.0},
                {"max_text_chars": 0}, {"max_text_chars": -1}, {"max_stream_seconds": 0.0}, {"drain_timeout_s": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServeConfig(**bad)


def raw_http(url: str, request: bytes, wait: float = 10.0) -> bytes:
    """Send raw bytes to the server; return its first response (headers and a body of its
    Content-Length), or what arrived within ``wait`` seconds."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(request)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
                head, sep, body = reply.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break
        except TimeoutError:
            pass
        return reply


def test_bad_text_in_a_batch_fails_only_its_own_request(server):
    good = {"text": "what a lovely day"}
    results = call_many(server.url, [good] * 6 + [{"json_body": {"text": "x \udfff"}}] + [good] * 6)
    assert [status for status, _, _ in results] == [200] * 6 + [422] + [200] * 6


def test_header_bytes_that_are_not_utf8_get_401_not_500(recognizer):
    app = create_app(recognizer, ServeConfig(api_key="s3cret-key"), warm_up=False)
    with BackgroundServer(app) as srv:
        reply = raw_http(srv.url, b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cr\xe9t-key\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]


def test_a_body_that_never_arrives_gets_408(recognizer):
    app = create_app(recognizer, ServeConfig(timeout_s=1.0), warm_up=False)
    with BackgroundServer(app) as srv:
        start = time.monotonic()
        reply = raw_http(srv.url, b"POST /v1/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 100\r\nConnection: close\r\n\r\n{\"text\": ", wait=10.0)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"request_timeout" in reply and time.monotonic() - start < 5.0


def test_audio_that_decodes_too_large_gets_413_before_decoding(server, monkeypatch):
    from runtime.audio import decoder

    monkeypatch.setattr(decoder, "MAX_DECODED_SAMPLES", 100_000)
    four = np.tile(speechlike(2.0, seed=4)[:, None], (1, 4))  # 128000 samples
    status, _, body = call("POST", server.url + "/v1/recognize", audio=encode(four, SR, "OGG"))
    assert status == 413 and body["error"]["code"] == "audio_too_large" and body["error"]["max"] == 100_000


def test_text_only_requests_do_not_wait_for_the_decode_pool(recognizer):
    """Text alone is checked on the event loop: audio stuck in decoding does not hold it up."""
    app = create_app(recognizer, ServeConfig(decode_threads=1), warm_up=False)
    with BackgroundServer(app) as srv:
        state = app[STATE]
        blocker = threading.Event()
        state.pool.submit(blocker.wait, 10.0)  # the only decode thread is busy
        try:
            start = time.monotonic()
            status, _, body = call("POST", srv.url + "/v1/recognize", text="what a day")
            assert status == 200 and time.monotonic() - start < 5.0, body
        finally:
            blocker.set()


def test_stream_keeps_only_the_last_max_text_chars_of_waiting_transcripts(recognizer):
    from types import SimpleNamespace

    from runtime.server.stream import StreamSession

    session = StreamSession.__new__(StreamSession)
    session.state, session.text = SimpleNamespace(max_text_chars=50), []
    sent = [f"part {i} of the transcript" for i in range(1000)]
    for t in sent:
        session.text.append(t)
        session._cap_text()
        assert sum(len(x) + 1 for x in session.text) <= 50 + 1 + len(t) + 1
    assert " ".join(session.text)[-50:] == " ".join(sent)[-50:]


# ------------------------------------------------------------------ stream


def stream(url: str, audio: np.ndarray, chunk: int = 3200, transcript: str | None = None, extra: list | None = None) -> list[dict]:
    """Send ``audio`` as PCM16 frames to /v1/stream; return every message until the socket closes."""
    async def main():
        async with aiohttp.ClientSession() as s, s.ws_connect(url + "/v1/stream") as ws:
            out = [await ws.receive_json()]
            for frame in extra or []:
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
            if transcript:
                await ws.send_str(json.dumps({"type": "transcript", "text": transcript}))
            pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
            for i in range(0, len(pcm), chunk):
                await ws.send_bytes(pcm[i : i + chunk])
            await ws.send_str(json.dumps({"type": "end"}))
            async for msg in ws:
                out.append(json.loads(msg.data))
            return out

    return asyncio.run(main())


def pcm_roundtrip(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32768.0


def quiet(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.001 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def check_segments(messages: list[dict], audio: np.ndarray, truth: list[tuple[float, float]], recognizer, texts) -> None:
    assert messages[0]["type"] == "ready" and messages[0]["sample_rate"] == SR
    results = [m for m in messages if m["type"] == "result"]
    assert messages[-1] == {"type": "done", "segments": len(truth)}
    assert len(results) == len(truth), messages
    for r, (start, end), text in zip(sorted(results, key=lambda r: r["segment"]), truth, texts):
        assert abs(r["start_s"] - start) < 0.2 and abs(r["end_s"] - end) < 0.35, (r["start_s"], r["end_s"])
        clip = pcm_roundtrip(audio)[round(r["start_s"] * SR) : round(r["end_s"] * SR)]
        assert_same(r, recognizer.predict(audio=clip, text=text, sample_rate=SR))


def test_stream_two_synthetic_utterances_give_two_results(server, recognizer):
    audio = np.concatenate([quiet(0.5, 1), speechlike(1.5, seed=1), quiet(1.0, 2), speechlike(1.2, seed=2), quiet(0.6, 3)])
    messages = stream(server.url, audio, transcript="kids are talking")
    # The transcript arrives before the first utterance starts, so it goes with the first one.
    check_segments(messages, audio, [(0.5, 2.0), (3.0, 4.2)], recognizer, ["kids are talking", None])


@requires_data
@needs_ravdess
def test_stream_two_ravdess_utterances_give_two_results(server, recognizer):
    import soundfile as sf

    clips = [sf.read(str(p), dtype="float32")[0] for p in ravdess_clips(2)]
    audio = np.concatenate([clips[0], np.zeros(int(0.8 * SR), np.float32), clips[1]])
    messages = stream(server.url, audio, chunk=640)
    results = [m for m in messages if m["type"] == "result"]
    assert len(results) == 2, messages
    boundary = clips[0].size / SR + 0.4  # middle of the silence
    assert results[0]["end_s"] < boundary < results[1]["start_s"]


def test_stream_reports_bad_frames_and_keeps_going(server):
    audio = np.concatenate([quiet(0.3), speechlike(1.2, seed=1), quiet(0.6)])
    bad = [b"\x00\x01\x02", "not json", "9" * 5000, "[" * 100_000 + "]" * 100_000,
           json.dumps({"type": "transcript", "text": "x \udfff"})]
    messages = stream(server.url, audio, extra=bad)
    errors = [m for m in messages if m["type"] == "error"]
    assert [e["error"]["code"] for e in errors] == ["bad_frame", "bad_message", "bad_message", "bad_message", "invalid_text"]
    assert sum(m["type"] == "result" for m in messages) == 1


def test_shutdown_flushes_open_streams(recognizer, vad):
    """On shutdown an open stream gets the result of the utterance in progress, then done."""
    audio = np.concatenate([quiet(0.3), speechlike(1.5, seed=1)])  # still speaking when the server stops
    pcm = (audio * 32767).astype("<i2").tobytes()

    async def client(srv: BackgroundServer) -> tuple[list[dict], int | None]:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(srv.url + "/v1/stream") as ws:
                out = [await ws.receive_json()]
                await ws.send_bytes(pcm)
                await asyncio.sleep(0.3)  # let the VAD see the speech start
                stopper = threading.Thread(target=srv.stop)
                stopper.start()
                async for msg in ws:
                    out.append(json.loads(msg.data))
                code = ws.close_code
        await asyncio.to_thread(stopper.join, 30)
        return out, code

    srv = BackgroundServer(create_app(recognizer, ServeConfig(), vad=vad, warm_up=False)).start()
    messages, code = asyncio.run(client(srv))
    assert [m["type"] for m in messages] == ["ready", "result", "done"], messages
    assert code == 1001
    assert abs(messages[1]["start_s"] - 0.3) < 0.2 and messages[1]["end_s"] == pytest.approx(audio.size / SR, abs=0.01)


# ------------------------------------------------------------------ the CLI process


def start_cli(model_dir: Path | None, *args: str, timeout_s: float = 60.0) -> tuple[subprocess.Popen, str, list[str]]:
    """Start ``python -m runtime.serve`` on a free port (``model_dir`` None: the bundled
    model); returns (process, url, log lines, still filling while it runs)."""
    folder = ["--model-dir", str(model_dir)] if model_dir is not None else []
    cmd = [sys.executable, "-m", "runtime.serve", *folder, "--port", "0", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip())
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                url.append(m.group(1))
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout_s):
        proc.kill()
        raise AssertionError("server did not start:\n" + "\n".join(lines))
    return proc, url[0], lines


def test_cli_sigterm_answers_in_flight_requests_and_exits_0(model_dir, recognizer):
    proc, url, lines = start_cli(model_dir, "--max-delay-ms", "500", "--no-stream", "--engine", "ort")
    try:
        wait_ready(url)
        wav = wav_bytes(speechlike(1.0, seed=9))
        results: list = []
        sender = threading.Thread(target=lambda: results.extend(call_many(url, [{"audio": wav}] * 6)))
        sender.start()
        deadline = time.monotonic() + 10
        while metrics(url).get("emotech_queue_depth", 0) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert metrics(url)["emotech_queue_depth"] == 6  # all six are waiting for their batch
        proc.send_signal(signal.SIGTERM)
        sender.join(30)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [s for s, _, _ in results] == [200] * 6
    expected = recognizer.predict(audio=wav)
    for _, _, body in results:
        assert_same(body, expected)
    log = "\n".join(lines)
    assert "engine ort" in log and "shutting down" in log and "stopped" in log
    with pytest.raises(aiohttp.ClientConnectionError):
        call("GET", url + "/healthz")


def test_cli_refuses_public_host_without_api_key(model_dir):
    r = subprocess.run([sys.executable, "-m", "runtime.serve", "--model-dir", str(model_dir), "--host", "0.0.0.0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--api-key" in r.stderr


def test_server_does_not_import_torch():
    code = "import sys, runtime.serve, runtime.server.app, runtime.server.stream; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


# ------------------------------------------------------------------ the load generator


def test_loadgen_reports_throughput_latency_and_memory(recognizer, tmp_path):
    app = create_app(recognizer, ServeConfig(max_delay_ms=20, api_key="loadgen-key"), warm_up=False)
    with BackgroundServer(app) as srv:
        out = tmp_path / "serve.json"
        code = loadgen.main(["--url", srv.url, "--api-key", "loadgen-key", "--clients", "4", "--duration", "1.5", "--warmup", "0.5",
                             "--clip-seconds", "1.0", "--clips", "3", "--text", "what a day", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0
    assert report["requests_ok"] > 0 and report["errors"] == {}
    assert report["throughput_rps"] == pytest.approx(report["requests_ok"] / report["duration_s"], rel=1e-3)
    lat = report["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report["rss_mb"]["after_warmup"] > 0 and report["rss_mb"]["after_run"] > 0
    assert sum(report["batch_size_histogram"].values()) > 0
    assert report["server"]["engine"] == "ort"
    assert "| 4 | 1.0 s |" in out.with_suffix(".md").read_text()


def test_loadgen_spawn_reports_the_server_cpu_time(tmp_path):
    """--spawn: the server's own process is measured too (CPU time per request, for shared machines)."""
    pytest.importorskip("psutil")
    out = tmp_path / "serve.json"
    code = loadgen.main(["--spawn", "--clients", "2", "--duration", "1.5", "--warmup", "0", "--clip-seconds", "1.0", "--clips", "2",
                         "--out", str(out), "--", "--engine", "ort", "--device", "cpu", "--no-stream"])
    report = json.loads(out.read_text())
    assert code == 0 and report["server_exit_code"] == 0
    assert report["server_cpu_s"] > 0
    assert report["cpu_ms_per_request"] == pytest.approx(1000 * report["server_cpu_s"] / report["requests_ok"], rel=1e-2)
    assert "ms per request" in out.with_suffix(".md").read_text()


def test_loadgen_stops_at_max_requests(recognizer):
    with BackgroundServer(create_app(recognizer, ServeConfig(), warm_up=False)) as srv:
        args = loadgen.build_parser().parse_args(["--url", srv.url, "--clients", "2", "--duration", "30", "--warmup", "0",
                                                  "--max-requests", "5", "--clip-seconds", "0.5", "--clips", "1"])
        report = loadgen.run(args)
    assert report["requests_ok"] == 5 and report["duration_s"] < 30


def test_loadgen_refuses_non_loopback_targets():
    args = loadgen.build_parser().parse_args(["--url", "http://10.0.0.5:8080", "--duration", "1"])
    with pytest.raises(ValueError, match="loopback"):
        loadgen.check_load_args(args)


def test_percentiles():
    p = loadgen.percentiles([0.001 * i for i in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["min"] == pytest.approx(1.0) and p["max"] == pytest.approx(100.0)
