"""Torch implementation of the MFCC front-end defined in ``runtime.frontend``.

The constant matrices come from ``runtime.frontend``; this module only wires them into
operators that export to TensorRT-parsable ONNX (Pad, Slice, Range, Gather, Transpose,
MatMul, Mul, Log, Max, ReduceMax, Where). It runs in FP32: the power spectrum of loud
audio overflows FP16.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from runtime.frontend import FrontendConfig, dct_matrix, factored_dft, stacked_mel


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
        window, stage1, stage2, _ = factored_dft(cfg)
        self.n1, self.n2 = window.shape
        self.groups = stage2.shape[0]
        buffers = {
            "window": window[:, None, :],  # (n1, 1, n2): row r, any frame, column c
            "stage1_t": stage1.T.copy(),  # (n1, n1), applied from the left
            "stage2": stage2,
            "mel": stacked_mel(cfg),
            "dct_db": (dct_matrix(cfg).T * (10.0 / math.log(10.0))).astype(np.float32),  # DCT of power_to_db
        }
        for name, value in buffers.items():
            self.register_buffer(name, torch.from_numpy(value), persistent=False)
        self.register_buffer("group_sum", torch.ones(1, self.groups), persistent=False)

    def mel_power(self, audio: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram ``(B, T, n_mels)`` of centre-padded frames of ``audio``.

        Same function as a dense windowed real DFT, power, and mel matmul, in about a
        sixth of the multiply-adds (``runtime.frontend.factored_dft``); time it against
        librosa with ``pytest benchmarks --benchmark-only``.

        Layout, chosen for ONNX Runtime on CPU where at batch 1 every pass over a
        ``(T, n_fft)`` tensor costs about as much as a small matmul: frames are gathered
        row-major as ``(B, r, T, c)`` so that stage 1 is one ``(n1, n1) @ (n1, T * n2)``
        GEMM per item (not ``T`` tiny ones), and its output needs only a transpose of
        whole ``n2``-sample rows (not of pairs of floats) to become the per-group stage-2
        input, which is faster than frames as ``(B, T, c, r)`` (docs/benchmarks.md, "Front-end").
        """
        cfg, n1, n2, groups = self.cfg, self.n1, self.n2, self.groups
        batch, samples = audio.shape
        frames = samples // cfg.hop_length + 1
        hop_rows = cfg.hop_length // n2
        rows = hop_rows * (frames - 1) + n1  # rows of n2 samples the frames span
        # Centre padding, cut on the right to exactly the samples the frames span (rows * n2
        # = hop * (samples // hop) + n_fft): no Slice pass after the Pad (the MFCC graph
        # 4-7 % faster in ONNX Runtime, the same outputs bit for bit; README "Benchmarks").
        # A hop longer than n_fft / 2 could make that right padding negative: slice then.
        half = cfg.n_fft // 2
        if cfg.hop_length <= half:
            x = nn.functional.pad(audio, (half, half - samples % cfg.hop_length))
        else:
            x = nn.functional.pad(audio, (half, half))[:, : rows * n2]
        x = x.reshape(batch, rows, n2)
        if torch.onnx.is_in_onnx_export():
            # Gather whole rows (n2 contiguous samples), which ONNX Runtime copies with
            # one memcpy each and TensorRT parses; unfold would export as a loop.
            index = torch.arange(n1, device=audio.device)[:, None] + torch.arange(frames, device=audio.device)[None, :] * hop_rows
            x = x[:, index]  # (B, n1, T, n2)
        else:  # the same frames as a strided view: faster in eager PyTorch
            x = x.unfold(1, n1, hop_rows).permute(0, 3, 1, 2)
        x = (x * self.window).reshape(batch, n1, frames * n2)
        a = torch.matmul(self.stage1_t, x)  # (B, n1, T * n2): stage 1 down each column
        # (B, G, j, T, c) -> (B, G, T, j * n2 + c): group q's two reals per frame side by side
        a = a.reshape(batch, groups, 2, frames, n2).transpose(2, 3).reshape(batch, groups, frames, 2 * n2)
        y = torch.matmul(a, self.stage2)  # (B, G, T, 2 * n2): real and imaginary parts of the bins
        mel = torch.matmul(y * y, self.mel)  # (B, G, T, n_mels), one group's share each
        # Summing the groups as a (1, G) matmul runs several times faster in ONNX Runtime
        # than ReduceSum over the group axis.
        mel = torch.matmul(self.group_sum, mel.reshape(batch, groups, frames * cfg.n_mels))
        return mel.reshape(batch, frames, cfg.n_mels)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        power = self.mel_power(audio)  # (B, T, n_mels)
        # lengths are >= 0, so truncating division is floor division (and one ONNX Div).
        frame_lengths = torch.div(lengths, cfg.hop_length, rounding_mode="trunc") + 1
        valid = frame_mask(frame_lengths, power.shape[1])[:, :, None].to(power.dtype)  # (B, T, 1)
        # power_to_db(amin, top_db) as a floor on the power before one log:
        # max(log max(p, amin), log peak - top_db) = log max(p, max(amin, peak 10^(-top_db/10))),
        # the peak over valid frames (p >= 0, so masking is a product). Two passes over the
        # (T, n_mels) map fewer than clamping, logging, then clamping again (the MFCC graph
        # 3 % faster at batch 1 and 5 % at 32 in ONNX Runtime, outputs within 3.2e-6; README
        # "Benchmarks"). Natural log: the factor 10 / ln 10 is folded into the DCT matrix.
        peak = (power * valid).amax(dim=(1, 2), keepdim=True)
        floor = torch.clamp(peak * (10.0 ** (-cfg.top_db / 10.0)), min=cfg.amin)
        mfcc = torch.matmul(torch.log(torch.maximum(power, floor)), self.dct_db)  # (B, T, n_mfcc)
        if cfg.cmvn:
            return masked_cmvn(mfcc, valid, frame_lengths), frame_lengths
        return mfcc * valid, frame_lengths


def masked_cmvn(x: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-item mean/variance normalisation over valid frames; invalid frames become 0.
    ``valid`` is ``(B, T, 1)``, 1.0 on valid frames: multiplications and one rsqrt, which
    ONNX Runtime runs faster than Where and Div (docs/benchmarks.md, "Front-end")."""
    count = lengths.to(x.dtype)[:, None, None]
    mean = (x * valid).sum(dim=1, keepdim=True) / count
    centred = (x - mean) * valid
    var = (centred * centred).sum(dim=1, keepdim=True) / count
    return centred * torch.rsqrt(var + 1e-5)


def mfcc_raw(cfg: FrontendConfig) -> MFCC:
    """An MFCC module without CMVN: the quantity compared with ``librosa.feature.mfcc``."""
    import dataclasses

    return MFCC(dataclasses.replace(cfg, cmvn=False))
