"""Torch implementation of the MFCC front-end defined in ``runtime.frontend``.

The constant matrices come from ``runtime.frontend``; this module only wires them into
operators that export to TensorRT-parsable ONNX (Conv, Mul, Add, MatMul, Log, Max,
ReduceMax, Where). It runs in FP32: the power spectrum of loud audio overflows FP16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from runtime.frontend import FrontendConfig, dct_matrix, dft_kernel, mel_filterbank


def frame_mask(frame_lengths: torch.Tensor, num_frames: int | torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, T)`` mask, True on each item's valid frames."""
    steps = torch.arange(num_frames, device=frame_lengths.device)
    return steps[None, :] < frame_lengths[:, None]


class MFCC(nn.Module):
    """Batched MFCC of zero-padded audio ``(B, N)`` with per-item lengths ``(B,)``.

    Returns MFCCs ``(B, T, n_mfcc)`` with ``T = N // hop + 1`` and the valid frame count
    per item. On each item's valid frames the values equal that item computed alone:
    centre padding is zeros, as is batch padding, and the ``top_db`` peak and the CMVN
    statistics are taken over valid frames only. Invalid frames are set to 0.
    """

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("dft", torch.from_numpy(dft_kernel(cfg))[:, None, :], persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(cfg).T.copy()), persistent=False)
        self.register_buffer("dct", torch.from_numpy(dct_matrix(cfg).T.copy()), persistent=False)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        spec = nn.functional.conv1d(audio[:, None, :], self.dft, stride=cfg.hop_length, padding=cfg.n_fft // 2)
        power = spec * spec  # (B, 2F, T): re^2 rows then im^2 rows
        power = power[:, : cfg.n_freqs] + power[:, cfg.n_freqs :]
        mel = torch.matmul(power.transpose(1, 2), self.mel)  # (B, T, n_mels)
        db = torch.log(torch.clamp(mel, min=cfg.amin)) * (10.0 / math.log(10.0))
        frame_lengths = torch.div(lengths, cfg.hop_length, rounding_mode="floor") + 1
        mask = frame_mask(frame_lengths, db.shape[1])[:, :, None]  # (B, T, 1)
        floor_db = 10.0 * math.log10(cfg.amin)
        peak = torch.where(mask, db, torch.full_like(db, floor_db)).amax(dim=(1, 2), keepdim=True)
        db = torch.maximum(db, peak - cfg.top_db)
        mfcc = torch.matmul(db, self.dct)  # (B, T, n_mfcc)
        mfcc = torch.where(mask, mfcc, torch.zeros_like(mfcc))
        if cfg.cmvn:
            mfcc = masked_cmvn(mfcc, mask, frame_lengths)
        return mfcc, frame_lengths


def masked_cmvn(x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-item mean/variance normalisation over valid frames; invalid frames stay 0."""
    count = lengths.to(x.dtype)[:, None, None]
    mean = x.sum(dim=1, keepdim=True) / count  # invalid frames are already 0
    centred = torch.where(mask, x - mean, torch.zeros_like(x))
    var = (centred * centred).sum(dim=1, keepdim=True) / count
    return centred / torch.sqrt(var + 1e-5)


def mfcc_raw(cfg: FrontendConfig) -> MFCC:
    """An MFCC module without CMVN: the quantity compared with ``librosa.feature.mfcc``."""
    import dataclasses

    return MFCC(dataclasses.replace(cfg, cmvn=False))
