"""Transcriber plug-ins (``runtime.asr``): the registry, PocketSphinx, and how the
recognizer, the CLI and the server fill a missing transcript with them.

The real PocketSphinx runs on the repository's espeak clip; the plug-in classes below are
the documented interface (a class with ``transcribe(audio) -> str``), written to reach the
paths a real recogniser reaches only by accident (a crash, a non-string, a very long or
empty answer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import asr
from runtime.asr import TranscriptionError, load_transcriber
from runtime.errors import EngineUnavailableError
from runtime.recognizer import EmotionRecognizer
from tests.helpers import speechlike

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "espeak_angry_words.wav"
SR = 16000


class Fixed:
    """A transcriber that hears the same words every time and records what it was given."""

    name = "fixed"

    def __init__(self, text: str = "what a lovely day"):
        self.text, self.calls = text, []

    def transcribe(self, audio: np.ndarray) -> str:
        self.calls.append(audio)
        return self.text


class Broken:
    def transcribe(self, audio: np.ndarray) -> str:
        raise OSError("model file vanished")


class NotText:
    def transcribe(self, audio: np.ndarray):
        return b"bytes"


@pytest.fixture(scope="module")
def plain(tiny_model_dir) -> EmotionRecognizer:
    rec = EmotionRecognizer.load(tiny_model_dir)
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def sphinx() -> EmotionRecognizer:
    rec = EmotionRecognizer.load(asr="pocketsphinx")  # the bundled weights
    yield rec
    rec.close()


def with_asr(model_dir, transcriber) -> EmotionRecognizer:
    return EmotionRecognizer.load(model_dir, asr=transcriber, prepare_threads=1)


# ------------------------------------------------------------------ registry


def test_registry_names_and_errors():
    assert asr.choices()[:2] == ["none", "pocketsphinx"]
    assert load_transcriber(None) == (None, None) and load_transcriber("none") == (None, None)
    t = Fixed()
    assert load_transcriber(t) == (t, "asr:fixed")
    anonymous = type("Whisperish", (), {"transcribe": lambda self, audio: ""})()
    assert load_transcriber(anonymous)[1] == "asr:Whisperish"  # no name attribute: the class name
    with pytest.raises(ValueError, match="asr must be one of"):
        load_transcriber("whisper")
    with pytest.raises(ValueError, match="transcribe"):
        load_transcriber(object())
    for bad in ("", "none", "a b", "x/y"):
        with pytest.raises(ValueError, match="transcriber name"):
            asr.register(bad, Fixed)


def test_registered_factory_loads_by_name(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(asr.TRANSCRIBERS, "fixed-words", lambda: Fixed("so happy"))
    assert "fixed-words" in asr.choices()
    rec = EmotionRecognizer.load(tiny_model_dir, asr="fixed-words")
    p = rec.predict(audio=speechlike(1.0), sample_rate=SR)
    assert (p.transcript, p.transcript_source) == ("so happy", "asr:fixed-words")
    rec.close()


def test_missing_pocketsphinx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # import pocketsphinx raises ImportError
    with pytest.raises(EngineUnavailableError, match=r"pip install 'emotech\[asr\]'"):
        load_transcriber("pocketsphinx")


# ------------------------------------------------------------------ the recognizer


def test_transcriber_fills_only_a_missing_transcript(tiny_model_dir, plain):
    t = Fixed()
    rec = with_asr(tiny_model_dir, t)
    audio = speechlike(1.2, seed=3)
    filled = rec.predict(audio=audio, sample_rate=SR)
    assert (filled.transcript, filled.transcript_source, filled.modalities) == ("what a lovely day", "asr:fixed", ("audio", "text"))
    assert filled.scores == plain.predict(audio=audio, text="what a lovely day", sample_rate=SR).scores
    assert t.calls[0].dtype == np.float32 and t.calls[0].ndim == 1  # the trimmed 16-kHz clip
    # the caller's transcript wins and the transcriber is not called
    given = rec.predict(audio=audio, text="oh no", sample_rate=SR)
    assert (given.transcript, given.transcript_source, len(t.calls)) == ("oh no", "caller", 1)
    # a caller's text without words counts as none: the transcriber fills it
    assert rec.predict(audio=audio, text=" \u200b ", sample_rate=SR).transcript_source == "asr:fixed"
    # text alone: nothing to transcribe
    assert rec.predict(text="oh no").transcript_source == "caller" and len(t.calls) == 2
    # without a transcriber, no transcript
    bare = plain.predict(audio=audio, sample_rate=SR)
    assert (bare.transcript, bare.transcript_source, bare.modalities) == (None, None, ("audio",))
    # lists: each clip is transcribed (the prepare_many path)
    rec.prepare_threads = 2
    preds = rec.predict(audio=[audio, speechlike(0.8, seed=4)], text=[None, "kids"], sample_rate=SR)
    assert [(p.transcript, p.transcript_source) for p in preds] == [("what a lovely day", "asr:fixed"), ("kids", "caller")]
    rec.close()


def test_transcripts_without_words_are_no_text_and_long_ones_are_cut(tiny_model_dir):
    audio = speechlike(1.0, seed=5)
    rec = with_asr(tiny_model_dir, Fixed("  \n "))
    p = rec.predict(audio=audio, sample_rate=SR)
    assert (p.transcript, p.transcript_source, p.modalities) == (None, None, ("audio",))
    rec.close()
    rec = with_asr(tiny_model_dir, Fixed("word " * 1000))  # 5000 characters
    p = rec.predict(audio=audio, sample_rate=SR)
    limit = rec.encoder.max_chars
    assert len(p.transcript) <= limit and p.transcript.endswith("word") and len(p.transcript) > limit - 5
    rec.close()


def test_failing_transcribers_raise_transcription_error(tiny_model_dir):
    for transcriber, message in ((Broken(), "OSError: model file vanished"), (NotText(), "returned bytes")):
        rec = with_asr(tiny_model_dir, transcriber)
        with pytest.raises(TranscriptionError, match=message):
            rec.predict(audio=speechlike(1.0), sample_rate=SR)
        rec.close()


def test_pocketsphinx_transcribes_the_example_clip_and_the_cli_prints_it(sphinx, capsys):
    from runtime import predict

    p = sphinx.predict(audio=str(CLIP))
    assert p.transcript_source == "asr:pocketsphinx" and p.modalities == ("audio", "text")
    assert len(p.transcript.split()) >= 5, p.transcript  # a 4-s sentence; the robot voice is not recognised word for word
    silence = sphinx.asr.transcribe(np.zeros(SR, np.float32))
    assert len(silence.split()) <= 1  # digital silence: nothing, or a filler word

    assert predict.main([str(CLIP), "--asr", "pocketsphinx", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["transcript"], line["transcript_source"]) == (p.transcript, "asr:pocketsphinx")  # same words, same clip
    assert line["label"] == p.label
    assert predict.format_line("x.wav", p, as_json=False).endswith("\t[asr:pocketsphinx] " + p.transcript)
    with pytest.raises(SystemExit):
        predict.main([str(CLIP), "--asr", "whisper"])


def test_server_fills_transcripts_and_reports_a_failing_transcriber(tiny_model_dir):
    """/v1/recognize and /v1/stream with a transcriber: its words when the caller sends
    none, the caller's otherwise; a transcriber that fails is the server's 500."""
    pytest.importorskip("aiohttp")
    from benchmarks.loadgen import speechlike as voiced
    from runtime.server.app import create_app
    from runtime.server.runner import BackgroundServer
    from runtime.server.vad import SileroVad
    from tests.helpers import encode
    from tests.test_serve import call, quiet
    from tests.test_stream_features import results, talk

    wav = encode(voiced(1.2, seed=1), SR, "WAV")
    rec = with_asr(tiny_model_dir, Fixed())
    with BackgroundServer(create_app(rec, vad=SileroVad(), warm_up=False)) as srv:
        status, _, body = call("POST", srv.url + "/v1/recognize", audio=wav)
        assert status == 200 and (body["transcript"], body["transcript_source"], body["modalities"]) == \
            ("what a lovely day", "asr:fixed", ["audio", "text"])
        _, _, body = call("POST", srv.url + "/v1/recognize", audio=wav, text="oh no")
        assert (body["transcript"], body["transcript_source"]) == ("oh no", "caller")
        audio = np.concatenate([quiet(0.4), voiced(1.2, seed=2), quiet(0.8)])
        got = results(talk(srv.url, [{"type": "start", "per_modality": True}], audio))
        assert len(got) == 1 and (got[0]["transcript"], got[0]["transcript_source"]) == ("what a lovely day", "asr:fixed")
        assert got[0]["modality_scores"]["text"] is not None
    rec.close()
    rec = with_asr(tiny_model_dir, Broken())
    with BackgroundServer(create_app(rec, warm_up=False)) as srv:
        status, _, body = call("POST", srv.url + "/v1/recognize", audio=wav)
        assert status == 500 and body["error"]["code"] == "transcription_failed" and "model file vanished" in body["error"]["message"]
        assert call("POST", srv.url + "/v1/recognize", audio=wav, text="fine")[0] == 200  # a caller's text needs no transcriber
    rec.close()
