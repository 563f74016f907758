"""Silero VAD (vendored ONNX) and the streaming utterance segmenter."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from benchmarks.loadgen import speechlike
from runtime.server.vad import (
    SAMPLE_RATE,
    vad_model_path,
    VAD_SHA256,
    WINDOW,
    Segmenter,
    SileroVad,
    VadConfig,
    pcm16_to_float,
)
from runtime.spec import sha256_file

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def quiet(seconds: float, seed: int = 0) -> np.ndarray:
    """Room noise far below speech level."""
    return (0.001 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def two_utterances() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """0.5 s quiet, 1.5 s voice, 1.0 s quiet, 1.2 s voice, 0.6 s quiet; and the voiced spans."""
    parts = [quiet(0.5, 1), speechlike(1.5, seed=1), quiet(1.0, 2), speechlike(1.2, seed=2), quiet(0.6, 3)]
    return np.concatenate(parts), [(0.5, 2.0), (3.0, 4.2)]


def segment(vad: SileroVad, audio: np.ndarray, chunk: int, cfg: VadConfig = VadConfig()) -> list:
    seg = Segmenter(vad, cfg)
    out = []
    for i in range(0, audio.size, chunk):
        out += seg.feed(audio[i : i + chunk])
    return out + seg.flush()


def test_vendored_model_matches_recorded_hash():
    assert sha256_file(vad_model_path()) == VAD_SHA256
    assert (vad_model_path().parent / "LICENSE").read_text().startswith("MIT License")


def test_scores_speechlike_signal_as_speech_and_noise_as_not(vad):
    speech = vad.probabilities(speechlike(1.5, seed=1))
    assert (speech >= 0.5).mean() > 0.6
    noise = vad.probabilities((0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32))
    tone = vad.probabilities((0.3 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR)).astype(np.float32))
    assert noise.max() < 0.5 and tone.max() < 0.5
    assert speech.shape == (-(-int(1.5 * SR) // WINDOW),)


def test_two_utterances_give_two_segments_near_the_truth(vad):
    audio, truth = two_utterances()
    segs = segment(vad, audio, 1600)
    assert len(segs) == 2
    for s, (start, end) in zip(segs, truth):
        assert abs(s.start_s - start) < 0.15 and abs(s.end_s - end) < 0.3
        assert s.audio.size == s.end - s.start
        np.testing.assert_array_equal(s.audio, audio[s.start : s.end])
    assert [s.index for s in segs] == [0, 1]


@pytest.mark.parametrize("chunk", [333, 512, 16000, 10**6])
def test_segments_do_not_depend_on_how_audio_is_chunked(vad, chunk):
    audio, _ = two_utterances()
    ref = [(s.start, s.end) for s in segment(vad, audio, 1600)]
    assert [(s.start, s.end) for s in segment(vad, audio, chunk)] == ref


def test_silence_gives_no_segment(vad):
    assert segment(vad, quiet(3.0), 4000) == []


def test_short_blip_is_dropped_by_min_speech(vad):
    audio = np.concatenate([quiet(0.5), speechlike(1.0, seed=1), quiet(1.0)])
    assert len(segment(vad, audio, 4000)) == 1
    assert segment(vad, audio, 4000, VadConfig(min_speech_ms=2000)) == []


def test_utterance_open_at_end_of_stream_is_flushed(vad):
    audio = np.concatenate([quiet(0.5), speechlike(1.5, seed=1)])
    seg = Segmenter(vad)
    assert seg.feed(audio) == []
    assert seg.in_speech
    out = seg.flush()
    assert len(out) == 1 and out[0].end == audio.size


def test_long_speech_is_cut_at_max_length(vad):
    audio = np.concatenate([speechlike(1.5, seed=s) for s in (1, 2, 5)])  # 4.5 s, no pause long enough to end it
    segs = segment(vad, audio, 4000, VadConfig(max_speech_s=1.0, min_silence_ms=2000))
    assert len(segs) >= 3
    assert all(s.end - s.start <= SR for s in segs)
    assert all(a.end <= b.start for a, b in zip(segs, segs[1:]))  # no overlap


def test_buffer_stays_bounded_on_a_long_quiet_stream(vad):
    seg = Segmenter(vad)
    for i in range(20):
        seg.feed(quiet(1.0, i))
    assert seg._buffer.size <= SR  # only the padding window is kept while nobody speaks


def test_pcm16_conversion():
    x = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    np.testing.assert_allclose(pcm16_to_float(x), [0.0, 0.5, -1.0, 32767 / 32768])
    with pytest.raises(ValueError, match="even number of bytes"):
        pcm16_to_float(b"\x00\x01\x02")


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 1.5}, "threshold"),
    ({"neg_threshold": 0.9}, "neg_threshold"),
    ({"min_silence_ms": -1}, "min_speech_ms"),
    ({"max_speech_s": 0.1}, "max_speech_s"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VadConfig(**kwargs)


class ScriptedVad:
    """A stand-in VAD that scores windows from a script (1.0 speech, 0.0 silence)."""

    def __init__(self, probs):
        self.probs = list(probs)

    def initial_state(self):
        return None, None

    def window(self, samples, state, context):
        return (self.probs.pop(0) if self.probs else 0.0), state, context


def test_end_of_stream_drops_a_blip_shorter_than_min_speech():
    """At the end of a stream the utterance's length is to where the speech stopped (as in
    the per-window rule), not to the end of the stream: 4 windows of speech (128 ms) then
    silence shorter than min_silence_ms is dropped, not sent to the model as 0.19 s."""
    seg = Segmenter(ScriptedVad([1.0] * 4 + [0.0] * 8), VadConfig())
    assert seg.feed(np.zeros(12 * WINDOW, np.float32)) == []
    assert seg.flush() == []
    long = Segmenter(ScriptedVad([1.0] * 10 + [0.0] * 4), VadConfig())  # 320 ms of speech: kept
    long.feed(np.zeros(14 * WINDOW, np.float32))
    (kept,) = long.flush()
    assert kept.end - kept.start >= 10 * WINDOW
