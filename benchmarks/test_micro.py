"""Micro-benchmarks (pytest-benchmark): the front-end against ``librosa.feature.mfcc``,
batched tokenisation, one engine call, and decoding / preparing a batch of WAV clips.

    pytest benchmarks --benchmark-only

Not part of the default ``pytest`` run (``testpaths = ["tests"]``). Uses the model
folder in ``EMOTECH_MODEL_DIR`` (default: the bundled weights) and skips without it;
the front-end ones need PyTorch to build the front-end graph. Each benchmark records
per-clip or per-sentence figures in ``extra_info`` (``--benchmark-json`` keeps them).
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest

from benchmarks.loadgen import speechlike
from benchmarks.workload import make_sentences
from runtime.frontend import FrontendConfig
from runtime.spec import resolve_model_dir

CLIP_SECONDS = 3.0
MODEL_DIR = resolve_model_dir()  # --model-dir is not a pytest option: $EMOTECH_MODEL_DIR, else the bundled model


def _per(benchmark, n: int, unit: str) -> None:
    """Record the median time per item and items per second."""
    median = benchmark.stats.stats.median
    benchmark.extra_info[f"ms_per_{unit}"] = round(median * 1e3 / n, 4)
    benchmark.extra_info[f"{unit}s_per_s"] = round(n / median, 1)


@pytest.fixture(scope="module")
def spec():
    from runtime.spec import load_spec

    if not (MODEL_DIR / "spec.json").is_file():
        pytest.skip(f"no model folder at {MODEL_DIR} (set EMOTECH_MODEL_DIR)")
    return load_spec(MODEL_DIR)


@pytest.fixture(scope="module")
def frontend_session(tmp_path_factory):
    pytest.importorskip("torch")
    import onnxruntime as ort

    from benchmarks.latency import export_frontend

    path = export_frontend(FrontendConfig(), tmp_path_factory.mktemp("fe") / "frontend.onnx")
    opts = ort.SessionOptions()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def test_frontend_librosa(benchmark):
    from benchmarks.baseline import librosa_mfcc

    pytest.importorskip("librosa")
    cfg = FrontendConfig()
    y = speechlike(CLIP_SECONDS, seed=1)
    out = benchmark(librosa_mfcc, y, cfg)
    assert out.shape == (cfg.n_mfcc, cfg.num_frames(y.size))
    _per(benchmark, 1, "clip")


@pytest.mark.parametrize("batch", [1, 32])
def test_frontend_onnxruntime(benchmark, frontend_session, batch):
    cfg = FrontendConfig()
    audio = np.stack([speechlike(CLIP_SECONDS, seed=i) for i in range(batch)])
    feed = {"audio": audio, "audio_lengths": np.full(batch, audio.shape[1], dtype=np.int64)}
    mfcc, frames = benchmark(frontend_session.run, None, feed)
    assert mfcc.shape == (batch, cfg.num_frames(audio.shape[1]), cfg.n_mfcc) and np.all(frames == mfcc.shape[1])
    _per(benchmark, batch, "clip")


@pytest.mark.parametrize("batch", [32, 256])
def test_tokenise_batched(benchmark, spec, batch):
    from runtime.text import TextEncoder

    enc = TextEncoder(spec.path(spec.tokenizer_file), spec.max_tokens, spec.max_text_chars)
    texts = make_sentences(batch, words=12)
    ids, lengths = benchmark(enc.encode, texts)
    assert ids.shape[0] == batch and lengths.min() >= 14  # 12 words + [CLS] + [SEP]
    _per(benchmark, batch, "sentence")


@pytest.mark.parametrize("batch", [1, 32])
def test_engine_call_onnxruntime(benchmark, spec, batch):
    from runtime.recognizer import EmotionRecognizer

    rec = EmotionRecognizer.load(MODEL_DIR, engine="ort")
    items = [
        rec.prepare(speechlike(CLIP_SECONDS, seed=i), t, sample_rate=rec.sample_rate) for i, t in enumerate(make_sentences(batch))
    ]
    feed = rec.build_feed(items)
    logits = benchmark(rec.engine.infer, feed)
    assert logits.shape == (batch, len(rec.labels)) and np.all(np.isfinite(logits))
    _per(benchmark, batch, "clip")


@pytest.fixture(scope="module")
def wav_clips():
    """32 distinct 3-s clips as 48 kHz 16-bit WAV bytes, the latency harness's input."""
    from benchmarks.workload import Workload, make_requests

    return make_requests(Workload(32, CLIP_SECONDS))[0]


def _threaded(fn, items: list, threads: int):
    """``fn`` over ``items``, in this thread or on a pool of ``threads``."""
    from concurrent.futures import ThreadPoolExecutor

    if threads == 1:
        return lambda: [fn(x) for x in items]
    pool = ThreadPoolExecutor(threads)
    return lambda: list(pool.map(fn, items))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_decode_32_clips(benchmark, wav_clips, fmt, threads):
    """Decoding in one thread and in two. 16-bit WAV bytes are parsed in numpy
    (``parse_pcm16_wav``, microseconds); FLAC goes through libsndfile, whose decoding
    runs mostly without the GIL, so ``prepare_many`` decodes on its pool."""
    import soundfile as sf

    from runtime.audio import decode

    clips = wav_clips if fmt == "WAV" else [_reencode(c, fmt) for c in wav_clips]
    out = benchmark(_threaded(decode, clips, threads))
    assert len(out) == len(clips) and all(s.dtype == np.int16 for s, _ in out)
    assert sf.info(io.BytesIO(clips[0])).format == fmt
    _per(benchmark, len(clips), "clip")


def _reencode(wav: bytes, fmt: str) -> bytes:
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(wav), dtype="int16")
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt, subtype="PCM_16")
    return out.getvalue()


@pytest.mark.parametrize("threads", [1, 2])
def test_check_32_clips(benchmark, spec, wav_clips, threads):
    """Validating and trimming resampled clips in one thread and in two: many short numpy
    calls, which two threads slow down (GIL hand-overs): why ``prepare_many`` checks the
    clips in the calling thread, after decoding and resampling them on its pool."""
    from runtime.audio import check_clip, load_audio

    cfg = spec.frontend
    untrimmed = dataclasses.replace(cfg, trim_db=0.0)
    clips = [load_audio(c, untrimmed) for c in wav_clips]
    out = benchmark(_threaded(lambda y: check_clip(y, cfg), clips, threads))
    assert len(out) == len(clips)
    _per(benchmark, len(clips), "clip")


@pytest.mark.parametrize("prepare_threads", [1, 2])
def test_prepare_32_clips(benchmark, spec, wav_clips, prepare_threads):
    """``EmotionRecognizer.prepare_many``: decode, resample 48 -> 16 kHz, check, trim."""
    from runtime.recognizer import EmotionRecognizer

    rec = EmotionRecognizer.load(MODEL_DIR, engine="ort", prepare_threads=prepare_threads)
    args = [(c, None, None, f"item {i}") for i, c in enumerate(wav_clips)]
    items = benchmark(rec.prepare_many, args)
    assert len(items) == len(args) and all(it.audio is not None for it in items)
    _per(benchmark, len(args), "clip")
    rec.close()


@pytest.mark.parametrize("seconds", [3.0, 10.0])
@pytest.mark.parametrize("cap", ["one_call", "split"])
def test_run_32_clips_split(benchmark, spec, seconds, cap):
    """``EmotionRecognizer.run`` on 32 prepared clips with its default cap on padded audio
    per engine call (``split``: 96 s, so ten-second clips go in calls of 9) and with none
    (``one_call``). Three-second batches are one call either way."""
    from runtime.recognizer import EmotionRecognizer

    rec = EmotionRecognizer.load(MODEL_DIR, engine="ort")
    if cap == "one_call":
        rec.max_call_audio_seconds = float("inf")
    items = [rec.prepare(speechlike(seconds, seed=i), t, sample_rate=rec.sample_rate) for i, t in enumerate(make_sentences(32))]
    preds = benchmark(rec.run, items)
    assert len(preds) == 32
    benchmark.extra_info["engine_calls"] = len(rec.calls(items))
    _per(benchmark, len(items), "clip")
    rec.close()
