"""Waveform augmentation for training, and the fixed channel conditions of the robustness
evaluation (``export.evaluate --robustness``).

Random augmentation (``augment``), each step applied with its own probability, in this
order: speed perturbation (resampling: tempo and pitch move together, as in Kaldi's
0.9/1.0/1.1 recipe), time stretch (tempo at constant pitch, librosa's phase vocoder), a
room (a synthetic impulse response), white or pink noise at a random SNR, a random gain,
and a telephone channel (8 kHz band-limiting with an 8-bit mu-law round trip).

Fixed conditions (``telephone``, ``white_noise``): deterministic given their arguments
and seed, so an evaluation row is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

SAMPLE_RATE = 16000  # every function here takes and returns 16 kHz clips
TELEPHONE_RATE = 8000  # narrow-band telephony (G.711)
TELEPHONE_BAND_HZ = (300.0, 3400.0)  # the telephone voice band
MU = 255  # G.711 mu-law: 8-bit codes


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (applied independently). A step with
    probability 0 draws no random numbers, so adding one leaves the others' draws as they were."""

    p_speed: float = 0.5  # speed perturbation
    speed_range: tuple[float, float] = (0.9, 1.1)  # playback-rate factor
    p_stretch: float = 0.3  # time stretch at constant pitch
    stretch_range: tuple[float, float] = (0.85, 1.15)  # tempo factor
    p_noise: float = 0.5  # additive noise, white or pink with equal chance
    snr_db_range: tuple[float, float] = (10.0, 35.0)  # signal-to-noise ratio, dB
    p_gain: float = 0.5  # level change
    gain_db_range: tuple[float, float] = (-8.0, 8.0)  # dB
    p_reverb: float = 0.0  # a synthetic room (exponentially decaying noise impulse response)
    rt60_range: tuple[float, float] = (0.2, 0.8)  # reverberation time, seconds
    drr_db_range: tuple[float, float] = (0.0, 12.0)  # direct-to-reverberant energy ratio, dB
    p_telephone: float = 0.0  # the telephone channel (``telephone``)

    def __post_init__(self) -> None:
        check_augment_config(self)


def check_augment_config(cfg: AugmentConfig) -> None:
    """Raise ``ValueError`` naming the allowed values when ``cfg`` is inconsistent."""
    for name in ("p_speed", "p_stretch", "p_noise", "p_gain", "p_reverb", "p_telephone"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(cfg, name)}")
    positive = ("speed_range", "stretch_range", "rt60_range")
    for name in (*positive, "snr_db_range", "gain_db_range", "drr_db_range"):
        lo, hi = getattr(cfg, name)
        if not lo <= hi or (name in positive and not lo > 0):
            raise ValueError(f"{name} must be (low, high) with low <= high" + (" and low > 0" if name in positive else "") + f", got {(lo, hi)}")


def speed_perturb(y: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (shorter, higher) by resampling."""
    return soxr.resample(y, SAMPLE_RATE * factor, SAMPLE_RATE, quality="HQ").astype(np.float32)


def time_stretch(y: np.ndarray, rate: float) -> np.ndarray:
    import librosa

    return librosa.effects.time_stretch(y, rate=rate, n_fft=512, hop_length=128).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.arange(spectrum.size), 1)
    return np.fft.irfft(spectrum / np.sqrt(freqs), n).astype(np.float32)


def mix_at_snr(y: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``y`` plus ``noise`` scaled to ``snr_db`` below the clip's mean power."""
    p_sig = float(np.mean(y * y)) + 1e-12
    p_noise = float(np.mean(noise * noise)) + 1e-12
    return y + noise * np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))


def add_noise(y: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = pink_noise(y.size, rng) if rng.random() < 0.5 else rng.standard_normal(y.size).astype(np.float32)
    return mix_at_snr(y, noise, snr_db)


def white_noise(y: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """``y`` with Gaussian white noise at ``snr_db`` (mean power over the whole clip), drawn
    from ``seed``: the robustness evaluation's noise condition."""
    noise = np.random.default_rng(seed).standard_normal(y.size).astype(np.float32)
    return mix_at_snr(y.astype(np.float32), noise, snr_db).astype(np.float32)


def mu_law(y: np.ndarray, mu: int = MU) -> np.ndarray:
    """Round trip through ``mu``-law companding with ``mu + 1`` codes (8 bits for 255);
    input clipped to [-1, 1]."""
    x = np.clip(y, -1.0, 1.0)
    f = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    code = np.round((f + 1) / 2 * mu)  # 0 .. mu
    g = code / mu * 2 - 1
    return (np.sign(g) * np.expm1(np.abs(g) * np.log1p(mu)) / mu).astype(np.float32)


def telephone(y: np.ndarray) -> np.ndarray:
    """A 16 kHz clip as it comes out of a narrow-band telephone line: resampled to 8 kHz,
    band-passed to 300-3400 Hz (4th-order Butterworth, causal), mu-law coded at 8 bits,
    and resampled back to 16 kHz. Deterministic."""
    from scipy.signal import butter, sosfilt

    narrow = soxr.resample(y.astype(np.float32), SAMPLE_RATE, TELEPHONE_RATE, quality="HQ")
    sos = butter(4, TELEPHONE_BAND_HZ, btype="bandpass", fs=TELEPHONE_RATE, output="sos")
    narrow = mu_law(sosfilt(sos, narrow))
    out = soxr.resample(narrow, TELEPHONE_RATE, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return out[: y.size] if out.size >= y.size else np.pad(out, (0, y.size - out.size))


def room_impulse(rt60: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response at 16 kHz: a unit direct path followed by Gaussian
    noise decaying 60 dB in ``rt60`` seconds, its energy ``drr_db`` below the direct path's."""
    n = max(int(rt60 * SAMPLE_RATE), 2)
    t = np.arange(1, n) / SAMPLE_RATE
    tail = rng.standard_normal(n - 1) * np.exp(-3 * np.log(10) * t / rt60)  # amplitude -60 dB at rt60
    tail *= np.sqrt(10 ** (-drr_db / 10) / (np.sum(tail * tail) + 1e-12))
    return np.concatenate([[1.0], tail]).astype(np.float32)


def reverberate(y: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """``y`` convolved with ``ir``, cut to ``y``'s length, at ``y``'s RMS level."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(y, ir)[: y.size]
    scale = np.sqrt((float(np.mean(y * y)) + 1e-12) / (float(np.mean(wet * wet)) + 1e-12))
    return (wet * scale).astype(np.float32)


def augment(y: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One random augmentation of a 16 kHz clip; output stays within [-1, 1]."""
    if rng.random() < cfg.p_speed:
        y = speed_perturb(y, rng.uniform(*cfg.speed_range))
    if rng.random() < cfg.p_stretch:
        y = time_stretch(y, rng.uniform(*cfg.stretch_range))
    if cfg.p_reverb and rng.random() < cfg.p_reverb:
        y = reverberate(y, room_impulse(rng.uniform(*cfg.rt60_range), rng.uniform(*cfg.drr_db_range), rng))
    if rng.random() < cfg.p_noise:
        y = add_noise(y, rng.uniform(*cfg.snr_db_range), rng)
    if rng.random() < cfg.p_gain:
        y = y * 10 ** (rng.uniform(*cfg.gain_db_range) / 20)
    if cfg.p_telephone and rng.random() < cfg.p_telephone:
        y = telephone(within_range(y))  # the codec clips at full scale: bring the level in first
    return within_range(y)


def within_range(y: np.ndarray) -> np.ndarray:
    """``y`` as float32, scaled down to a peak of 0.99 when it exceeds that."""
    peak = float(np.max(np.abs(y)))
    return (y / peak * 0.99 if peak > 0.99 else y).astype(np.float32)
