"""System 3 of the model zoo: a 1-D CNN over frame features, the MiniLM text encoder, and a
weighted average of the two modalities' calibrated probabilities.

    audio, audio_lengths ─► FrameFeatures (B, T, 45) ─► AudioCNN ─────────────► audio_logits ─┐
    tokens, token_lengths ─► MiniLM (frozen, mean-pooled, L2) ─► TextHead ────► text_logits ──┼─► WeightedAverage ─► logits
    has_audio, has_text ──────────────────────────────────────────────────────────────────────┘

- ``FrameFeatures``: per 10-ms frame of the MFCC front-end (``AudioStatistics``' zero-crossing
  rate, RMS energy in dB, spectral centroid and MFCCs, all on the front-end's own DFT) and an
  autocorrelation pitch estimate (``AutocorrelationPitch``): log F0 on voiced frames and the
  voicing strength.
- ``AudioCNN``: an ECAPA-TDNN-style network (Desplanques et al., 2020), small: a strided
  convolution stem, SE-Res2 dilated residual blocks, multi-layer feature aggregation,
  attentive statistics pooling over each item's valid frames, two dense layers.
- ``TextHead``: standardised sentence embedding -> a small MLP.
- ``WeightedAverage``: ``p = w * softmax(audio / T_audio) + (1 - w) * softmax(text / T_text)``
  when an item carries both modalities (the graph's ``logits`` are ``log p``), the
  uncalibrated scores of the one it carries otherwise; the runtime calibrates those with the
  spec's ``audio`` or ``text`` temperature.

Every item's outputs equal the item's alone: features of padding frames and tokens never reach
a valid frame's value (every convolution's output is masked to the valid frames, the pooling
and the text mean are masked).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from export.frontend import frame_mask
from export.zoo.features import EPS, AudioFeatureConfig, AudioStatistics, PowerSpectrum
from export.zoo.minilm import MiniLM
from runtime.frontend import FrontendConfig, hann_window

MASKED = -1.0e4  # added to the attention scores of padding frames before the softmax
PROB_FLOOR = 1e-30  # floor of the fused probability before its log (a class both modalities rule out)


@dataclass(frozen=True)
class FrameFeatureConfig:
    """The frame features beyond the front-end's parameters. Written to ``spec.json``."""

    n_mfcc: int = 40  # MFCCs c0.. of the front-end's 64 log-mel bands (no CMVN)
    pitch_n_fft: int = 1024  # samples per pitch frame (64 ms at 16 kHz: two periods of 31 Hz), same hop and centres
    pitch_fmin: float = 60.0  # Hz: the longest lag searched
    pitch_fmax: float = 400.0  # Hz: the shortest lag searched
    voicing_threshold: float = 0.45  # frames whose peak normalised autocorrelation is below it are unvoiced (Praat's default)
    octave_cost: float = 0.01  # per octave below fmax, subtracted from the autocorrelation (Praat's), against octave-down errors
    f0_reference: float = 100.0  # Hz: log F0 is log2(F0 / f0_reference), 0 on unvoiced frames

    def validate(self, frontend: FrontendConfig) -> None:
        """Raise ``ValueError`` naming the field that does not fit ``frontend``."""
        if not 0 < self.n_mfcc <= frontend.n_mels:
            raise ValueError(f"n_mfcc must be in (0, n_mels={frontend.n_mels}], got {self.n_mfcc}")
        if self.pitch_n_fft < frontend.n_fft or self.pitch_n_fft % 2:
            raise ValueError(f"pitch_n_fft must be even and >= n_fft={frontend.n_fft}, got {self.pitch_n_fft}")
        sr = frontend.sample_rate
        if not 0 < self.pitch_fmin < self.pitch_fmax <= sr / 2 or sr / self.pitch_fmin > self.pitch_n_fft / 2:
            raise ValueError(f"need 0 < pitch_fmin < pitch_fmax <= {sr / 2:g} and a longest lag sr / pitch_fmin <= pitch_n_fft / 2, "
                             f"got {self.pitch_fmin}, {self.pitch_fmax} with pitch_n_fft {self.pitch_n_fft}")  # fmt: skip
        if not 0 <= self.voicing_threshold < 1 or self.octave_cost < 0 or self.f0_reference <= 0:
            raise ValueError("voicing_threshold must be in [0, 1), octave_cost >= 0 and f0_reference > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameFeatureConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def frame_feature_names(cfg: FrameFeatureConfig) -> list[str]:
    """``FrameFeatures``' columns in order."""
    return ["zcr", "energy_db", "spectral_centroid", "log2_f0", "voicing", *(f"mfcc{i}" for i in range(cfg.n_mfcc))]


class AutocorrelationPitch(nn.Module):
    """Audio ``(B, N)`` -> per-frame ``log2_f0`` and ``voicing`` ``(B, T)`` on the front-end's frame centres.

    Boersma's (1993) autocorrelation method in one matmul: the power spectrum of each
    Hann-windowed ``pitch_n_fft``-sample frame (``PowerSpectrum``, the front-end's factored
    DFT), its inverse cosine transform at the lags of ``pitch_fmax``..``pitch_fmin`` (the
    frame's autocorrelation, Wiener-Khinchin), divided by the lag-0 value and by the window's
    own normalised autocorrelation. The DC bin is left out (the frame's mean removed). The
    pitch lag maximises that normalised autocorrelation minus ``octave_cost`` per octave
    below ``pitch_fmax``; ``voicing`` is the largest normalised autocorrelation, clamped to
    [0, 1]; ``log2_f0`` is ``log2(F0 / f0_reference)`` on frames whose voicing reaches
    ``voicing_threshold``, 0 elsewhere. Integer lags: at 16 kHz a 200-Hz F0 is resolved to 2.5 Hz.
    """

    def __init__(self, frontend: FrontendConfig, cfg: FrameFeatureConfig):
        super().__init__()
        cfg.validate(frontend)
        self.cfg = cfg
        fe = dataclasses.replace(frontend, n_fft=cfg.pitch_n_fft)
        self.spectrum = PowerSpectrum(fe)
        sr, n = fe.sample_rate, fe.n_fft
        self.min_lag = math.ceil(sr / cfg.pitch_fmax)
        lags = np.arange(self.min_lag, math.floor(sr / cfg.pitch_fmin) + 1)
        k = np.arange(fe.n_freqs)
        weight = np.where((k == 0) | (k == n // 2), 1.0, 2.0) / n  # one-sided spectrum -> autocorrelation
        cosines = weight[:, None] * np.cos(2.0 * np.pi * k[:, None] * lags[None, :] / n)  # (n_freqs, lags)
        window_power = np.abs(np.fft.rfft(hann_window(n))) ** 2
        window_ac = (window_power @ cosines) / (window_power @ weight)  # the window's normalised autocorrelation
        no_dc = (k > 0)[:, None]  # the frame's own autocorrelation leaves its DC bin out
        buffers = {
            "lag_kernel": no_dc * cosines / window_ac[None, :],
            "zero_lag": no_dc[:, 0] * weight,
            "octave_penalty": cfg.octave_cost * np.log2(lags / self.min_lag),
        }
        for name, value in buffers.items():
            self.register_buffer(name, torch.from_numpy(value.astype(np.float32)), persistent=False)

    @property
    def lags(self) -> np.ndarray:
        return np.arange(self.min_lag, self.min_lag + self.lag_kernel.shape[1])

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        power = self.spectrum.mel_power(audio)  # (B, T, n_freqs) of the pitch frames
        energy = torch.matmul(power, self.zero_lag)  # (B, T): lag 0
        r = torch.matmul(power, self.lag_kernel) / (energy[..., None] + EPS)  # (B, T, lags)
        lag = torch.argmax(r - self.octave_penalty, dim=-1).to(audio.dtype) + float(self.min_lag)
        voicing = torch.clamp(r.amax(-1), 0.0, 1.0)
        f0 = self.spectrum.cfg.sample_rate / lag
        log2_f0 = torch.log2(f0 / self.cfg.f0_reference) * (voicing >= self.cfg.voicing_threshold).to(audio.dtype)
        return log2_f0, voicing


class FrameFeatures(nn.Module):
    """Audio ``(B, N)`` with lengths ``(B,)`` -> frame features ``(B, T, F)`` (``frame_feature_names``)
    and each item's valid frame count; values on invalid frames are arbitrary (finite)."""

    def __init__(self, frontend: FrontendConfig, cfg: FrameFeatureConfig | None = None):
        super().__init__()
        cfg = cfg or FrameFeatureConfig()
        cfg.validate(frontend)
        self.frontend_cfg = frontend
        self.cfg = cfg
        self.stats = AudioStatistics(frontend, AudioFeatureConfig(n_mfcc=cfg.n_mfcc))
        self.pitch = AutocorrelationPitch(frontend, cfg)

    @property
    def num_features(self) -> int:
        return len(frame_feature_names(self.cfg))

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        power, frame_lengths = self.stats.spectrum(audio, lengths)
        zcr, energy_db, _ = self.stats.waveform_features(audio)
        centroid = self.stats.spectral_features(power)[0]
        log2_f0, voicing = self.pitch(audio)
        mfcc = self.stats.mfcc(power, frame_lengths)
        return torch.cat([torch.stack([zcr, energy_db, centroid, log2_f0, voicing], -1), mfcc], -1), frame_lengths


# ---------------------------------------------------------------------------- the audio CNN


@dataclass(frozen=True)
class CnnConfig:
    """``AudioCNN``'s shape. Written to ``spec.json``."""

    channels: int = 128  # width of the stem and the residual blocks
    stem_kernel: int = 5
    stem_stride: int = 2  # frames per output step of the stem: 20 ms at the front-end's 10-ms hop
    dilations: tuple[int, ...] = (2, 3, 4)  # one SE-Res2 block per dilation (kernel 3)
    scale: int = 4  # Res2Net sub-bands per block
    se_bottleneck: int = 32  # squeeze-excitation width
    aggregate: int = 384  # channels of the multi-layer feature aggregation (1x1 conv over all blocks' outputs)
    attention: int = 64  # attentive statistics pooling's hidden width
    embedding: int = 128  # the dense layer before the classifier
    dropout: float = 0.3  # before each dense layer, in training

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "dilations": list(self.dilations)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CnnConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        if "dilations" in kw:
            kw["dilations"] = tuple(kw["dilations"])
        return cls(**kw)


class Tdnn(nn.Module):
    """Conv1d -> ReLU -> BatchNorm (ECAPA-TDNN's order), output zeroed beyond the valid frames."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.norm = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.norm(F.relu(self.conv(x))) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``(B, C, T)`` over the frames where ``mask`` ``(B, 1, T)`` is 1."""
    return (x * mask).sum(2) / torch.clamp(mask.sum(2), min=1.0)


class SeRes2Block(nn.Module):
    """1x1 TDNN -> Res2 dilated convolutions -> 1x1 TDNN -> squeeze-excitation, plus the input."""

    def __init__(self, channels: int, dilation: int, scale: int, se_bottleneck: int):
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be a multiple of scale ({scale})")
        width = channels // scale
        self.scale = scale
        self.pre = Tdnn(channels, channels)
        self.res2 = nn.ModuleList(Tdnn(width, width, 3, dilation) for _ in range(scale - 1))
        self.post = Tdnn(channels, channels)
        self.squeeze = nn.Linear(channels, se_bottleneck)
        self.excite = nn.Linear(se_bottleneck, channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(self.pre(x, mask), self.scale, dim=1)
        outs, y = [parts[0]], None
        for i, conv in enumerate(self.res2):
            y = conv(parts[i + 1] if y is None else parts[i + 1] + y, mask)
            outs.append(y)
        y = self.post(torch.cat(outs, dim=1), mask)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(masked_mean(y, mask)))))
        return x + y * gate[:, :, None]


class AudioCNN(nn.Module):
    """Frame features ``(B, T, F)`` with valid frame counts ``(B,)`` -> class scores ``(B, K)``.

    The features are standardised by constants fitted on the training frames (``set_standardisation``)."""

    def __init__(self, num_features: int, num_classes: int, cfg: CnnConfig | None = None):
        super().__init__()
        cfg = cfg or CnnConfig()
        self.cfg = cfg
        c = cfg.channels
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))
        self.stem = Tdnn(num_features, c, cfg.stem_kernel, stride=cfg.stem_stride)
        self.blocks = nn.ModuleList(SeRes2Block(c, d, cfg.scale, cfg.se_bottleneck) for d in cfg.dilations)
        self.aggregate = Tdnn(c * len(cfg.dilations), cfg.aggregate)
        self.attention_hidden = nn.Conv1d(cfg.aggregate, cfg.attention, 1)
        self.attention_out = nn.Conv1d(cfg.attention, cfg.aggregate, 1)
        self.pool_norm = nn.BatchNorm1d(2 * cfg.aggregate)
        self.embed = nn.Linear(2 * cfg.aggregate, cfg.embedding)
        self.embed_norm = nn.BatchNorm1d(cfg.embedding)
        self.classify = nn.Linear(cfg.embedding, num_classes)
        self.dropout = nn.Dropout(cfg.dropout)

    def set_standardisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Fix the per-feature mean and standard deviation the input is standardised with."""
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))

    def output_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Valid steps after the stem: the steps whose centre frame is valid."""
        s = self.cfg.stem_stride
        return torch.div(frame_lengths + (s - 1), s, rounding_mode="trunc")

    def forward(self, frames: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        x = (frames - self.feature_mean) / self.feature_std
        x = (x * frame_mask(frame_lengths, frames.shape[1])[:, :, None].to(x.dtype)).transpose(1, 2)  # (B, F, T), 0 beyond
        lengths = self.output_lengths(frame_lengths)
        steps = (frames.shape[1] - 1) // self.cfg.stem_stride + 1
        mask = frame_mask(lengths, steps)[:, None, :].to(x.dtype)  # (B, 1, T')
        h = self.stem(x, mask)
        outs = []
        for block in self.blocks:
            h = block(h, mask)
            outs.append(h)
        h = self.aggregate(torch.cat(outs, dim=1), mask)  # (B, aggregate, T')
        scores = self.attention_out(torch.tanh(self.attention_hidden(h))) + (1.0 - mask) * MASKED
        alpha = torch.softmax(scores, dim=2)
        mean = (alpha * h).sum(2)
        std = torch.sqrt(torch.clamp((alpha * h * h).sum(2) - mean * mean, min=1e-6))
        z = self.pool_norm(torch.cat([mean, std], dim=1))
        z = self.embed_norm(F.relu(self.embed(self.dropout(z))))
        return self.classify(self.dropout(z))


# ---------------------------------------------------------------------------- text and fusion


class TextHead(nn.Module):
    """Sentence embedding ``(B, D)`` -> class scores ``(B, K)``: standardised (constants fitted
    on the training embeddings), then dropout -> Linear -> ReLU -> dropout -> Linear
    (``hidden`` = 0: one Linear layer)."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        layers += [nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)] if hidden else [nn.Linear(dim, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net((embedding - self.mean) / self.std)


@dataclass(frozen=True)
class FusionWeights:
    """``WeightedAverage``'s constants: written to ``spec.json`` and built into the graph."""

    audio_weight: float  # w in p = w * p_audio + (1 - w) * p_text; fitted on validation pairs
    audio_temperature: float = 1.0  # the spec's "audio" temperature: p_audio = softmax(audio_logits / it)
    text_temperature: float = 1.0  # the spec's "text" temperature

    def __post_init__(self) -> None:
        if not 0.0 <= self.audio_weight <= 1.0:
            raise ValueError(f"audio_weight must be in [0, 1], got {self.audio_weight}")
        if not (self.audio_temperature > 0 and self.text_temperature > 0):
            raise ValueError("temperatures must be > 0")


def fuse_reference(za: np.ndarray, zt: np.ndarray, has_audio: np.ndarray, has_text: np.ndarray, p: FusionWeights) -> np.ndarray:
    """``WeightedAverage`` in numpy (float64)."""

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    pa, pt = softmax(za.astype(np.float64) / p.audio_temperature), softmax(zt.astype(np.float64) / p.text_temperature)
    both = np.log(np.maximum(p.audio_weight * pa + (1.0 - p.audio_weight) * pt, PROB_FLOOR))
    a, t = has_audio[:, None] > 0.5, has_text[:, None] > 0.5
    return np.where(a & t, both, np.where(a, za, zt))


class WeightedAverage(nn.Module):
    """Per-modality scores -> ``logits`` by each item's modality mode (see the module doc)."""

    def __init__(self, weights: FusionWeights):
        super().__init__()
        self.weights = weights

    def forward(self, za: torch.Tensor, zt: torch.Tensor, has_audio: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        w = self.weights
        p = w.audio_weight * torch.softmax(za / w.audio_temperature, dim=1) + (1.0 - w.audio_weight) * torch.softmax(zt / w.text_temperature, dim=1)
        both = torch.log(torch.clamp(p, min=PROB_FLOOR))
        a, t = has_audio[:, None] > 0.5, has_text[:, None] > 0.5
        return torch.where(a & t, both, torch.where(a, za, zt))


class Cnn1dModel(nn.Module):
    """The fused inputs (``runtime.engines.base.FUSED_INPUTS``) -> ``logits``, ``audio_logits``, ``text_logits``."""

    def __init__(self, features: FrameFeatures, audio: AudioCNN, text_encoder: MiniLM, text_head: TextHead, fusion: WeightedAverage):
        super().__init__()
        self.features = features
        self.audio = audio
        self.text_encoder = text_encoder  # the node-name scope "/text_encoder/" marks its weights for FP16 storage
        self.text_head = text_head
        self.fusion = fusion

    def forward(self, audio, audio_lengths, tokens, token_lengths, has_audio, has_text):
        frames, frame_lengths = self.features(audio, audio_lengths)
        za = self.audio(frames, frame_lengths)
        zt = self.text_head(self.text_encoder(tokens, token_lengths))
        return self.fusion(za, zt, has_audio, has_text), za, zt
