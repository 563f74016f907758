"""The MFCC front-end: its parameters and the constant matrices that implement it.

This module is the single definition of the front-end. Training (``export.frontend``
builds a torch module from these matrices), the exported ONNX graph (which carries the
same matrices as initializers) and every runtime engine use it, so train and serve can
never drift apart. It imports numpy only.

The front-end reproduces ``librosa.feature.mfcc`` with ``center=True`` (zero padding of
``n_fft // 2`` on both sides), a periodic Hann window, power 2, a Slaney-style mel
filterbank with Slaney area normalisation, ``power_to_db(ref=1.0, amin, top_db)`` and an
orthonormal DCT-II. It is written with Gather, MatMul and elementwise ops only, so that
TensorRT 10.3 can parse it (no ONNX STFT / DFT / MelWeightMatrix): frames are gathered
as rows of ``n2`` samples, and the real DFT is factorised Cooley-Tukey style
(``n_fft = n1 * n2``, see ``factored_dft``) into two small constant matmuls, about 6x
fewer multiply-adds than a dense ``n_fft``-point DFT; the mel filterbank is applied to
the squared stage-2 outputs directly (``stacked_mel``).
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
    trim_db: float = 40.0  # drop leading/trailing audio quieter than peak - trim_db (0: off)
    trim_margin_seconds: float = 0.1  # audio kept on each side of the trimmed region
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


def dft_factors(cfg: FrontendConfig, max_n2: int = 32) -> tuple[int, int]:
    """``(n1, n2)`` with ``n_fft = n1 * n2`` for the two-stage real DFT.

    ``n2`` (the row length frames are gathered in) must divide ``hop_length`` so that
    frame rows are whole rows of the padded signal, and ``n1`` must be even. The largest
    such ``n2 <= max_n2`` is taken: 32 x 16 for the default 512-point DFT at hop 160, the
    fastest split on ONNX Runtime's CPU provider (docs/benchmarks.md, "Front-end").
    ``n2 = 1`` (a dense DFT) always qualifies.
    """
    g = math.gcd(cfg.n_fft, cfg.hop_length)
    n2 = max(d for d in range(1, min(g, max_n2) + 1) if g % d == 0 and (cfg.n_fft // d) % 2 == 0)
    return cfg.n_fft // n2, n2


def factored_dft(cfg: FrontendConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Constants of the two-stage (decimation-in-time) real DFT of one windowed frame.

    Write a frame as ``x[n2 * r + c]`` (``r < n1`` rows of ``n2`` samples). Then
    ``X[k] = sum_c W_N^(c k) A[k mod n1, c]`` with ``A[q, c] = sum_r x[n2 r + c] W_n1^(r q)``.
    Stage 1 is a real ``n1``-point DFT down each column; since ``x`` is real,
    ``A[n1 - q] = conj(A[q])`` and ``n1`` real numbers per column hold all of ``A``:
    ``Re A[0], Re A[n1/2]`` (both real) and ``Re A[q], Im A[q]`` for ``0 < q < n1/2``.
    Stage 2 handles each of the ``G = n1 / 2`` groups ``q`` separately: the bins
    ``k <= n_fft/2`` with ``k mod n1`` in ``{q, n1 - q}`` (group 0 also takes ``n1/2``)
    depend only on ``A[q, :]`` (and ``A[n1/2, :]``), ``2 * n2`` reals in and exactly
    ``2 * n2`` nonzero reals (real and imaginary parts of its bins) out.

    Returns:
        window: ``(n1, n2)`` periodic Hann window, frame laid out in rows.
        stage1: ``(n1, n1)``: columns ``2q, 2q + 1`` are group ``q``'s two reals.
        stage2: ``(G, 2 * n2, 2 * n2)``: input index ``j * n2 + c`` (real ``j`` of the
            group, column ``c``: each of the group's two reals as one contiguous row of
            ``n2``, the layout the stage-1 matmul writes), output index: one real or
            imaginary part of a bin.
        bins: ``(G, 2 * n2)`` int64, the DFT bin each stage-2 output belongs to, so that
            ``|X[k]|^2`` is the sum of the squared outputs with ``bins == k``.
    """
    n1, n2 = dft_factors(cfg)
    n, groups = cfg.n_fft, n1 // 2
    r = np.arange(n1)
    stage1 = np.zeros((n1, n1))
    stage1[:, 0] = 1.0
    stage1[:, 1] = np.cos(np.pi * r)
    for q in range(1, groups):
        stage1[:, 2 * q] = np.cos(2.0 * np.pi * r * q / n1)
        stage1[:, 2 * q + 1] = -np.sin(2.0 * np.pi * r * q / n1)
    c = np.arange(n2)
    stage2 = np.zeros((groups, n2, 2, 2 * n2))
    bins = np.full((groups, 2 * n2), -1, dtype=np.int64)
    for q in range(groups):
        # (bin k, which stage-1 real pair feeds it, +1: A[q] / -1: conj(A[q]) / 0: real A)
        if q == 0:
            outs = [(k, 0, 0) for k in range(0, n // 2 + 1, n1)] + [(k, 1, 0) for k in range(n1 // 2, n // 2 + 1, n1)]
        else:
            outs = [(k, 0, 1) for k in range(q, n // 2 + 1, n1)] + [(k, 0, -1) for k in range(n1 - q, n // 2 + 1, n1)]
        j = 0
        for k, src, sign in outs:
            cos, sin = np.cos(2.0 * np.pi * c * k / n), np.sin(2.0 * np.pi * c * k / n)  # W^(ck) = cos - i sin
            if sign == 0:  # A real: X = (cos - i sin) A
                stage2[q, :, src, j], bins[q, j] = cos, k
                j += 1
                if k % (n // 2):  # bins 0 and n/2 of a real signal are real
                    stage2[q, :, src, j], bins[q, j] = -sin, k
                    j += 1
            else:  # (cos - i sin)(Re + i sign Im)
                stage2[q, :, 0, j], stage2[q, :, 1, j], bins[q, j] = cos, sign * sin, k
                stage2[q, :, 0, j + 1], stage2[q, :, 1, j + 1], bins[q, j + 1] = -sin, sign * cos, k
                j += 2
        if j != 2 * n2:  # pragma: no cover - guaranteed by the algebra above
            raise AssertionError(f"DFT group {q} has {j} outputs, expected {2 * n2}")
    window = hann_window(n).reshape(n1, n2)
    stage2 = stage2.transpose(0, 2, 1, 3).reshape(groups, 2 * n2, 2 * n2)  # input index (c, j) -> (j, c)
    return window.astype(np.float32), stage1.astype(np.float32), stage2.astype(np.float32), bins


def stacked_mel(cfg: FrontendConfig) -> np.ndarray:
    """Mel filterbank indexed by stage-2 output, ``(G, 2 * n2, n_mels)``: row ``(q, j)`` is
    the filterbank column of bin ``bins[q, j]``, so ``sum_q squares[q] @ stacked[q]`` is
    the mel power spectrum (the real and imaginary parts of a bin both map to it)."""
    _, _, _, bins = factored_dft(cfg)
    return mel_filterbank(cfg).T[bins].astype(np.float32)


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
