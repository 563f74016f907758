"""Waveform augmentation for training: speed perturbation, time stretch, noise, gain.

Speed perturbation resamples (tempo and pitch move together, as in Kaldi's 0.9/1.0/1.1
recipe); time stretch changes tempo at constant pitch (librosa's phase vocoder); noise
is white or pink at a random SNR; gain is a random level change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (applied independently)."""

    p_speed: float = 0.5
    speed_range: tuple[float, float] = (0.9, 1.1)
    p_stretch: float = 0.3
    stretch_range: tuple[float, float] = (0.85, 1.15)
    p_noise: float = 0.5
    snr_db_range: tuple[float, float] = (10.0, 35.0)
    p_gain: float = 0.5
    gain_db_range: tuple[float, float] = (-8.0, 8.0)


def speed_perturb(y: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (shorter, higher) by resampling."""
    return soxr.resample(y, 16000 * factor, 16000, quality="HQ").astype(np.float32)


def time_stretch(y: np.ndarray, rate: float) -> np.ndarray:
    import librosa

    return librosa.effects.time_stretch(y, rate=rate, n_fft=512, hop_length=128).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.arange(spectrum.size), 1)
    return np.fft.irfft(spectrum / np.sqrt(freqs), n).astype(np.float32)


def add_noise(y: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = pink_noise(y.size, rng) if rng.random() < 0.5 else rng.standard_normal(y.size).astype(np.float32)
    p_sig = float(np.mean(y * y)) + 1e-12
    p_noise = float(np.mean(noise * noise)) + 1e-12
    return y + noise * np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))


def augment(y: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One random augmentation of a 16 kHz clip; output stays within [-1, 1]."""
    if rng.random() < cfg.p_speed:
        y = speed_perturb(y, rng.uniform(*cfg.speed_range))
    if rng.random() < cfg.p_stretch:
        y = time_stretch(y, rng.uniform(*cfg.stretch_range))
    if rng.random() < cfg.p_noise:
        y = add_noise(y, rng.uniform(*cfg.snr_db_range), rng)
    if rng.random() < cfg.p_gain:
        y = y * 10 ** (rng.uniform(*cfg.gain_db_range) / 20)
    peak = float(np.max(np.abs(y)))
    return (y / peak * 0.99 if peak > 0.99 else y).astype(np.float32)
