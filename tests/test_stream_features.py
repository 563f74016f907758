"""What the demo needs from the server: the stream's start message (client sample rate,
per-modality scores, smoothing), score smoothing, the --vad-* options, the API key as a
WebSocket subprotocol, and the page's static files; plus the stream resampler.

Real server on 127.0.0.1 (``BackgroundServer``), the bundled model, synthetic voiced
audio that Silero VAD takes for speech.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")

from benchmarks.loadgen import speechlike
from runtime.audio import StreamResampler, resample
from runtime.recognizer import EmotionRecognizer
from runtime.server.app import create_app
from runtime.server.limits import ServeConfig
from runtime.server.runner import BackgroundServer
from runtime.server.smoothing import ScoreSmoother, check_half_life
from runtime.server.stream_options import parse_start
from runtime.server.vad import SileroVad, VadConfig
from tests.test_serve import TOL, assert_same, call, quiet, wait_ready

SR = 16000
KEY = "s3cret-key/with+odd=chars"


@pytest.fixture(scope="module")
def recognizer():
    rec = EmotionRecognizer.load(max_batch=32)  # the bundled weights
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def server(recognizer, vad):
    with BackgroundServer(create_app(recognizer, ServeConfig(max_delay_ms=20), vad=vad, warm_up=False)) as srv:
        wait_ready(srv.url)
        yield srv


@pytest.fixture(scope="module")
def keyed(recognizer, vad):
    with BackgroundServer(create_app(recognizer, ServeConfig(api_key=KEY), vad=vad, warm_up=False)) as srv:
        yield srv


def two_utterances(rate: int = SR) -> tuple[np.ndarray, list[tuple[float, float]]]:
    audio = np.concatenate([quiet(0.5, 1), speechlike(1.5, seed=1), quiet(1.0, 2), speechlike(1.2, seed=2), quiet(0.6, 3)])
    return resample(audio, SR, rate), [(0.5, 2.0), (3.0, 4.2)]


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def talk(url: str, first: list, audio: np.ndarray | None = None, chunk: int = 4000, headers=None, protocols=()) -> list[dict]:
    """Connect to /v1/stream, send ``first`` (JSON objects or bytes), the audio as PCM16,
    then end; return every message until the socket closes (and the close code last)."""
    async def main():
        async with aiohttp.ClientSession() as s, s.ws_connect(url + "/v1/stream", headers=headers, protocols=protocols) as ws:
            out = [await ws.receive_json()]
            for frame in first:
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(json.dumps(frame)))
            if audio is not None:
                data = pcm16(audio)
                for i in range(0, len(data), chunk):
                    await ws.send_bytes(data[i : i + chunk])
            if not ws.closed:
                await ws.send_str(json.dumps({"type": "end"}))
            async for msg in ws:
                out.append(json.loads(msg.data))
            return out + [{"close": ws.close_code, "protocol": ws.protocol}]

    return asyncio.run(main())


def results(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m.get("type") == "result"]


# ------------------------------------------------------------------ the client's sample rate


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_stream_at_the_clients_rate_is_resampled_to_16k(server, recognizer, rate):
    audio, truth = two_utterances(rate)
    messages = talk(server.url, [{"type": "start", "sample_rate": rate}], audio)
    assert messages[1] == {"type": "started", "sample_rate": rate, "per_modality": False, "smoothing_half_life_s": 5.0}
    got = results(messages)
    assert [r["segment"] for r in got] == [0, 1], messages
    at16k = resample(audio, rate, SR)  # what the server's stream resampler produces, whole
    for r, (start, end) in zip(got, truth):
        assert abs(r["start_s"] - start) < 0.2 and abs(r["end_s"] - end) < 0.35, (r["start_s"], r["end_s"])
        pcm = np.frombuffer(pcm16(audio), "<i2").astype(np.float32) / 32768
        clip = resample(pcm, rate, SR)[round(r["start_s"] * SR) : round(r["end_s"] * SR)]
        assert_same(r, recognizer.predict(audio=clip, sample_rate=SR), tol=1e-4)
    assert messages[-2] == {"type": "done", "segments": 2} and at16k.size > 0


def test_stream_resampler_in_pieces_equals_resampling_the_whole():
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(48000 * 2)).astype(np.float32)
    for rate in (8000, 22050, 44100, 48000):
        r = StreamResampler(rate, SR)
        sizes = rng.integers(1, 3000, size=200)
        pieces, pos = [], 0
        for n in sizes:
            pieces.append(r(x[pos : pos + n]))
            pos += n
        pieces.append(r(x[pos:], last=True))
        whole = resample(x, rate, SR)
        got = np.concatenate(pieces)
        assert got.shape == whole.shape and np.abs(got - whole).max() < 1e-6, rate
    same = StreamResampler(SR, SR)
    assert same(x[:100]) is not None and np.array_equal(same(x[:100]), x[:100])


@pytest.mark.parametrize("first, message", [
    ({"type": "start", "sample_rate": 7999}, "sample_rate must be a whole number of Hz in [8000, 48000]"),
    ({"type": "start", "sample_rate": 48001}, "in [8000, 48000]"),
    ({"type": "start", "sample_rate": 16000.5}, "whole number"),
    ({"type": "start", "sample_rate": True}, "whole number"),
    ({"type": "start", "sample_rate": "48000"}, "whole number"),
    ({"type": "start", "smoothing_half_life_s": -1}, "smoothing_half_life_s must be a number of seconds in [0, 3600]"),
    ({"type": "start", "smoothing_half_life_s": 1e9}, "smoothing_half_life_s must be"),
    ({"type": "start", "per_modality": "yes"}, "per_modality must be true or false"),
    ({"type": "start", "rate": 48000}, "unknown start option(s) ['rate']"),
])
def test_bad_start_messages_end_the_stream(server, first, message):
    messages = talk(server.url, [first], speechlike(0.5))
    errors = [m for m in messages if m.get("type") == "error"]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "invalid_start" and message in errors[0]["error"]["message"]
    assert messages[-1]["close"] == 1008 and not results(messages)


def test_start_after_audio_or_twice_is_refused(server):
    for first in ([pcm16(quiet(0.1)), {"type": "start", "sample_rate": 48000}],
                  [{"type": "start"}, {"type": "start", "sample_rate": 48000}]):
        messages = talk(server.url, first)
        error = next(m for m in messages if m.get("type") == "error")["error"]
        assert error["code"] == "invalid_start" and "once, before the first audio frame" in error["message"]
        assert messages[-1]["close"] == 1008


def test_parse_start_accepts_integral_floats_and_defaults():
    assert parse_start({"type": "start", "sample_rate": 44100.0}).sample_rate == 44100
    opts = parse_start({"type": "start"})
    assert (opts.sample_rate, opts.smoothing_half_life_s, opts.per_modality) == (16000, None, False)


# ------------------------------------------------------------------ per-modality scores and smoothing


def test_per_modality_scores_are_each_modality_alone(server, recognizer):
    audio, _ = two_utterances()
    messages = talk(server.url, [{"type": "start", "per_modality": True}, {"type": "transcript", "text": "what a lovely day"}], audio)
    first, second = results(messages)
    clip = (np.frombuffer(pcm16(audio), "<i2").astype(np.float32) / 32768)[round(first["start_s"] * SR) : round(first["end_s"] * SR)]
    assert_same(first, recognizer.predict(audio=clip, text="what a lovely day", sample_rate=SR))
    assert (first["transcript"], first["transcript_source"]) == ("what a lovely day", "caller")
    alone = recognizer.predict(audio=clip, sample_rate=SR)
    words = recognizer.predict(text="what a lovely day")
    for name, want in (("audio", alone), ("text", words)):
        got = first["modality_scores"][name]
        assert max(abs(got[k] - want.scores[k]) for k in want.scores) <= TOL, name
    # no transcript for the second utterance: its audio scores are the fused ones, text none
    assert second["modality_scores"] == {"audio": second["scores"], "text": None} and second["transcript"] is None


@pytest.mark.parametrize("half_life", [None, 0, 0.7])
def test_results_carry_scores_smoothed_in_utterance_order(server, half_life):
    audio = np.concatenate([quiet(0.3, 9)] + [np.concatenate([speechlike(0.8, seed=s), quiet(0.7, s)]) for s in range(4)])
    start = {"type": "start"} if half_life is None else {"type": "start", "smoothing_half_life_s": half_life}
    got = results(talk(server.url, [start], audio, chunk=1600))
    assert [r["segment"] for r in got] == [0, 1, 2, 3]  # sent in order
    smoother = ScoreSmoother(5.0 if half_life is None else half_life)
    for r in got:
        want = smoother.update(r["scores"], r["end_s"])
        assert r["smoothed"]["label"] == want["label"] and r["smoothed"]["half_life_s"] == smoother.half_life_s
        assert max(abs(r["smoothed"]["scores"][k] - want["scores"][k]) for k in want["scores"]) < 1e-12
        assert abs(sum(r["smoothed"]["scores"].values()) - 1) < 1e-9
        if half_life == 0:
            assert r["smoothed"]["scores"] == r["scores"]


class SlowFirst:
    """The recognizer, with the first item's preparation held back ``delay`` seconds (as a
    long utterance's transcription would be), so the next utterance's result is ready first."""

    def __init__(self, rec, delay: float):
        self.rec, self.delay, self.calls = rec, delay, 0

    def __getattr__(self, name):
        return getattr(self.rec, name)

    def prepare(self, *args, **kw):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.delay)
        return self.rec.prepare(*args, **kw)


def test_results_leave_in_utterance_order_when_a_later_one_is_ready_first(recognizer, vad):
    slow = SlowFirst(recognizer, delay=1.5)
    with BackgroundServer(create_app(slow, ServeConfig(decode_threads=2), vad=vad, warm_up=False)) as srv:
        audio, _ = two_utterances()
        got = results(talk(srv.url, [], audio))
    assert [r["segment"] for r in got] == [0, 1]
    assert got[1]["smoothed"]["scores"] != got[1]["scores"]  # smoothed over both, in order


def test_smoother_is_the_decaying_mean_it_documents():
    a = {"happy": 1.0, "sad": 0.0}
    b = {"happy": 0.0, "sad": 1.0}
    s = ScoreSmoother(2.0)
    assert s.update(a, 1.0)["scores"] == a  # the first utterance alone
    out = s.update(b, 3.0)  # one half-life later: weights 1/2 and 1
    assert out["scores"] == pytest.approx({"happy": 0.5 / 1.5, "sad": 1 / 1.5}) and out["label"] == "sad"
    out = s.update(a, 7.0)  # weights 1/8, 1/4, 1
    assert out["scores"]["happy"] == pytest.approx((1 / 8 + 1) / (1 / 8 + 1 / 4 + 1))
    late = ScoreSmoother(2.0)
    late.update(a, 100.0)
    assert late.update(b, 99.0)["scores"] == pytest.approx({"happy": 0.5, "sad": 0.5})  # out of order: no negative decay
    assert ScoreSmoother(0).update(b, 5.0)["scores"] == b
    for bad in (-0.1, 3600.1, math.nan, math.inf, "5", True, None):
        with pytest.raises(ValueError, match="smoothing_half_life_s must be"):
            check_half_life(bad)
    with pytest.raises(ValueError, match="smoothing_half_life_s must be"):
        ServeConfig(smoothing_half_life_s=-1)


# ------------------------------------------------------------------ VAD options


def test_vad_options_reach_the_stream(recognizer, vad):
    """A long --vad-min-silence-ms joins the two utterances; the server reports its VAD settings."""
    cfg = VadConfig(threshold=0.6, min_silence_ms=1500, pad_ms=100)
    with BackgroundServer(create_app(recognizer, ServeConfig(max_audio_seconds=20), vad=vad, vad_config=cfg, warm_up=False)) as srv:
        _, _, model = call("GET", srv.url + "/v1/model")
        assert {k: model["server"]["stream"]["vad"][k] for k in ("threshold", "min_silence_ms", "pad_ms", "max_speech_s")} == \
            {"threshold": 0.6, "min_silence_ms": 1500, "pad_ms": 100, "max_speech_s": 20}
        audio, _ = two_utterances()
        got = results(talk(srv.url, [], audio))
    assert len(got) == 1 and got[0]["start_s"] == pytest.approx(0.4, abs=0.15) and got[0]["end_s"] > 4.2


@pytest.mark.parametrize("args, message", [
    (["--vad-threshold", "1.5"], "threshold must be in (0, 1)"),
    (["--vad-threshold", "nan"], "threshold must be in (0, 1)"),
    (["--vad-min-silence-ms", "-1"], "must be >= 0"),
    (["--vad-min-silence-ms", "10001"], "min_silence_ms must be <= 10000"),
    (["--vad-pad-ms", "1001"], "pad_ms <= 1000"),
    (["--smoothing-half-life-s", "-2"], "smoothing_half_life_s must be"),
    (["--asr", "whisper"], None),
])
def test_serve_cli_refuses_bad_stream_options(args, message, capsys):
    from runtime import serve

    if message is None:
        with pytest.raises(SystemExit):
            serve.main(args)
        return
    assert serve.main(["--no-warmup", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


# ------------------------------------------------------------------ the API key as a subprotocol


def subprotocol(key: str) -> str:
    return "emotech.key." + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def handshake(url: str, **kw) -> int | str:
    """101 -> the selected subprotocol; otherwise the HTTP status."""
    async def main():
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(url + "/v1/stream", **kw) as ws:
                    await ws.receive_json()
                    return ws.protocol
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    return asyncio.run(main())


def test_stream_takes_the_api_key_as_a_subprotocol(keyed):
    assert handshake(keyed.url, protocols=("emotech.v1", subprotocol(KEY))) == "emotech.v1"  # the key is never echoed
    assert handshake(keyed.url, headers={"Authorization": f"Bearer {KEY}"}) is None  # headers still work
    assert handshake(keyed.url, protocols=("emotech.v1",)) == 401
    assert handshake(keyed.url, protocols=("emotech.v1", subprotocol(KEY + "x"))) == 401
    assert handshake(keyed.url, protocols=("emotech.v1", "emotech.key.%%%")) == 401
    assert handshake(keyed.url, protocols=("emotech.v1", "emotech.key." + base64.urlsafe_b64encode(b"\xff\xfe").decode())) == 401
    # only the stream reads it: other endpoints need the header
    status, _, _ = call("GET", keyed.url + "/v1/model", headers={"Sec-WebSocket-Protocol": subprotocol(KEY)})
    assert status == 401


# ------------------------------------------------------------------ the page's files


def test_page_is_served_with_a_same_origin_policy_and_without_the_key(keyed):
    status, headers, body = call("GET", keyed.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and "<title>EmoTech live</title>" in body
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    for name, ctype in (("demo.js", "text/javascript"), ("demo.css", "text/css"), ("capture-worklet.js", "text/javascript")):
        status, headers, body = call("GET", f"{keyed.url}/demo/{name}")
        assert status == 200 and headers["Content-Type"].startswith(ctype) and len(body) > 500, name
    for path in ("/demo/nothing.js", "/demo/../app.py", "/demo/", "/v1/model"):
        assert call("GET", keyed.url + path)[0] == 401, path  # not page files: the key is needed
    assert call("GET", keyed.url + "/demo/nothing.js", headers={"Authorization": f"Bearer {KEY}"})[0] == 404


def test_page_refers_only_to_its_own_origin():
    """No CDN, no absolute URLs: the kiosk may be offline, and the page talks to its server only."""
    from runtime.server.demo import load_files

    for name, data in load_files().items():
        text = data.decode()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


def test_no_demo_page_when_turned_off(recognizer):
    with BackgroundServer(create_app(recognizer, ServeConfig(), warm_up=False, demo_page=False)) as srv:
        assert call("GET", srv.url + "/")[0] == 404
