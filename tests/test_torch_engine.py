"""PyTorch engine: CPU parity with ONNX Runtime (runs in CI), clear refusals, and on a
CUDA machine (``requires_cuda``) the GPU front-end and scores against the CPU ones."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import EngineUnavailableError
from tests.helpers import requires_torch, speechlike

pytestmark = requires_torch
CPU_ATOL = 1e-4  # scores, torch CPU vs ORT CPU (same FP32 maths)
GPU_ATOL = 1e-3  # scores / MFCC, CUDA vs CPU (different kernels, TF32 off)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not _has_cuda(), reason="needs an NVIDIA GPU and a CUDA build of PyTorch")


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _items(rec):
    """Audio+text, audio-only and text-only items of different lengths (padding is exercised)."""
    specs = [(2.7, "I can't believe you did that"), (0.6, None), (None, "so happy for you"), (1.4, "ok"), (None, ".")]
    return [
        rec.prepare(audio=speechlike(s, seed=i, f0=120 + 20 * i), text=t, sample_rate=16000) if s else rec.prepare(text=t)
        for i, (s, t) in enumerate(specs)
    ]


def test_torch_cpu_matches_ort_cpu(tiny_model_dir):
    from runtime.recognizer import EmotionRecognizer

    ort_rec = EmotionRecognizer.load(tiny_model_dir)
    torch_rec = EmotionRecognizer.load(tiny_model_dir, engine="torch")
    items = _items(ort_rec)
    feed = ort_rec.build_feed(items)
    diff = np.abs(_softmax(torch_rec.engine.infer(feed)) - _softmax(ort_rec.engine.infer(feed))).max()
    assert diff <= CPU_ATOL
    for a, b in zip(ort_rec.run(items), torch_rec.run(items)):  # through postprocess too
        assert a.label == b.label and max(abs(a.scores[k] - b.scores[k]) for k in a.scores) <= CPU_ATOL
    assert torch_rec.engine.describe()["engine"] == "torch"
    torch_rec.close()


def test_torch_refuses_what_it_cannot_run(tiny_model_dir):
    from runtime.recognizer import EmotionRecognizer

    with pytest.raises(EngineUnavailableError, match="int8.*--engine ort or --engine trt"):
        EmotionRecognizer.load(tiny_model_dir, engine="torch", precision="int8")
    with pytest.raises(EngineUnavailableError, match="fp16 only on cuda"):
        EmotionRecognizer.load(tiny_model_dir, engine="torch", precision="fp16", device="cpu")
    if not _has_cuda():
        with pytest.raises(EngineUnavailableError, match="CUDA"):
            EmotionRecognizer.load(tiny_model_dir, engine="torch", device="cuda")


@pytest.mark.requires_cuda
@requires_cuda
def test_gpu_frontend_matches_cpu_frontend(tiny_model_dir):
    import torch

    from export.bundle import load_torch_model

    model, _ = load_torch_model(tiny_model_dir)
    lengths = torch.tensor([48000, 20000, 4000])
    audio = torch.zeros(3, 48000)
    for i, n in enumerate(lengths.tolist()):
        audio[i, :n] = torch.from_numpy(speechlike(n / 16000, seed=i))
    audio[0] *= 1.9  # loud item: the power spectrum is far beyond FP16 range
    with torch.no_grad():
        cpu, frames_cpu = model.mfcc(audio, lengths)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        gpu, frames_gpu = model.cuda().mfcc(audio.cuda(), lengths.cuda())
    assert torch.equal(frames_cpu, frames_gpu.cpu())
    assert (gpu.cpu() - cpu).abs().max().item() <= GPU_ATOL


@pytest.mark.requires_cuda
@requires_cuda
def test_torch_cuda_matches_ort_cpu(tiny_model_dir):
    import torch

    from runtime.recognizer import EmotionRecognizer

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ort_rec = EmotionRecognizer.load(tiny_model_dir)
    gpu_rec = EmotionRecognizer.load(tiny_model_dir, engine="torch", device="cuda")
    feed = ort_rec.build_feed(_items(ort_rec))
    ref = _softmax(ort_rec.engine.infer(feed))
    assert np.abs(_softmax(gpu_rec.engine.infer(feed)) - ref).max() <= GPU_ATOL
    fp16 = EmotionRecognizer.load(tiny_model_dir, engine="torch", device="cuda", precision="fp16")
    got16 = _softmax(fp16.engine.infer(feed))
    assert np.abs(got16 - ref).max() <= 2e-2 and (got16.argmax(1) == ref.argmax(1)).mean() >= 0.8
    gpu_rec.close()
    fp16.close()
