"""EmotionRecognizer on ONNX Runtime with a tiny model: API, batching, errors, hashes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from runtime import EmotionRecognizer, ModelFolderError, TextError
from runtime.errors import AudioError, EmotionError, EngineUnavailableError
from tests.helpers import REPO, encode, speechlike


@pytest.fixture(scope="module")
def rec(tiny_model_dir):
    r = EmotionRecognizer.load(tiny_model_dir, engine="ort")
    yield r
    r.close()


def test_single_item_scores_sum_to_one(rec):
    pred = rec.predict(audio=speechlike(1.2), text="I am so happy today", sample_rate=16000)
    assert set(pred.scores) == set(rec.labels)
    assert abs(sum(pred.scores.values()) - 1) < 1e-6
    assert pred.label == max(pred.scores, key=pred.scores.get)
    assert pred.modalities == ("audio", "text") and pred.duration_s == pytest.approx(1.2, abs=1e-3)


def test_batch_equals_single_calls_and_keeps_order(rec):
    clips = [speechlike(s, seed=i) for i, s in enumerate([2.0, 0.5, 1.1, 3.0, 0.7])]
    texts = ["what a day", None, "this is awful", None, "ok"]
    batch = rec.predict(audio=clips, text=texts, sample_rate=16000)
    for clip, text, b in zip(clips, texts, batch):
        single = rec.predict(audio=clip, text=text, sample_rate=16000)
        for k in rec.labels:
            assert abs(single.scores[k] - b.scores[k]) < 1e-5
        assert b.duration_s == pytest.approx(clip.size / 16000, abs=1e-3)


def test_parallel_preparation_equals_serial_and_names_first_bad_item(tiny_model_dir):
    clips = [encode(speechlike(s, sr=44100, seed=i), 44100, "WAV", "PCM_16") for i, s in enumerate([1.5, 0.6, 2.2, 0.9])]
    serial = EmotionRecognizer.load(tiny_model_dir, engine="ort", prepare_threads=1)
    parallel = EmotionRecognizer.load(tiny_model_dir, engine="ort", prepare_threads=3)
    try:
        for a, b in zip(serial.predict(audio=clips), parallel.predict(audio=clips)):
            assert a.scores == b.scores
        bad = clips[:1] + [b"not audio", np.zeros(16000, dtype=np.float32), clips[2]]
        with pytest.raises(AudioError, match="item 1 is not decodable audio"):
            parallel.predict(audio=bad, sample_rate=16000)
        # clips are decoded first and conditioned after: a conditioning error (item 0 is
        # silent) still wins over a later item's decoding error, as one by one
        with pytest.raises(AudioError, match="item 0 is silent"):
            parallel.predict(audio=[np.zeros(16000, dtype=np.float32), clips[1], b"not audio"], sample_rate=16000)
        # non-finite audio at another rate is reported, not resampled; a text error of an
        # earlier item wins over a later item's audio error
        nan = np.full(48000, np.nan, dtype=np.float32)
        with pytest.raises(AudioError, match="item 1 has 48000 NaN"):
            parallel.predict(audio=[speechlike(1.0, sr=48000), nan], sample_rate=48000)
        with pytest.raises(TextError, match="item 0 text"):
            parallel.predict(audio=[clips[0], b"not audio"], text=["x" * 100_000, None])
        # mixed inputs (stereo 44.1 kHz WAV, 16 kHz float, 48 kHz FLAC, text only) as one by one
        mixed = [clips[3], speechlike(0.7, seed=9), encode(speechlike(1.1, sr=48000, seed=5), 48000, "FLAC"), None]
        texts = [None, "so happy", "no", "only text"]
        for a, b in zip(serial.predict(audio=mixed, text=texts, sample_rate=16000), parallel.predict(audio=mixed, text=texts, sample_rate=16000)):
            assert a.scores == b.scores and a.duration_s == b.duration_s
        assert parallel._pool is not None  # the pool was used, and is shut down by close()
    finally:
        serial.close()
        parallel.close()
    assert parallel._pool is None


def test_modalities_and_calibration_temperature(rec, tiny_model_dir):
    text_only = rec.predict(text="hello there")
    assert text_only.modalities == ("text",) and text_only.duration_s is None
    audio_only = rec.predict(audio=encode(speechlike(1.0), 22050, "FLAC"))
    assert audio_only.modalities == ("audio",)
    # the text-mode temperature (0.8) is applied to the engine's logits
    feed = rec.build_feed([rec.prepare(text="hello there")])
    logits = rec.engine.infer(feed)[0] / 0.8
    p = np.exp(logits - logits.max())
    p /= p.sum()
    np.testing.assert_allclose([text_only.scores[k] for k in rec.labels], p, atol=1e-6)


def test_mixed_batch_with_text_only_items(rec):
    out = rec.predict(audio=[speechlike(1.0), None], text=[None, "so scared"], sample_rate=16000)
    assert [p.modalities for p in out] == [("audio",), ("text",)]


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({}, EmotionError, "give audio, text or both"),
        ({"text": 42}, TextError, "must be a string"),
        ({"text": "x" * 5000}, TextError, "maximum is 2000"),
        ({"audio": np.zeros(16000, np.float32), "sample_rate": 16000}, AudioError, "silent"),
        ({"audio": [speechlike(1.0)], "text": ["a", "b"], "sample_rate": 16000}, EmotionError, "1 items but text has 2"),
        ({"audio": [speechlike(1.0), b"junk"], "sample_rate": 16000}, AudioError, "item 1"),
    ],
)
def test_bad_input_raises_named_error(rec, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        rec.predict(**kwargs)


def test_hash_mismatch_and_missing_files(tiny_model_dir, tmp_path):
    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    with open(bad / "emotech.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelFolderError, match="emotech.onnx does not match its sha256"):
        EmotionRecognizer.load(bad)
    (bad / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match="tokenizer.json is missing"):
        EmotionRecognizer.load(bad)
    with pytest.raises(ModelFolderError, match="spec.json not found"):
        EmotionRecognizer.load(tmp_path)
    spec = json.loads((bad / "spec.json").read_text())
    del spec["labels"]
    (bad / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError, match="malformed"):
        EmotionRecognizer.load(bad)


def test_pruned_folder_loads_the_engine_whose_files_it_keeps(tiny_model_dir, tmp_path):
    """A folder cut down to one engine's files loads that engine; asking for another names
    the absent file; a present file with the wrong hash is still refused at load."""
    onnx_only = tmp_path / "onnx_only"
    shutil.copytree(tiny_model_dir, onnx_only)
    (onnx_only / "model.safetensors").unlink()
    r = EmotionRecognizer.load(onnx_only, engine="ort")
    try:
        assert r.predict(text="what a day").label in r.labels
        assert r.describe()["missing_files"] == ["model.safetensors"]
    finally:
        r.close()
    with pytest.raises(ModelFolderError, match=r"model.safetensors is missing, and engine 'torch' needs it \(spec.json lists it"):
        EmotionRecognizer.load(onnx_only, engine="torch")

    weights_only = tmp_path / "weights_only"
    shutil.copytree(tiny_model_dir, weights_only)
    (weights_only / "emotech.onnx").unlink()
    with pytest.raises(ModelFolderError, match="emotech.onnx is missing, and the fp32 fused graph needs it"):
        EmotionRecognizer.load(weights_only, engine="ort")
    r = EmotionRecognizer.load(weights_only, engine="torch")
    try:
        assert r.predict(text="what a day").label in r.labels
    finally:
        r.close()
    with open(weights_only / "model.safetensors", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelFolderError, match="model.safetensors does not match its sha256"):
        EmotionRecognizer.load(weights_only, engine="torch")

    from export.bundle import update_files  # the export tools keep a pruned file's record

    before = json.loads((onnx_only / "spec.json").read_text())["files"]
    assert update_files(onnx_only)["files"] == before


def test_text_that_is_not_unicode_is_a_text_error(rec):
    """A lone surrogate (JSON's "\\udfff", undecodable command-line bytes) is refused by
    name before batching; the tokenizer would fail the whole batch on it."""
    with pytest.raises(TextError, match="item 1 text cannot be read: .*lone surrogate U\\+DFFF at character 2"):
        rec.predict(text=["fine", "x \udfff", "also fine"])
    assert rec.predict(text="caf\u00e9 \u2615 \U0001f600").label in rec.labels


def test_blank_transcript_is_no_text(rec):
    clip = speechlike(1.0, seed=6)
    alone = rec.predict(audio=clip, sample_rate=16000)
    # blank, or only what the tokenizer's normaliser drops: controls, zero-width, a lone accent
    for blank in ("", "   ", "\n\t", "\x00\x00", " \x7f\x1b ", "\u200b\u200b", "\u0301", "\x00\u200b \ufeff"):
        assert rec.encoder.encode([blank])[1].tolist() == [2]  # [CLS] [SEP]: nothing to read
        pred = rec.predict(audio=clip, text=blank, sample_rate=16000)
        assert pred.modalities == ("audio",) and pred.scores == alone.scores, repr(blank)
    for words in ("a", "\x00ok", "\u00e9", "\u2615", "!"):
        assert rec.encoder.has_words(words) and rec.predict(audio=clip, text=words, sample_rate=16000).modalities == ("audio", "text")
    for blank in ("  ", "\u200b"):
        with pytest.raises(TextError, match="item 1 text has no words and there is no audio"):
            rec.predict(text=["fine", blank])


def test_loudest_accepted_audio_gives_finite_scores(rec):
    from runtime.audio import MAX_PEAK

    x = speechlike(1.0, seed=5)
    pred = rec.predict(audio=x / np.abs(x).max() * MAX_PEAK, sample_rate=16000)
    assert all(np.isfinite(v) for v in pred.scores.values())


@pytest.mark.parametrize("edit, match", [
    (lambda spec: [spec], "top level is a list"),
    (lambda spec: {**spec, "calibration": {"temperature": {"audio": 0.0}}}, "temperatures must be positive"),
    (lambda spec: {**spec, "calibration": {"temperature": {"text": float("nan")}}}, "temperatures must be positive"),
    (lambda spec: {**spec, "files": {**spec["files"], "../outside.bin": "0" * 64}}, "inside it: '../outside.bin'"),
    (lambda spec: {**spec, "graphs": {"fused": {"fp32": "/etc/passwd"}}}, "inside it: '/etc/passwd'"),
    (lambda spec: {**spec, "graphs": {"fused": {"fp32": ["emotech.onnx"]}}}, "inside it: \\['emotech.onnx'\\]"),
    (lambda spec: {**spec, "weights": None, "text": {**spec["text"], "tokenizer": 5}}, "inside it: 5, None"),
])
def test_malformed_spec_is_a_model_folder_error(tiny_model_dir, tmp_path, edit, match):
    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    spec = json.loads((bad / "spec.json").read_text())
    (bad / "spec.json").write_text(json.dumps(edit(spec)))
    with pytest.raises(ModelFolderError, match=match):
        EmotionRecognizer.load(bad)


@pytest.mark.parametrize("kw, match", [
    ({"max_batch": 0}, "max_batch must be an int >= 1"), ({"max_batch": -1}, "max_batch"), ({"max_batch": True}, "max_batch"),
    ({"threads": -1}, "threads must be >= 1"),
])
def test_bad_load_options_are_value_errors(tiny_model_dir, kw, match):
    with pytest.raises(ValueError, match=match):
        EmotionRecognizer.load(tiny_model_dir, engine="ort", **kw)


def test_numpy_max_batch_and_zero_threads_are_accepted(tiny_model_dir):
    r = EmotionRecognizer.load(tiny_model_dir, engine="ort", max_batch=np.int64(4), threads=0)
    try:
        assert r.max_batch == 4 and type(r.max_batch) is int
        assert r.describe()["missing_files"] == []
    finally:
        r.close()


def test_unknown_engine_and_missing_precision(tiny_model_dir):
    with pytest.raises(ValueError, match="engine must be one of"):
        EmotionRecognizer.load(tiny_model_dir, engine="nope")
    with pytest.raises(ModelFolderError, match="no int8 variant"):
        EmotionRecognizer.load(tiny_model_dir, engine="ort", precision="int8")
    with pytest.raises(EngineUnavailableError, match="onnxruntime-gpu"):
        EmotionRecognizer.load(tiny_model_dir, engine="ort", device="cuda")


@pytest.mark.parametrize("spin, entries", [(None, ("1", "1")), ("during", ("1", "1")), ("always", ("1", "")), ("never", ("0", ""))])
def test_ort_thread_spinning_modes(tiny_model_dir, spin, entries):
    kwargs = {} if spin is None else {"spin": spin}
    rec = EmotionRecognizer.load(tiny_model_dir, engine="ort", **kwargs)
    opts = rec.engine.session.get_session_options()

    def entry(key: str) -> str:
        try:
            return opts.get_session_config_entry(key)
        except RuntimeError:  # not set
            return ""

    assert (entry("session.intra_op.allow_spinning"), entry("session.force_spinning_stop")) == entries
    assert rec.engine.describe()["thread_spinning"] == (spin or "during")
    pred = rec.predict(audio=speechlike(0.6), sample_rate=16000)
    assert np.isclose(sum(pred.scores.values()), 1.0)


def test_ort_unknown_spin_mode_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="spin must be one of during, always, never"):
        EmotionRecognizer.load(tiny_model_dir, engine="ort", spin="sometimes")


def test_import_runtime_does_not_import_torch():
    code = "import sys, runtime, runtime.predict, runtime.engines.ort; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_long_batches_are_split_by_padded_audio(rec, monkeypatch):
    """``run`` caps each engine call at ``max_batch`` items and ``max_call_audio_seconds`` of
    padded audio, shortest clips first, and the split changes no score."""
    from runtime.recognizer import Item

    sr = rec.sample_rate
    items = [Item(np.zeros(int(s * sr), np.float32), None) for s in (2.0, 0.5, 3.0, 1.0, 2.5)] + [Item(None, "text only")]
    monkeypatch.setattr(rec, "max_call_audio_seconds", 5.0)
    # sorted: text (padded to min_samples), 0.5, 1, 2, 2.5, 3 s; 3 x 1 s fits, 4 x 2 s does not
    assert rec.calls(items) == [[5, 1, 3], [0, 4], [2]]
    monkeypatch.setattr(rec, "max_batch", 2)
    assert rec.calls(items) == [[5, 1], [3, 0], [4], [2]]
    monkeypatch.setattr(rec, "max_call_audio_seconds", 2.0)
    assert rec.calls(items) == [[5, 1], [3], [0], [4], [2]]  # longer than the cap: alone
    clips = [speechlike(s, seed=i) for i, s in enumerate((2.0, 0.5, 3.0, 1.0, 2.5))]
    split = rec.predict(audio=clips, text=["a", None, "b", "c", None], sample_rate=sr)
    monkeypatch.setattr(rec, "max_call_audio_seconds", float("inf"))
    monkeypatch.setattr(rec, "max_batch", 32)
    whole = rec.predict(audio=clips, text=["a", None, "b", "c", None], sample_rate=sr)
    for a, b in zip(split, whole):
        assert a.label == b.label and max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < 1e-5


def test_gpu_engines_take_whole_batches(rec, monkeypatch):
    """The padded-audio cap per call is a CPU cache limit: on a GPU engine a batch of up to
    ``max_batch`` is one call (a batch of 64 three-second clips must not become 2 x 32)."""
    from runtime.recognizer import Item

    items = [Item(np.zeros(rec.sample_rate * 2, np.float32), None) for _ in range(6)]
    monkeypatch.setattr(rec, "max_call_audio_seconds", 5.0)
    assert len(rec.calls(items)) == 3
    for device in ("cpu:0", "CPU"):
        monkeypatch.setattr(rec.engine, "device", device)
        assert len(rec.calls(items)) == 3
    for device in ("cuda", "cuda:0"):
        monkeypatch.setattr(rec.engine, "device", device)
        assert rec.calls(items) == [list(range(6))]
    monkeypatch.setattr(rec, "max_batch", 4)
    assert [len(c) for c in rec.calls(items)] == [4, 2]


def test_tensorrt_profile_follows_max_batch(tiny_model_dir, monkeypatch):
    """``load(engine="trt", max_batch=N)`` builds the engine for batches up to N (the default
    profile stops at 32, and the engine would split a larger batch); a given profile stays."""
    import runtime.recognizer as recognizer
    from runtime.trt_cache import Profile

    seen: list[dict] = []

    class Stop(Exception):
        pass

    def fake_create_engine(name, spec, precision="fp32", device=None, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(recognizer, "create_engine", fake_create_engine)
    for max_batch, batch in ((64, (1, 8, 64)), (np.int64(64), (1, 8, 64)), (32, (1, 8, 32)), (4, (1, 4, 4))):
        with pytest.raises(Stop):
            EmotionRecognizer.load(tiny_model_dir, engine="trt", max_batch=max_batch)
        assert seen[-1]["profile"].batch == batch
    mine = Profile(batch=(2, 2, 2))
    with pytest.raises(Stop):
        EmotionRecognizer.load(tiny_model_dir, engine="trt", max_batch=64, profile=mine)
    assert seen[-1]["profile"] is mine
    with pytest.raises(Stop):
        EmotionRecognizer.load(tiny_model_dir, engine="ort", max_batch=64)
    assert "profile" not in seen[-1]
    calls = len(seen)
    with pytest.raises(ValueError, match="max_batch"):  # before any engine is built
        EmotionRecognizer.load(tiny_model_dir, engine="trt", max_batch=0)
    assert len(seen) == calls


def test_ort_session_that_fell_back_to_the_cpu_is_refused_on_cuda():
    """onnxruntime-gpu builds a CPU-only session, without raising, when its CUDA provider's
    libraries do not load: such a session must not run under a "cuda" label."""
    from runtime.engines.ort import require_cuda_provider

    class Session:
        def __init__(self, providers):
            self.providers, self.fallback = providers, True

        def get_providers(self):
            return self.providers

        def disable_fallback(self):
            self.fallback = False

    cpu_only = Session(["CPUExecutionProvider"])
    with pytest.raises(EngineUnavailableError, match="CUDA provider did not load"):
        require_cuda_provider(cpu_only, "engine 'ort'")
    cuda = Session(["CUDAExecutionProvider", "CPUExecutionProvider"])
    require_cuda_provider(cuda, "engine 'ort'")
    assert cuda.fallback is False  # a failed CUDA run raises instead of rerunning on the CPU


def test_tf32_setting_is_reported(monkeypatch):
    from runtime.engines.base import tf32_setting

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert tf32_setting(True) == "allowed" and tf32_setting("1") == "allowed" and tf32_setting("0") == "off"
    assert tf32_setting(False) == "off" and tf32_setting() == "allowed (the library's default)"
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    assert tf32_setting(True) == "off (NVIDIA_TF32_OVERRIDE=0)"


def test_a_closed_recognizer_says_so(tiny_model_dir):
    closed = EmotionRecognizer.load(tiny_model_dir)
    closed.close()
    for call in (lambda: closed.predict(text="hello"), lambda: closed.predict(audio=[speechlike(1.0)] * 2, sample_rate=16000)):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    assert closed._pool is None  # no thread pool made again
