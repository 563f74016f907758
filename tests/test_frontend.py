"""Front-end parity with librosa (tolerance 1e-2 max abs on MFCCs) and batch padding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from runtime.frontend import FrontendConfig, dct_matrix, mel_filterbank
from tests.helpers import DATA_ROOT, requires_data, requires_torch, speechlike

librosa = pytest.importorskip("librosa")
TOL = 1e-2  # max |ours - librosa| on MFCC values (dB-scaled cepstra, typical magnitude 1-300)


def librosa_mfcc(y: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """librosa.feature.mfcc at the front-end's parameters, every default spelled out; (T, n_mfcc)."""
    S = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window="hann", center=True,
        pad_mode="constant", power=2.0, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, htk=False, norm="slaney",
    )
    db = librosa.power_to_db(S, ref=1.0, amin=cfg.amin, top_db=cfg.top_db)
    return librosa.feature.mfcc(S=db, n_mfcc=cfg.n_mfcc, dct_type=2, norm="ortho").T


def ours(clips: list[np.ndarray], cfg: FrontendConfig) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from export.frontend import mfcc_raw
    from runtime.audio import pad_batch

    audio, lengths = pad_batch(clips)
    with torch.no_grad():
        out, frames = mfcc_raw(cfg)(torch.from_numpy(audio), torch.from_numpy(lengths))
    return out.numpy(), frames.numpy()


def test_filterbank_and_dct_match_librosa_and_scipy():
    cfg = FrontendConfig()
    ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    np.testing.assert_allclose(mel_filterbank(cfg), ref, atol=1e-7)
    from scipy.fft import dct

    eye = np.eye(cfg.n_mels)
    np.testing.assert_allclose(dct_matrix(cfg), dct(eye, type=2, norm="ortho", axis=0)[: cfg.n_mfcc], atol=1e-6)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="n_mfcc"):
        FrontendConfig(n_mfcc=100)
    with pytest.raises(ValueError, match="hop_length"):
        FrontendConfig(hop_length=0)
    assert FrontendConfig().num_frames(16000) == 101


@requires_torch
@pytest.mark.parametrize("seconds,seed", [(0.3, 0), (1.0, 1), (2.71, 2)])
def test_parity_with_librosa_synthetic(seconds, seed):
    cfg = FrontendConfig()
    y = speechlike(seconds, seed=seed)
    got, frames = ours([y], cfg)
    ref = librosa_mfcc(y, cfg)
    assert frames[0] == ref.shape[0] == got.shape[1]
    assert np.abs(got[0] - ref).max() <= TOL


@requires_torch
def test_padded_batch_equals_each_clip_alone():
    cfg = FrontendConfig()
    clips = [speechlike(s, seed=i) * g for i, (s, g) in enumerate([(2.0, 1.0), (0.41, 0.01), (1.37, 0.3)])]
    batch, frames = ours(clips, cfg)
    for i, clip in enumerate(clips):
        alone, n = ours([clip], cfg)
        assert frames[i] == n[0] == cfg.num_frames(clip.size)
        np.testing.assert_allclose(batch[i, : frames[i]], alone[0], atol=1e-4)
        assert np.all(batch[i, frames[i] :] == 0), "invalid frames must be zeroed"
        # the quiet clip's top_db clamp must use its own peak, not the batch's
        assert np.abs(batch[i, : frames[i]] - librosa_mfcc(clip, cfg)).max() <= TOL


@requires_torch
def test_cmvn_ignores_padding():
    import torch

    from export.frontend import MFCC
    from runtime.audio import pad_batch

    cfg = FrontendConfig()
    clips = [speechlike(1.5, seed=3), speechlike(0.6, seed=4)]
    m = MFCC(cfg)
    audio, lengths = pad_batch(clips)
    with torch.no_grad():
        batch, frames = m(torch.from_numpy(audio), torch.from_numpy(lengths))
        alone, _ = m(torch.from_numpy(clips[1])[None], torch.tensor([clips[1].size]))
    n = int(frames[1])
    np.testing.assert_allclose(batch[1, :n].numpy(), alone[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(batch[1, :n].mean(0).numpy(), 0, atol=1e-4)


@requires_torch
@requires_data
def test_parity_with_librosa_on_real_clips():
    import soundfile as sf

    cfg = FrontendConfig()
    paths = sorted((DATA_ROOT / "ravdess").glob("Actor_2[1-4]/*.flac"))[::40][:6]
    clips = [sf.read(p, dtype="float32")[0] for p in paths]
    batch, frames = ours(clips, cfg)
    worst = max(np.abs(batch[i, : frames[i]] - librosa_mfcc(c, cfg)).max() for i, c in enumerate(clips))
    assert worst <= TOL, f"max abs diff {worst}"


def test_frontend_params_are_written_to_the_spec(tiny_model_dir):
    from runtime.spec import load_spec

    spec = load_spec(tiny_model_dir)
    assert spec.frontend == FrontendConfig()
    assert dataclasses.asdict(spec.frontend) == spec.raw["frontend"]
