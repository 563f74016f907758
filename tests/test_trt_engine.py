"""TensorRT builder and engine.

Without TensorRT: the builder is driven through a fake ``tensorrt`` module that records
every call (strongly typed network, one profile with the right shapes, persistent timing
cache, progress monitor, no precision flags), the cache flow runs with a fake GPU, and
``--engine trt`` fails with a message naming what is missing.
With TensorRT and a GPU (``requires_trt``): real engines of a tiny model against ONNX
Runtime, cache reuse and rebuild, CUDA graphs, batch splitting, FP16 and INT8 variants.
"""

from __future__ import annotations

import importlib.util
import types

import numpy as np
import pytest

from runtime.errors import EngineUnavailableError
from runtime.trt_cache import Profile
from tests.helpers import softmax, speechlike

HAS_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None


# ------------------------------------------------------------------ fake TensorRT


class _Recorder:
    def __init__(self):
        self.calls: list[tuple] = []


def fake_trt(rec: _Recorder, parse_ok: bool = True, build_ok: bool = True, strongly_typed: bool = True):
    inputs = ["audio", "audio_lengths", "tokens", "token_lengths", "has_audio", "has_text"]

    class Cache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return self.blob + b"+timing"

    class Config:
        progress_monitor = None

        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(("workspace", size))

        def add_optimization_profile(self, p):
            rec.calls.append(("profile", dict(p.shapes)))

        def create_timing_cache(self, blob):
            rec.calls.append(("timing_in", bytes(blob)))
            return Cache(bytes(blob))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            rec.calls.append(("set_timing", ignore_mismatch))

        def get_timing_cache(self):
            return self.cache

        def set_flag(self, flag):  # a precision flag would be recorded here
            rec.calls.append(("set_flag", flag))

    class OptProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Network:
        num_inputs = len(inputs)

        def get_input(self, i):
            return types.SimpleNamespace(name=inputs[i])

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.calls.append(("network_flags", flags))
            return Network()

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return OptProfile()

        def build_serialized_network(self, network, config):
            rec.calls.append(("build", type(config.progress_monitor).__name__))
            return b"ENGINE-BYTES" if build_ok else None

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            rec.calls.append(("parse", path))
            return parse_ok

        def get_error(self, i):
            return "In node 3 (importLSTM): UNSUPPORTED_NODE: layout"

    class IProgressMonitor:
        def __init__(self):
            pass

    flags = types.SimpleNamespace(STRONGLY_TYPED=1) if strongly_typed else types.SimpleNamespace()
    return types.SimpleNamespace(
        __version__="10.3.0",
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, s: None}),
        NetworkDefinitionCreationFlag=flags,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0),
        Builder=Builder,
        OnnxParser=Parser,
        IProgressMonitor=IProgressMonitor,
    )


def fake_cuda(name="NVIDIA Orin", cc=(8, 7)):
    ctx = types.SimpleNamespace(push=lambda: None, pop=lambda: None, detach=lambda: None)
    dev = types.SimpleNamespace(name=lambda: name, compute_capability=lambda: cc, retain_primary_context=lambda: ctx)
    return types.SimpleNamespace(Device=lambda i: dev)


def test_builder_uses_strong_typing_profile_timing_cache_and_progress(tmp_path, capsys):
    from runtime.engines.trt import build_serialized_engine

    rec = _Recorder()
    onnx_path = tmp_path / "emotech.fp16.onnx"
    onnx_path.write_bytes(b"onnx")
    timing = tmp_path / "cache" / "timing.cache"
    profile = Profile(batch=(1, 4, 16), audio_seconds=(0.25, 2.0, 10.0), tokens=(1, 16, 64))
    out = build_serialized_engine(onnx_path, profile, timing, trt=fake_trt(rec), workspace_bytes=1 << 30)
    assert out == b"ENGINE-BYTES"
    calls = {c[0]: c[1:] for c in rec.calls}
    assert calls["network_flags"] == (1 << 1,)  # STRONGLY_TYPED
    assert calls["parse"] == (str(onnx_path),)
    assert calls["profile"][0] == {k: v for k, v in profile.shapes().items()}
    assert calls["timing_in"] == (b"",) and calls["set_timing"] == (False,)
    assert calls["build"] == ("Progress",)
    assert calls["workspace"] == (1 << 30,)
    assert "set_flag" not in calls  # no builder precision flags, ever
    assert timing.read_bytes() == b"+timing"
    rec2 = _Recorder()  # the persistent timing cache feeds the next build
    build_serialized_engine(onnx_path, profile, timing, trt=fake_trt(rec2), progress=False)
    calls2 = {c[0]: c[1:] for c in rec2.calls}
    assert calls2["timing_in"] == (b"+timing",) and calls2["build"] == ("NoneType",)


def test_builder_without_strongly_typed_flag_and_failures(tmp_path):
    from runtime.engines.trt import EngineBuildError, build_serialized_engine

    rec = _Recorder()
    build_serialized_engine(tmp_path / "g.onnx", Profile(), None, trt=fake_trt(rec, strongly_typed=False), progress=False)
    assert ("network_flags", 0) in rec.calls  # a TensorRT where strong typing is the only mode
    with pytest.raises(EngineBuildError, match="could not parse.*importLSTM"):
        build_serialized_engine(tmp_path / "g.onnx", Profile(), None, trt=fake_trt(_Recorder(), parse_ok=False))
    with pytest.raises(EngineBuildError, match="failed to build"):
        build_serialized_engine(tmp_path / "g.onnx", Profile(), None, trt=fake_trt(_Recorder(), build_ok=False), progress=False)


def test_build_or_load_caches_per_gpu_and_graph(tmp_path, monkeypatch, caplog):
    import runtime.engines.trt as trt_mod

    rec = _Recorder()
    gpu = {"cuda": fake_cuda()}
    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda: (fake_trt(rec), gpu["cuda"]))
    builds = []

    def builder(onnx_path, profile, timing, trt, workspace, progress):
        builds.append(onnx_path)
        assert timing.parent == cache and timing.name.startswith("timing.") and "-trt10.3.0" in timing.name
        return b"ENGINE:" + onnx_path.read_bytes()

    graph = tmp_path / "emotech.int8.onnx"
    graph.write_bytes(b"graph-v1")
    cache = tmp_path / "cache"
    payload, path, built = trt_mod.build_or_load(graph, "int8", Profile(), cache, builder=builder)
    assert (payload, built) == (b"ENGINE:graph-v1", True)
    assert path.parent == cache and path.name.startswith("emotech.int8.nvidia-orin-sm87-trt10.3.0.")
    assert trt_mod.build_or_load(graph, "int8", Profile(), cache, builder=builder)[2] is False
    assert len(builds) == 1
    path.write_bytes(path.read_bytes()[:-3])  # truncated by a crash or a full disk
    assert trt_mod.build_or_load(graph, "int8", Profile(), cache, builder=builder)[2] is True
    assert "rebuilding" in caplog.text
    graph.write_bytes(b"graph-v2")  # re-exported model: new sha256, new engine
    payload, path2, built = trt_mod.build_or_load(graph, "int8", Profile(), cache, builder=builder)
    assert built and path2 != path and payload == b"ENGINE:graph-v2"
    gpu["cuda"] = fake_cuda("NVIDIA GeForce RTX 4090", (8, 9))  # same folder, other GPU
    assert trt_mod.build_or_load(graph, "int8", Profile(), cache, builder=builder)[2] is True
    assert trt_mod.build_or_load(graph, "int8", Profile(batch=(1, 1, 1)), cache, builder=builder)[2] is True
    assert trt_mod.build_or_load(graph, "int8", Profile(), cache, rebuild=True, builder=builder)[2] is True
    assert len(builds) == 6


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
    assert "TensorRT" in msg and "--engine ort" in msg and "--engine torch" in msg
    assert main(["--model-dir", str(tiny_model_dir)]) == 2
    assert "--engine ort" in capsys.readouterr().out


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
    third = EmotionRecognizer.load(model_copy, engine="trt", cache_dir=cache, profile=profile, progress=False)
    assert "rebuilding" in caplog.text
    assert third.engine.built
    third.close()
    third.close()  # idempotent


@pytest.mark.requires_trt
@skip_without_trt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_trt_reduced_precision_variants_build_and_agree(model_copy, tmp_path, precision):
    import onnx

    from export import bundle
    from export.onnx import GRAPHS
    from export.quantize import convert_to_fp16, feeds_for, quantize_int8, variant_file
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
