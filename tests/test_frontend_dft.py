"""The factorised real DFT of the front-end equals a dense windowed DFT, for the shipped
configuration and others. Tolerances, relative to the peak power: 1e-6 for the float32
constants in float64 arithmetic, 1e-5 for the float32 torch module."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.frontend import FrontendConfig, dft_factors, dft_kernel, factored_dft, hann_window, mel_filterbank, stacked_mel
from tests.helpers import requires_torch, speechlike

CONFIGS = [
    FrontendConfig(),
    FrontendConfig(n_fft=400),  # 20 x 20
    FrontendConfig(hop_length=128),
    FrontendConfig(n_fft=256, hop_length=100, n_mels=40, fmin=50.0, fmax=7600.0),  # n2 = 4
    FrontendConfig(n_fft=16, hop_length=5, n_mels=4, n_mfcc=4),  # n2 = 1: a dense DFT
    FrontendConfig(n_fft=64, hop_length=48, n_mels=8, n_mfcc=8),  # hop > n_fft / 2: the sliced padding
]


def factored_power(cfg: FrontendConfig, frames: np.ndarray) -> np.ndarray:
    """Power per bin ``(F, n_freqs)`` of un-windowed ``frames`` via the two stages, float64."""
    window, stage1, stage2, bins = (a.astype(np.float64) if a.dtype != np.int64 else a for a in factored_dft(cfg))
    n1, n2 = window.shape
    x = frames.reshape(-1, n1, n2) * window  # (F, row r, column c)
    a = stage1.T @ x  # (F, n1, n2): stage-1 real 2q + j of each column
    a = a.reshape(len(frames), n1 // 2, 2 * n2).transpose(1, 0, 2)  # (G, F, j * n2 + c)
    y = a @ stage2
    power = np.zeros((len(frames), cfg.n_freqs))
    for q in range(n1 // 2):
        for j in range(2 * n2):
            power[:, bins[q, j]] += y[q, :, j] ** 2
    return power


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.n_fft}-{c.hop_length}")
def test_factors_divide_the_hop(cfg):
    n1, n2 = dft_factors(cfg)
    assert n1 * n2 == cfg.n_fft and n1 % 2 == 0 and cfg.hop_length % n2 == 0
    assert dft_factors(FrontendConfig()) == (16, 32)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.n_fft}-{c.hop_length}")
def test_two_stages_equal_the_dense_dft(cfg):
    frames = np.random.default_rng(0).standard_normal((7, cfg.n_fft))
    ref = np.abs(np.fft.rfft(frames * hann_window(cfg.n_fft), axis=1)) ** 2
    got = factored_power(cfg, frames)
    assert np.abs(got - ref).max() <= 1e-6 * ref.max()  # the constants are float32
    bins = factored_dft(cfg)[3]
    assert sorted(np.bincount(bins.ravel(), minlength=cfg.n_freqs)) == sorted(
        [1, 1] + [2] * (cfg.n_freqs - 2)
    )  # re+im, DC/Nyquist real


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.n_fft}-{c.hop_length}")
def test_stacked_mel_maps_each_output_to_its_bin(cfg):
    _, _, _, bins = factored_dft(cfg)
    np.testing.assert_array_equal(stacked_mel(cfg), mel_filterbank(cfg).T[bins])


@requires_torch
@pytest.mark.parametrize("cfg", CONFIGS[:4] + CONFIGS[5:], ids=lambda c: f"{c.n_fft}-{c.hop_length}")
def test_torch_mel_power_equals_the_dense_convolution(cfg):
    import torch

    from export.frontend import MFCC

    audio = np.stack([speechlike(0.7, seed=1), speechlike(0.7, seed=2) * 0.01])
    with torch.no_grad():
        got = MFCC(cfg).mel_power(torch.from_numpy(audio)).numpy().astype(np.float64)
    padded = np.pad(audio.astype(np.float64), ((0, 0), (cfg.n_fft // 2, cfg.n_fft // 2)))
    t = cfg.num_frames(audio.shape[1])
    frames = padded[:, np.arange(t)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)]
    spec = frames @ dft_kernel(cfg).astype(np.float64).T
    ref = (spec[..., : cfg.n_freqs] ** 2 + spec[..., cfg.n_freqs :] ** 2) @ mel_filterbank(cfg).T.astype(np.float64)
    assert got.shape == ref.shape == (2, t, cfg.n_mels)
    for i in range(2):  # each clip against its own peak: the quiet one is 40 dB down
        assert np.abs(got[i] - ref[i]).max() <= 1e-5 * ref[i].max()


@requires_torch
def test_exported_graph_equals_eager_pytorch(tmp_path):
    """Export frames with Gather, eager PyTorch with unfold: the same MFCCs, padding included."""
    import onnxruntime as ort
    import torch

    from benchmarks.latency import export_frontend
    from export.frontend import MFCC
    from runtime.audio import pad_batch

    cfg = FrontendConfig()
    sess = ort.InferenceSession(str(export_frontend(cfg, tmp_path / "fe.onnx")), providers=["CPUExecutionProvider"])
    audio, lengths = pad_batch([speechlike(1.3, seed=3), speechlike(0.4, seed=4) * 0.05])
    got, got_frames = sess.run(None, {"audio": audio, "audio_lengths": lengths})
    with torch.no_grad():
        ref, ref_frames = MFCC(cfg)(torch.from_numpy(audio), torch.from_numpy(lengths))
    np.testing.assert_array_equal(got_frames, ref_frames.numpy())
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4)


@requires_torch
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3], CONFIGS[5]], ids=lambda c: f"{c.n_fft}-{c.hop_length}")
def test_onnx_front_end_equals_eager_at_every_length_remainder(cfg, tmp_path):
    """The exported graph pads each length to exactly the samples its frames span (or, for a
    hop over n_fft / 2, slices): the same frames as eager PyTorch whatever ``N % hop``."""
    import dataclasses

    import onnxruntime as ort
    import torch

    from benchmarks.latency import export_frontend
    from export.frontend import MFCC

    cfg = dataclasses.replace(cfg, cmvn=False)  # CMVN over two frames would amplify float noise
    session = ort.InferenceSession(str(export_frontend(cfg, tmp_path / "fe.onnx")), providers=["CPUExecutionProvider"])
    module = MFCC(cfg).eval()
    for n in (cfg.n_fft, cfg.sample_rate // 2, cfg.sample_rate // 2 + 1, cfg.sample_rate // 2 + cfg.hop_length - 1):
        audio = np.stack([speechlike((n + 100) / cfg.sample_rate, sr=cfg.sample_rate, seed=n)[:n], np.zeros(n)]).astype(np.float32)
        audio[1, : n // 2] = audio[0, : n // 2]
        lengths = np.array([n, n // 2], dtype=np.int64)
        got, frames = session.run(None, {"audio": audio, "audio_lengths": lengths})
        with torch.no_grad():
            ref, ref_frames = module(torch.from_numpy(audio), torch.from_numpy(lengths))
        assert got.shape == tuple(ref.shape) == (2, cfg.num_frames(n), cfg.n_mfcc)
        np.testing.assert_array_equal(frames, ref_frames.numpy())
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-3)
