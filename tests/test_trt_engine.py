"""TensorRT builder and engine.

Without TensorRT (``tests/trt_fakes.py``: fake ``tensorrt``, ``pycuda`` and CUDA driver and
runtime APIs that behave like the real ones where it matters): the builder's calls (strongly
typed network, one profile, persistent timing cache and its refusals, progress monitor, no
precision flags, TensorRT versions 8.6 / 10.3 / 11.0), the cache flow, and the whole run
path: copy-in/out through device memory, buffer growth, padding, batch splitting, CUDA-graph
keys, replay and capture failure, one retained context per engine, close() against a running
call, and ``--engine trt`` failing with a message naming what is missing.
With TensorRT and a GPU (``requires_trt``): real engines of a tiny model against ONNX
Runtime, cache reuse and rebuild, CUDA graphs, batch splitting, FP16 and INT8 variants.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading

import numpy as np
import pytest

from runtime.errors import EngineUnavailableError
from runtime.trt_cache import Profile
from tests.helpers import softmax, speechlike
from tests.trt_fakes import FakeGpu, Recorder, fake_tensorrt, install, reference_logits

HAS_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None


# ------------------------------------------------------------------ builder


def test_builder_uses_strong_typing_profile_timing_cache_and_progress(tmp_path, caplog):
    from runtime.engines.trt import build_serialized_engine

    rec = Recorder()
    onnx_path = tmp_path / "emotech.fp16.onnx"
    onnx_path.write_bytes(b"onnx")
    timing = tmp_path / "cache" / "timing.cache"
    profile = Profile(batch=(1, 4, 16), audio_seconds=(0.25, 2.0, 10.0), tokens=(1, 16, 64))
    with caplog.at_level(logging.INFO, logger="runtime.engines.trt"):
        out = build_serialized_engine(onnx_path, profile, timing, trt=fake_tensorrt(rec=rec), workspace_bytes=1 << 30)
    assert out.startswith(b"FAKEPLAN")
    calls = {c[0]: c[1:] for c in rec.calls}
    assert calls["network_flags"] == (1 << 1,)  # STRONGLY_TYPED
    assert calls["parse"] == (str(onnx_path),)
    assert calls["profile"][0] == dict(profile.shapes())
    assert calls["timing_in"] == (b"",) and calls["set_timing"] == (b"", False)
    assert calls["build"] == ("Progress",)
    assert calls["workspace"] == (1 << 30,)
    assert "set_flag" not in calls  # no builder precision flags, ever
    assert timing.read_bytes() == b"+timing"
    rec2 = Recorder()  # the persistent timing cache feeds the next build
    build_serialized_engine(onnx_path, profile, timing, trt=fake_tensorrt(rec=rec2), progress=False)
    calls2 = {c[0]: c[1:] for c in rec2.calls}
    assert calls2["timing_in"] == (b"+timing",) and calls2["build"] == ("NoneType",)


def test_progress_is_logged_not_printed(tmp_path, caplog, capsys):
    from runtime.engines.trt import _progress_monitor

    monitor = _progress_monitor(fake_tensorrt())
    with caplog.at_level(logging.INFO, logger="runtime.engines.trt"):
        monitor.phase_start("Building engine", None, 3)
        monitor.phase_start("Tactic selection", "Building engine", 40)
        monitor.phase_start("conv tactics", "Tactic selection", 9)  # third level: not logged
        monitor.phase_finish("Building engine")
    assert "Building engine (3 steps)" in caplog.text and "Tactic selection (40 steps)" in caplog.text
    assert "conv tactics" not in caplog.text and "Building engine done" in caplog.text
    assert capsys.readouterr() == ("", "")


def test_timing_cache_refused_by_tensorrt_falls_back_to_an_empty_one(tmp_path, caplog):
    """set_timing_cache returns False for a cache from another device; get_timing_cache may
    then be None after the build: both are checked."""
    from runtime.engines.trt import build_serialized_engine

    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"from-another-gpu")
    rec = Recorder()
    with caplog.at_level(logging.WARNING):
        build_serialized_engine(tmp_path / "g.onnx", Profile(), timing, trt=fake_tensorrt(rec=rec, timing_accepts=False), progress=False)
    assert rec.get("set_timing") == [(b"from-another-gpu", False), (b"", False)]  # refused, then an empty one
    assert "another device" in caplog.text
    assert timing.read_bytes() == b"+timing"  # the fresh cache replaced it
    timing.write_bytes(b"CORRUPT")  # create_timing_cache raises on a corrupt blob
    rec = Recorder()
    build_serialized_engine(tmp_path / "g.onnx", Profile(), timing, trt=fake_tensorrt(rec=rec), progress=False)
    assert rec.get("timing_in") == [(b"CORRUPT",), (b"",)]
    caplog.clear()
    timing.write_bytes(b"kept")
    with caplog.at_level(logging.WARNING):
        build_serialized_engine(tmp_path / "g.onnx", Profile(), timing, trt=fake_tensorrt(timing_after_build=False), progress=False)
    assert "no timing cache after the build" in caplog.text and timing.read_bytes() == b"kept"


def test_timing_cache_written_by_others_is_not_read(tmp_path, caplog):
    from runtime.engines.trt import build_serialized_engine

    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"planted")
    os.chmod(timing, 0o666)
    rec = Recorder()
    with caplog.at_level(logging.WARNING):
        build_serialized_engine(tmp_path / "g.onnx", Profile(), timing, trt=fake_tensorrt(rec=rec), progress=False)
    assert rec.get("timing_in") == [(b"",)] and "writable by other users" in caplog.text
    target = tmp_path / "elsewhere.cache"
    target.write_bytes(b"via-link")
    timing.unlink()
    timing.symlink_to(target)
    rec = Recorder()
    build_serialized_engine(tmp_path / "g.onnx", Profile(), timing, trt=fake_tensorrt(rec=rec), progress=False)
    assert rec.get("timing_in") == [(b"",)]
    assert not timing.is_symlink() and target.read_bytes() == b"via-link"  # replaced the link, not its target


@pytest.mark.parametrize(
    ("version", "flag", "expected"),
    [("10.3.0", True, 1 << 1), ("10.15.1.29", True, 1 << 1), ("11.0.0", True, 1 << 1), ("11.0.0", False, 0)],
)
def test_network_flags_per_tensorrt_version(tmp_path, version, flag, expected):
    from runtime.engines.trt import build_serialized_engine

    rec = Recorder()
    build_serialized_engine(tmp_path / "g.onnx", Profile(), None, trt=fake_tensorrt(rec=rec, version=version, strongly_typed=flag), progress=False)
    assert rec.get("network_flags") == [(expected,)]


def test_tensorrt_older_than_10_3_is_refused_by_name(tmp_path, monkeypatch, tiny_model_dir):
    """TensorRT 8.6 (JetPack 6.0) has no STRONGLY_TYPED flag and flags 0 mean implicit batch there."""
    from runtime.engines.trt import EngineBuildError, build_serialized_engine
    from runtime.recognizer import EmotionRecognizer

    for version in ("8.6.2", "10.2.0", "garbage"):
        rec = Recorder()
        with pytest.raises(EngineUnavailableError, match=f"found TensorRT {version}.*JetPack 6.0"):
            build_serialized_engine(tmp_path / "g.onnx", Profile(), None, trt=fake_tensorrt(rec=rec, version=version, strongly_typed=False))
        assert rec.calls == []  # refused before any builder call
    with pytest.raises(EngineBuildError, match="no STRONGLY_TYPED"):  # a 10.x without the flag is not built weakly typed
        build_serialized_engine(tmp_path / "g.onnx", Profile(), None, trt=fake_tensorrt(version="10.3.0", strongly_typed=False), progress=False)
    install(monkeypatch, FakeGpu(), fake_tensorrt(version="8.6.2"))
    with pytest.raises(EngineUnavailableError, match="8.6.2") as err:
        EmotionRecognizer.load(tiny_model_dir, engine="trt")
    assert "--engine ort" in str(err.value)


def test_builder_failures(tmp_path):
    from runtime.engines.trt import EngineBuildError, build_serialized_engine

    with pytest.raises(EngineBuildError, match="could not parse.*importLSTM"):
        build_serialized_engine(tmp_path / "g.onnx", Profile(), None, trt=fake_tensorrt(parse_ok=False))
    with pytest.raises(EngineBuildError, match="failed to build"):
        build_serialized_engine(tmp_path / "g.onnx", Profile(), None, trt=fake_tensorrt(build_ok=False), progress=False)


def test_build_or_load_caches_per_device_and_graph(tmp_path, monkeypatch, caplog):
    import runtime.engines.trt as trt_mod

    builds = []
    cache = tmp_path / "cache"

    def builder(onnx_path, profile, timing, trt, workspace, progress):
        builds.append(onnx_path)
        assert timing.parent == cache and timing.name.startswith("timing.nvidia-") and "-trt10.3.0." in timing.name
        return b"ENGINE:" + onnx_path.read_bytes()

    gpu = FakeGpu()
    install(monkeypatch, gpu, fake_tensorrt(gpu))
    graph = tmp_path / "emotech.int8.onnx"
    graph.write_bytes(b"graph-v1")
    payload, path, built = trt_mod.build_or_load(graph, "int8", Profile(), cache, builder=builder)
    assert (payload, built) == (b"ENGINE:graph-v1", True)
    assert path.parent == cache and path.name.startswith("emotech.int8.nvidia-orin-sm87-trt10.3.0.")
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    assert trt_mod.build_or_load(graph, "int8", Profile(), cache, builder=builder)[2] is False
    assert len(builds) == 1
    assert gpu.retained == gpu.released == 2 and gpu.pycuda_stack() == []  # each call retained and released once
    path.write_bytes(path.read_bytes()[:-3])  # truncated by a crash or a full disk
    with caplog.at_level(logging.WARNING):
        assert trt_mod.build_or_load(graph, "int8", Profile(), cache, builder=builder)[2] is True
    assert "rebuilding" in caplog.text
    graph.write_bytes(b"graph-v2")  # re-exported model: new sha256, new engine
    payload, path2, built = trt_mod.build_or_load(graph, "int8", Profile(), cache, builder=builder)
    assert built and path2 != path and payload == b"ENGINE:graph-v2"
    assert trt_mod.build_or_load(graph, "int8", Profile(batch=(1, 1, 1)), cache, builder=builder)[2] is True
    assert trt_mod.build_or_load(graph, "int8", Profile(), cache, workspace_bytes=1 << 30, builder=builder)[2] is True
    assert trt_mod.build_or_load(graph, "int8", Profile(), cache, rebuild=True, builder=builder)[2] is True
    n = len(builds)
    # same name and compute capability, other module: fewer SMs, less memory (Orin NX vs AGX)
    for other in (FakeGpu(sm_count=8), FakeGpu(total_memory=16 << 30), FakeGpu(driver=12020), FakeGpu(runtime=12060), FakeGpu(name="NVIDIA GeForce RTX 4090", cc=(8, 9))):
        install(monkeypatch, other, fake_tensorrt(other))
        assert trt_mod.build_or_load(graph, "int8", Profile(), cache, builder=builder)[2] is True
    assert len(builds) == n + 5
    install(monkeypatch, gpu, fake_tensorrt(gpu), with_runtime_api=False)  # no libcudart: "unknown" runtime
    assert trt_mod.cache_key(trt_mod._cuda, trt_mod._trt, graph, "int8", Profile()).cuda_runtime == "unknown"


def test_device_index():
    from runtime.engines.trt import device_index

    assert device_index("cuda") == 0 and device_index("cuda:2") == 2 and device_index("cpu") == 0
    with pytest.raises(ValueError):
        device_index("gpu0")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_trt_unavailable_says_what_is_missing(tiny_model_dir, capsys):
    from export.trt import main
    from runtime.recognizer import EmotionRecognizer

    with pytest.raises(EngineUnavailableError) as err:
        EmotionRecognizer.load(tiny_model_dir, engine="trt")
    msg = str(err.value)
    assert "TensorRT" in msg and "--engine ort" in msg and "--engine torch" in msg and "CUDA toolkit" in msg
    assert main(["--model-dir", str(tiny_model_dir)]) == 2
    assert "--engine ort" in capsys.readouterr().out


def test_export_trt_builds_the_profile_the_runtime_asks_for(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """``python -m export.trt --max-batch N`` builds the engine ``EmotionRecognizer.load(engine="trt",
    max_batch=N)`` then loads from the cache (benchmarks/gpu_rows.sh relies on it)."""
    from export.trt import main
    from runtime.recognizer import EmotionRecognizer

    gpu = FakeGpu()
    install(monkeypatch, gpu, fake_tensorrt(gpu))
    cache = tmp_path / "cache"
    assert main(["--model-dir", str(tiny_model_dir), "--precision", "fp32", "--max-batch", "64", "--cache-dir", str(cache), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("built fp32 engine")
    rec = EmotionRecognizer.load(tiny_model_dir, engine="trt", max_batch=64, cache_dir=cache, progress=False)
    assert not rec.engine.built and rec.engine.profile.batch == (1, 8, 64)
    rec.close()
    assert main(["--model-dir", str(tiny_model_dir), "--max-batch", "0"]) == 2


# ---------------------------------------------------------------- run path


@pytest.fixture
def fake_engine(tiny_model_dir, tmp_path, monkeypatch):
    """``make(**fake_tensorrt options, profile=..., cuda_graphs=...)`` -> (engine, gpu, driver)."""
    from runtime.engines.trt import TrtEngine
    from runtime.spec import load_spec

    spec = load_spec(tiny_model_dir)
    made = []

    def make(profile=None, cuda_graphs=False, with_runtime_api=True, gpu=None, **trt_options):
        gpu = gpu or FakeGpu()
        driver, _ = install(monkeypatch, gpu, fake_tensorrt(gpu, **trt_options), with_runtime_api)
        profile = profile or Profile(batch=(1, 2, 4), audio_seconds=(0.5, 1.0, 2.0), tokens=(4, 8, 16))
        engine = TrtEngine(spec, "fp32", "cuda", profile=profile, cache_dir=tmp_path / "cache", cuda_graphs=cuda_graphs, progress=False)
        made.append(engine)
        return engine, gpu, driver

    yield make
    for engine in made:
        engine.close()


def _feed(batch: int, samples: int, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A padded batch as ``build_feed`` makes it: lengths within the widths, some items
    without audio or without text."""
    rng = np.random.default_rng(seed)
    audio_len = rng.integers(1, samples + 1, batch)
    token_len = rng.integers(1, tokens + 1, batch)
    audio = rng.standard_normal((batch, samples)).astype(np.float32)
    toks = rng.integers(100, 30000, (batch, tokens)).astype(np.int64)
    for b in range(batch):  # zero padding beyond each length
        audio[b, audio_len[b] :] = 0
        toks[b, token_len[b] :] = 0
    has_audio = (np.arange(batch) % 3 != 2).astype(np.float32)
    has_text = (np.arange(batch) % 3 != 1).astype(np.float32)
    return {"audio": audio, "audio_lengths": audio_len.astype(np.int64), "tokens": toks, "token_lengths": token_len.astype(np.int64), "has_audio": has_audio, "has_text": has_text}


def test_run_path_copies_in_executes_and_copies_out(fake_engine):
    engine, gpu, _ = fake_engine()
    assert engine.built and gpu.retain_calls == 1  # built under the engine's own context, no second retain
    for seed, (b, n, t) in enumerate([(3, 12000, 8), (1, 16000, 5), (4, 32000, 16)]):
        feed = _feed(b, n, t, seed)
        np.testing.assert_allclose(engine.infer(feed), reference_logits(feed), rtol=1e-6)
    assert gpu.calls["execute"] == 3 and gpu.pycuda_stack() == []  # context pushed and popped per call
    assert engine.describe()["gpu"] == "NVIDIA Orin" and engine.describe()["tensorrt"] == "10.3.0"


def test_int32_engine_inputs_are_converted(fake_engine):
    """An engine whose parser made token inputs INT32 gets INT32 buffers (``trt.nptype``)."""
    engine, _, _ = fake_engine(dtypes={"tokens": "INT32", "token_lengths": "INT32", "audio_lengths": "INT32"})
    feed = _feed(2, 10000, 6)
    np.testing.assert_allclose(engine.infer(feed), reference_logits(feed), rtol=1e-6)
    assert engine._buffers["tokens"].dtype == np.int32


def test_buffers_grow_only_when_needed_and_old_ones_are_freed(fake_engine):
    engine, gpu, _ = fake_engine()
    engine.infer(_feed(2, 10000, 6))
    first = {n: int(b.device) for n, b in engine._buffers.items()}
    allocs = gpu.calls["mem_alloc"]
    feed = _feed(2, 8000, 4, seed=1)  # smaller: same buffers
    np.testing.assert_allclose(engine.infer(feed), reference_logits(feed), rtol=1e-6)
    assert gpu.calls["mem_alloc"] == allocs and {n: int(b.device) for n, b in engine._buffers.items()} == first
    feed = _feed(4, 32000, 16, seed=2)  # larger: every input and the output grow
    np.testing.assert_allclose(engine.infer(feed), reference_logits(feed), rtol=1e-6)
    grown = {n: int(b.device) for n, b in engine._buffers.items()}
    assert all(grown[n] != first[n] for n in first) and set(first.values()) <= gpu.freed
    assert engine._buffers["audio"].capacity >= 4 * 32000
    assert engine._context.addresses == grown  # the engine reads the new addresses


def test_short_batches_are_padded_to_the_profile_minimums(fake_engine):
    engine, _, _ = fake_engine(profile=Profile(batch=(2, 2, 4), audio_seconds=(0.5, 1.0, 2.0), tokens=(4, 8, 16)))
    feed = _feed(1, 3000, 2)  # 1 item < min batch 2; 3000 samples < 8000; 2 tokens < 4
    out = engine.infer(feed)
    assert out.shape == (1, 7)
    np.testing.assert_allclose(out, reference_logits(feed), rtol=1e-6)
    assert engine._context.shapes["audio"] == (2, 8000) and engine._context.shapes["tokens"] == (2, 4)


def test_batches_above_the_profile_are_split(fake_engine):
    engine, gpu, _ = fake_engine()  # max batch 4
    feed = _feed(10, 12000, 8)
    np.testing.assert_allclose(engine.infer(feed), reference_logits(feed), rtol=1e-6)
    assert gpu.calls["execute"] == 3  # 4 + 4 + 2
    with pytest.raises(ValueError, match="exceeds the engine profile"):
        engine.infer(_feed(2, 40000, 8))  # 2.5 s > 2 s


def test_lengths_beyond_the_padded_width_are_refused(fake_engine):
    """A length above its tensor's width would make TensorRT read past the row."""
    engine, gpu, _ = fake_engine()
    for name, value in (("token_lengths", 9), ("audio_lengths", 12001), ("token_lengths", -1)):
        feed = _feed(2, 12000, 8)
        feed[name][1] = value
        with pytest.raises(ValueError, match=name):
            engine.infer(feed)
    assert gpu.calls["execute"] == 0


def test_cuda_graphs_capture_once_per_shape_set_and_replay(fake_engine):
    engine, gpu, _ = fake_engine(cuda_graphs=True)
    feed = _feed(2, 12000, 8)
    np.testing.assert_allclose(engine.infer(feed), reference_logits(feed), rtol=1e-6)
    assert (gpu.calls["begin_capture"], gpu.calls["graph_launch"], gpu.calls["execute"]) == (1, 1, 2)  # warm-up run + replay
    assert gpu.events[:4] == ["enqueue", "sync", "begin_capture", "enqueue"]  # run and sync outside capture first
    feed2 = _feed(2, 12000, 8, seed=5)  # same shapes, new data: replayed, reads the new inputs
    np.testing.assert_allclose(engine.infer(feed2), reference_logits(feed2), rtol=1e-6)
    assert (gpu.calls["begin_capture"], gpu.calls["graph_launch"]) == (1, 2)
    feed3 = _feed(2, 9000, 8, seed=6)  # other shapes (fit the buffers): a second graph
    np.testing.assert_allclose(engine.infer(feed3), reference_logits(feed3), rtol=1e-6)
    assert gpu.calls["begin_capture"] == 2 and len(engine._graphs._graphs) == 2
    feed4 = _feed(4, 32000, 16, seed=7)  # buffers grow: graphs holding the old addresses go
    np.testing.assert_allclose(engine.infer(feed4), reference_logits(feed4), rtol=1e-6)
    assert gpu.calls["exec_destroy"] == 2 and len(engine._graphs._graphs) == 1
    engine.close()
    assert gpu.calls["exec_destroy"] == 3


@pytest.mark.parametrize("runtime_api", [True, False])
def test_failed_capture_falls_back_to_execute_for_that_shape_set(fake_engine, caplog, runtime_api):
    """The enqueue fails under capture (an op capture does not permit): the capture is ended,
    the runtime's sticky error cleared, the shape set marked, and every call still answers."""
    engine, gpu, driver = fake_engine(cuda_graphs=True, capture_fails=True, with_runtime_api=runtime_api)
    feed = _feed(2, 12000, 8)
    with caplog.at_level(logging.WARNING):
        if runtime_api:
            np.testing.assert_allclose(engine.infer(feed), reference_logits(feed), rtol=1e-6)
        else:  # without a libcudart to clear it, the sticky error fails the next enqueue once
            with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
                engine.infer(feed)
    assert "CUDA graph capture failed" in caplog.text and "CAPTURE_INVALIDATED" in caplog.text
    assert gpu.capturing == {} and gpu.calls["end_capture"] == 1 and driver.graphs == {}  # capture ended, nothing kept
    assert gpu.runtime_error == 0
    for seed in range(3):  # no second capture attempt for these shapes; every call answers
        feed = _feed(2, 12000, 8, seed=seed)
        np.testing.assert_allclose(engine.infer(feed), reference_logits(feed), rtol=1e-6)
    assert gpu.calls["begin_capture"] == 1 and gpu.calls["graph_launch"] == 0


def test_one_retained_context_released_once_even_from_another_thread(fake_engine):
    engine, gpu, _ = fake_engine()
    engine.infer(_feed(1, 9000, 4))
    assert (gpu.retain_calls, gpu.released) == (1, 0)
    closer = threading.Thread(target=engine.close)  # e.g. a server's shutdown thread
    closer.start()
    closer.join()
    assert gpu.released == 1 and engine._ctx is None
    engine.close()  # idempotent
    assert gpu.released == 1
    assert all(b.device is None for b in engine._buffers.values()) and gpu.memory == {}
    with pytest.raises(RuntimeError, match="closed"):
        engine.infer(_feed(1, 9000, 4))


def test_close_waits_for_a_running_call(fake_engine):
    """close() takes the lock _run holds: buffers are never freed under a running call."""
    engine, gpu, _ = fake_engine()
    started, proceed = threading.Event(), threading.Event()

    def slow_execute():
        started.set()
        assert proceed.wait(10)

    gpu.before_execute = slow_execute
    feed = _feed(2, 12000, 8)
    result: dict = {}

    def call():
        try:
            result["out"] = engine.infer(feed)
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    worker = threading.Thread(target=call)
    worker.start()
    assert started.wait(10)
    closer = threading.Thread(target=engine.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive() and gpu.released == 0  # waiting for the call
    proceed.set()
    worker.join(10)
    closer.join(10)
    assert "error" not in result, result.get("error")
    np.testing.assert_allclose(result["out"], reference_logits(feed), rtol=1e-6)
    assert gpu.released == 1 and gpu.memory == {}


def test_failed_load_releases_the_context_and_memory(fake_engine):
    from runtime.engines.trt import EngineBuildError

    gpu = FakeGpu()
    with pytest.raises(EngineBuildError, match="deserialise"):
        fake_engine(gpu=gpu, deserialize_ok=False)
    assert gpu.calls["deserialize"] == 2  # a refused plan is rebuilt once
    assert gpu.retained == gpu.released == 1 and gpu.pycuda_stack() == []


# ------------------------------------------------------------ real TensorRT


def _gpu_ready() -> bool:
    if not HAS_TRT:
        return False
    try:
        from runtime.engines.trt import require_tensorrt

        require_tensorrt()
    except EngineUnavailableError:
        return False
    return True


skip_without_trt = pytest.mark.skipif(not _gpu_ready(), reason="needs TensorRT, pycuda and an NVIDIA GPU")


def _mixed_items(rec, n=6, seed=0):
    rng = np.random.default_rng(seed)
    texts = ["I can't believe it", "this is fine", "so sad today", None, "what a lovely surprise!", "go away"]
    items = []
    for i in range(n):
        audio = None if i % 4 == 3 else speechlike(float(rng.uniform(0.3, 3.0)), seed=i)
        text = texts[i % len(texts)] if (audio is None or i % 3) else None
        items.append(rec.prepare(audio=audio, text=text, sample_rate=16000) if audio is not None else rec.prepare(text=text or "hm"))
    return items



@pytest.mark.requires_trt
@skip_without_trt
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_trt_fp32_matches_ort_and_reuses_cache(model_copy, tmp_path, cuda_graphs, caplog):
    from runtime.recognizer import EmotionRecognizer

    ort_rec = EmotionRecognizer.load(model_copy)
    cache = tmp_path / "cache"
    profile = Profile(batch=(1, 2, 4), audio_seconds=(0.5, 2.0, 4.0), tokens=(1, 16, 32))
    rec = EmotionRecognizer.load(model_copy, engine="trt", cache_dir=cache, profile=profile, cuda_graphs=cuda_graphs, progress=False)
    assert rec.engine.built
    items = _mixed_items(ort_rec, n=6)  # 6 > max batch 4: split by the engine
    feed = ort_rec.build_feed(items)
    ref = softmax(ort_rec.engine.infer(feed))
    for _ in range(2):  # second pass replays captured graphs
        got = softmax(rec.engine.infer(feed))
        assert np.abs(got - ref).max() <= 1e-3
    rec.close()
    again = EmotionRecognizer.load(model_copy, engine="trt", cache_dir=cache, profile=profile, progress=False)
    assert not again.engine.built
    engine_file = again.engine.cache_file
    again.close()
    engine_file.write_bytes(engine_file.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="runtime.trt_cache"):
        third = EmotionRecognizer.load(model_copy, engine="trt", cache_dir=cache, profile=profile, progress=False)
    assert third.engine.built and "rebuilding" in caplog.text
    third.close()
    third.close()  # idempotent


@pytest.mark.requires_trt
@skip_without_trt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_trt_reduced_precision_variants_build_and_agree(model_copy, tmp_path, precision):
    import onnx

    from export import bundle
    from export.onnx import GRAPHS
    from export.fp16 import convert_to_fp16
    from export.int8 import feeds_for, quantize_int8
    from export.variants import variant_file
    from runtime.recognizer import EmotionRecognizer

    ort_rec = EmotionRecognizer.load(model_copy)
    src = model_copy / GRAPHS["fused"].filename
    dst = model_copy / variant_file(src.name, precision)
    if precision == "fp16":
        onnx.save(convert_to_fp16(onnx.load(str(src))), str(dst))
    else:
        quantize_int8(src, dst, feeds_for(ort_rec, _mixed_items(ort_rec, n=16, seed=1), batch=4))
    spec = bundle.read_spec(model_copy)
    bundle.register_graphs(spec, {"fused": dst.name}, precision)
    bundle.update_files(model_copy, spec)
    ort_q = EmotionRecognizer.load(model_copy, precision=precision)
    rec = EmotionRecognizer.load(model_copy, engine="trt", precision=precision, cache_dir=tmp_path / "c", progress=False)
    feed = ort_rec.build_feed(_mixed_items(ort_rec, n=4, seed=2))
    got = softmax(rec.engine.infer(feed))
    assert np.abs(got - softmax(ort_q.engine.infer(feed))).max() <= (2e-2 if precision == "int8" else 5e-3)
    rec.close()


def test_gpu_rows_builds_each_engine_first_under_its_own_timeout(tmp_path):
    """``benchmarks/gpu_rows.sh build`` (step 2 of ``run``): one ``export.trt`` per precision
    with the latency run's profile (--max-batch = the largest of $BATCHES), cached under the
    output folder, each bounded by $BUILD_TIMEOUT; nothing to build without TensorRT."""
    import subprocess
    import sys
    import time

    from tests.helpers import REPO

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"  # answers the import probe and export.trt; anything else is the real Python
    fake.write_text(
        "#!/bin/bash\n"
        'case "$*" in\n'
        '  *"import tensorrt, pycuda.driver"*) exit "${FAKE_TRT_IMPORT:-0}" ;;\n'
        '  *"-m export.trt"*) echo "export.trt $* cache=$EMOTECH_CACHE"; sleep "${FAKE_BUILD_SECONDS:-0}"; exit 0 ;;\n'
        f'  *) exec {sys.executable} "$@" ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    script, out = REPO / "benchmarks" / "gpu_rows.sh", tmp_path / "out"

    def build(**env):
        return subprocess.run(["bash", str(script), "build", str(out)], capture_output=True, text=True, timeout=120,
                              env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "BATCHES": "1,8,64", **env})

    done = build()
    assert done.returncode == 0, done.stderr
    lines = (out / "build.log").read_text().splitlines()
    assert [line.split("--precision ")[1].split()[0] for line in lines] == ["fp32", "fp16", "int8"]
    assert all("--max-batch 64" in line and "--device cuda" in line and f"cache={out}/cache" in line for line in lines)
    t0 = time.monotonic()
    done = build(BUILD_TIMEOUT="1", FAKE_BUILD_SECONDS="30")
    assert done.returncode == 1 and time.monotonic() - t0 < 60
    assert (out / "build.log").read_text().count("timed out") == 3  # each build had its own second
    done = build(FAKE_TRT_IMPORT="1")
    assert done.returncode == 0 and "no engines built" in (out / "build.log").read_text()
