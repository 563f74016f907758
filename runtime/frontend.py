"""The MFCC front-end: its parameters and the constant matrices that implement it.

This module is the single definition of the front-end. Training (``export.frontend``
builds a torch module from these matrices), the exported ONNX graph (which carries the
same matrices as initializers) and every runtime engine use it, so train and serve can
never drift apart. It imports numpy only.

The front-end reproduces ``librosa.feature.mfcc`` with ``center=True`` (zero padding of
``n_fft // 2`` on both sides), a periodic Hann window, power 2, a Slaney-style mel
filterbank with Slaney area normalisation, ``power_to_db(ref=1.0, amin, top_db)`` and an
orthonormal DCT-II. It is written as a strided convolution (framing, window and real
DFT in one constant kernel) followed by constant matmuls, so that TensorRT 10.3 can
parse it: no ONNX STFT / DFT / MelWeightMatrix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FrontendConfig:
    """Front-end parameters. Written to ``spec.json`` under ``frontend``."""

    sample_rate: int = 16000  # Hz; all audio is resampled to this rate first
    n_fft: int = 512  # DFT size and window length (32 ms)
    hop_length: int = 160  # frame shift in samples (10 ms)
    n_mels: int = 64  # mel bands
    n_mfcc: int = 40  # cepstral coefficients kept after the DCT
    fmin: float = 0.0  # lowest mel band edge, Hz
    fmax: float = 8000.0  # highest mel band edge, Hz (<= sample_rate / 2)
    top_db: float = 80.0  # power_to_db dynamic-range clamp, per clip over valid frames
    amin: float = 1e-10  # power floor before the log
    cmvn: bool = True  # per-utterance mean/variance normalisation over valid frames
    min_audio_seconds: float = 0.25  # shorter clips are rejected
    max_audio_seconds: float = 30.0  # longer clips are rejected

    def __post_init__(self) -> None:
        validate_frontend(self)

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def min_samples(self) -> int:
        return int(math.ceil(self.min_audio_seconds * self.sample_rate))

    @property
    def max_samples(self) -> int:
        return int(math.floor(self.max_audio_seconds * self.sample_rate))

    def num_frames(self, num_samples: int | np.ndarray) -> int | np.ndarray:
        """Frames produced for ``num_samples`` samples with centre padding."""
        return num_samples // self.hop_length + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrontendConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def validate_frontend(cfg: FrontendConfig) -> None:
    """Raise ``ValueError`` naming the offending field when ``cfg`` is inconsistent."""
    if cfg.sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {cfg.sample_rate}")
    if cfg.n_fft < 16 or cfg.n_fft % 2:
        raise ValueError(f"n_fft must be an even number >= 16, got {cfg.n_fft}")
    if not 0 < cfg.hop_length <= cfg.n_fft:
        raise ValueError(f"hop_length must be in (0, n_fft], got {cfg.hop_length}")
    if not 0 < cfg.n_mfcc <= cfg.n_mels:
        raise ValueError(f"n_mfcc must be in (0, n_mels={cfg.n_mels}], got {cfg.n_mfcc}")
    if not 0 <= cfg.fmin < cfg.fmax <= cfg.sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got {cfg.fmin}, {cfg.fmax}")
    if cfg.top_db <= 0 or cfg.amin <= 0:
        raise ValueError("top_db and amin must be > 0")
    if not 0 < cfg.min_audio_seconds < cfg.max_audio_seconds:
        raise ValueError("need 0 < min_audio_seconds < max_audio_seconds")


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window('hann', n, fftbins=True)``)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float64)


def dft_kernel(cfg: FrontendConfig) -> np.ndarray:
    """Windowed real-DFT kernel, shape ``(2 * n_freqs, n_fft)``: cosine rows, then sine rows.

    Convolving the centre-padded signal with it at stride ``hop_length`` yields the real
    and imaginary STFT parts (the sine sign does not matter: only the power is used).
    """
    n = np.arange(cfg.n_fft)
    k = np.arange(cfg.n_freqs)[:, None]
    angle = 2.0 * np.pi * k * n[None, :] / cfg.n_fft
    win = hann_window(cfg.n_fft)
    return np.concatenate([np.cos(angle) * win, np.sin(angle) * win]).astype(np.float32)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale: linear below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mel = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(cfg: FrontendConfig) -> np.ndarray:
    """Slaney mel filterbank with Slaney (area) normalisation, shape ``(n_mels, n_freqs)``.

    Matches ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm='slaney')``.
    """
    fftfreqs = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_freqs)
    mel_pts = np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2)
    mel_f = _mel_to_hz(mel_pts)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : cfg.n_mels + 2] - mel_f[: cfg.n_mels])
    return (weights * enorm[:, None]).astype(np.float32)


def dct_matrix(cfg: FrontendConfig) -> np.ndarray:
    """Orthonormal DCT-II rows kept for the MFCCs, shape ``(n_mfcc, n_mels)``."""
    n = np.arange(cfg.n_mels)
    k = np.arange(cfg.n_mfcc)[:, None]
    basis = np.cos(np.pi * k * (2 * n[None, :] + 1) / (2 * cfg.n_mels))
    scale = np.full((cfg.n_mfcc, 1), np.sqrt(2.0 / cfg.n_mels))
    scale[0] = np.sqrt(1.0 / cfg.n_mels)
    return (basis * scale).astype(np.float32)
