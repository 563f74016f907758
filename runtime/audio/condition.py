"""Samples to the model's clip: channels, rate checks, validation, resampling,
silence trimming, and padding clips into a batch.

Resampling uses libsoxr's high-quality filter (``soxr``).
"""

from __future__ import annotations

import math

import numpy as np

from runtime.errors import AudioError
from runtime.frontend import FrontendConfig

SILENCE_PEAK = 1e-5  # clips whose peak |sample| is below this are treated as silent
MAX_SAMPLE_RATE = 1_000_000  # Hz; libsoxr does not return for rates from about 2^46
# Hz; audio sampled slower carries no speech (telephone speech is 8 kHz, and its band
# reaches 3.4 kHz), and upsampling a few samples from 1 Hz makes a clip of any length.
MIN_SAMPLE_RATE = 4_000
# Larger |samples| are rejected: float audio belongs in [-1, 1], and far beyond it the
# front-end's float32 power spectrum overflows (the shipped model's scores turn NaN near
# 1e19). 2^31 leaves room for integer-scaled floats.
MAX_PEAK = 2.0**31


def check_rate(sample_rate: object, name: str = "audio") -> int:
    """``sample_rate`` as an int in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] Hz, else
    ``AudioError``: a whole number (an int, or a float without a fractional part), not a
    bool or a string."""
    if isinstance(sample_rate, (bool, np.bool_)) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise AudioError(f"{name}: sample_rate must be a whole number of Hz, got {type(sample_rate).__name__} {sample_rate!r}")
    if isinstance(sample_rate, (float, np.floating)):
        if not math.isfinite(sample_rate) or sample_rate != math.floor(sample_rate):
            raise AudioError(f"{name}: sample_rate must be a whole number of Hz, got {sample_rate!r}")
    rate = int(sample_rate)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        shown = str(rate) if len(str(rate)) <= 20 else str(rate)[:20] + "..."
        raise AudioError(f"{name}: the sample rate must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz "
                         f"(slower audio cannot carry speech), got {shown}")
    return rate


def to_mono_float(samples: np.ndarray, name: str = "audio") -> np.ndarray:
    """Float32 mono from a float or int16 array, 1-D or ``(samples, channels)`` (as
    ``decode`` returns; ``read_audio`` also turns a caller's ``(channels, samples)``)."""
    a = np.asarray(samples)
    is_int16 = a.dtype.kind == "i" and a.dtype.itemsize == 2  # either byte order
    if not is_int16 and not np.issubdtype(a.dtype, np.floating):
        raise AudioError(f"{name}: audio array dtype {a.dtype} is not supported; pass float32/float64 in [-1, 1] or int16")
    if a.size == 0:
        return np.zeros(0, dtype=np.float32)  # reported as empty by validate
    if a.dtype.kind == "f" and a.dtype.itemsize > 4:
        # finite values beyond float32 would become inf in the cast: name them as too loud
        peak = _finite_peak(a)
        if np.isfinite(peak) and peak > MAX_PEAK:
            raise AudioError(_too_loud(name, peak))
    if a.ndim not in (1, 2):
        raise AudioError(f"audio array must be 1-D, (samples, channels) or (channels, samples), got shape {a.shape}")
    scale = np.float32(1.0 / 32768.0) if is_int16 else None
    if a.ndim == 2:
        a = a[:, 0] if a.shape[1] == 1 else a.mean(axis=1, dtype=np.float32)
    if scale is None:
        return np.ascontiguousarray(a, dtype=np.float32)
    out = a.astype(np.float32)  # always a fresh array: scaling in place is safe
    out *= scale
    return out


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """High-quality resampling with libsoxr; a no-op when the rates already match."""
    if rate == target:
        return audio
    if rate <= 0:
        raise AudioError(f"sample rate must be positive, got {rate}")
    import soxr

    return soxr.resample(audio, rate, target, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


RESAMPLE_QUALITY = "HQ"  # libsoxr's high-quality filter, for whole clips and streams alike


class StreamResampler:
    """``resample`` for mono audio that arrives in pieces (a live stream): libsoxr keeps its
    filter state between calls, so the pieces' outputs, with the tail that ``last=True``
    returns, concatenate to ``resample`` of the whole."""

    def __init__(self, rate: int, target: int):
        self.rate, self.target = rate, target
        if rate != target:
            import soxr

            self._stream = soxr.ResampleStream(rate, target, 1, dtype="float32", quality=RESAMPLE_QUALITY)

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """float32 mono samples at ``rate`` -> those at ``target`` (``last``: also the filter's tail)."""
        samples = np.asarray(samples, dtype=np.float32)
        if self.rate == self.target:
            return samples
        return self._stream.resample_chunk(samples, last=last)


def _finite_peak(audio: np.ndarray) -> float:
    """Largest |sample|, or NaN/inf when any sample is not finite (two passes, no copies)."""
    lo, hi = float(audio.min()), float(audio.max())
    return max(-lo, hi) if np.isfinite(lo) and np.isfinite(hi) else float("nan")


def validate(audio: np.ndarray, cfg: FrontendConfig, name: str = "audio") -> np.ndarray:
    """Check a mono clip at ``cfg.sample_rate`` against the model's limits; return it."""
    if audio.size == 0:
        raise AudioError(f"{name} is empty (0 samples)")
    peak = _finite_peak(audio)
    if not np.isfinite(peak):
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise AudioError(f"{name} has {bad} NaN or infinite samples; audio must be finite")
    if peak > MAX_PEAK:
        raise AudioError(_too_loud(name, peak))
    seconds = audio.size / cfg.sample_rate
    if audio.size < cfg.min_samples:
        raise AudioError(f"{name} is {seconds:.6g} s long ({audio.size} samples at {cfg.sample_rate} Hz); the minimum is {cfg.min_audio_seconds} s")
    if audio.size > cfg.max_samples:
        raise AudioError(_too_long(name, seconds, cfg))
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name} is silent (peak amplitude below {SILENCE_PEAK:g}); nothing to recognise")
    return audio


def _too_loud(name: str, peak: float) -> str:
    return f"{name} has samples as large as {peak:.3g}; float audio is expected in [-1, 1] (at most {MAX_PEAK:.4g} is accepted)"


def _too_long(name: str, seconds: float, cfg: FrontendConfig) -> str:
    return (
        f"{name} is {seconds:.6g} s long; the maximum is {cfg.max_audio_seconds} s "
        "(split long recordings into utterances, e.g. with the server's /v1/stream)"
    )


def trim_silence(audio: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Drop leading and trailing audio quieter than the clip's loudest frame minus
    ``cfg.trim_db`` (frames of ``n_fft`` samples every ``hop_length``), keeping
    ``cfg.trim_margin_seconds`` on each side and at least ``cfg.min_samples`` samples.

    Training and inference both call this (through ``load_audio``), so the model never
    sees a different amount of leading silence than it was trained with.
    """
    if cfg.trim_db <= 0 or audio.size <= cfg.min_samples:
        return audio
    hop, win = cfg.hop_length, min(cfg.n_fft, audio.size)
    n = 1 + (audio.size - win) // hop
    # Frame energies from a running sum of squares: O(samples), not O(frames * n_fft). Every
    # frame edge is a multiple of g = gcd(hop, win) (32 samples here), so the running sum is
    # only needed every g samples: summing g-sample blocks first is 2x faster than a
    # per-sample cumsum, and summing them as a float32 matrix-vector product 4x faster than
    # a float64 sum over the short rows (the block sums are exact to 1e-7 relative, and
    # accumulated in float64; the same trims on every RAVDESS clip and 2000 random ones).
    g = math.gcd(hop, win)
    used = ((n - 1) * hop + win) // g * g
    with np.errstate(over="ignore"):  # an overflow is caught below
        blocks = np.square(audio[:used]).reshape(-1, g) @ np.ones(g, dtype=np.float32)
    csum = np.concatenate(([0.0], np.cumsum(blocks, dtype=np.float64)))
    if not np.isfinite(csum[-1]):  # squares beyond float32 (|x| > 1.8e19): in float64
        blocks = np.square(audio[:used], dtype=np.float64).reshape(-1, g) @ np.ones(g)
        csum = np.concatenate(([0.0], np.cumsum(blocks)))
    starts = np.arange(n) * (hop // g)
    energy = np.maximum(csum[starts + win // g] - csum[starts], 0.0) / win + 1e-20
    db = 10.0 * np.log10(energy)
    loud = np.flatnonzero(db >= db.max() - cfg.trim_db)
    margin = int(cfg.trim_margin_seconds * cfg.sample_rate)
    start = max(0, int(loud[0]) * hop - margin)
    end = min(audio.size, int(loud[-1]) * hop + win + margin)
    short = cfg.min_samples - (end - start)
    if short > 0:  # widen around the loud region, within the clip
        start = max(0, start - (short + 1) // 2)
        end = min(audio.size, start + cfg.min_samples)
        start = max(0, end - cfg.min_samples)
    return audio[start:end]


MAX_CHANNELS_FIRST = 64  # rows a (channels, samples) array may have: a microphone array, not a batch


def samples_first(a: np.ndarray, name: str = "audio") -> np.ndarray:
    """A caller's 2-D array as ``(samples, channels)``: a ``(channels, samples)`` one (as
    torchaudio and librosa lay audio out) is transposed. The longer axis is time, since no
    clip long enough to classify has fewer samples than channels. An array with more rows
    than ``MAX_CHANNELS_FIRST`` but fewer than its columns is refused: it is far likelier a
    stack of clips, which downmixing would silently average into one."""
    if a.ndim != 2 or a.shape[0] >= a.shape[1]:
        return a
    if a.shape[0] > MAX_CHANNELS_FIRST:
        raise AudioError(
            f"{name}: a {a.shape[0]} x {a.shape[1]} array is neither (samples, channels) nor (channels, samples) with at most "
            f"{MAX_CHANNELS_FIRST} channels; to classify several clips, pass a list of arrays (one prediction each)"
        )
    return a.T


def condition_audio(samples: np.ndarray, rate: int, cfg: FrontendConfig, label: str = "audio") -> np.ndarray:
    """The second half of ``load_audio``: downmix, resample, validate, trim silence."""
    return check_clip(to_model_rate(samples, rate, cfg, label), cfg, label)


def to_model_rate(samples: np.ndarray, rate: int, cfg: FrontendConfig, label: str = "audio") -> np.ndarray:
    """``condition_audio``'s first step: the float32 mono downmix at ``cfg.sample_rate``.

    A clip that will be too long at the model's rate is rejected before it is resampled
    (a few bytes of WAV claiming a 1-Hz rate would otherwise be resampled to millions of
    samples first). Empty and non-finite clips are passed on unresampled for ``validate``
    to report.
    """
    mono = to_mono_float(samples, label)
    if rate == cfg.sample_rate or mono.size == 0:
        return mono
    if rate > 0 and mono.size * cfg.sample_rate > (cfg.max_samples + 1) * rate:
        raise AudioError(_too_long(label, mono.size / rate, cfg))
    if samples.dtype.kind == "i" or np.isfinite(_finite_peak(mono)):
        return resample(mono, rate, cfg.sample_rate)
    return mono


def check_clip(mono: np.ndarray, cfg: FrontendConfig, label: str = "audio") -> np.ndarray:
    """``condition_audio``'s last step on a clip at the model's rate: validate, trim silence."""
    return trim_silence(validate(mono, cfg, label), cfg)


def pad_batch(clips: list[np.ndarray], min_len: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad clips into ``(B, N)`` float32 with their lengths as int64 ``(B,)``."""
    lengths = np.array([c.size for c in clips], dtype=np.int64)
    n = max(int(lengths.max()) if clips else 0, min_len)
    batch = np.zeros((len(clips), n), dtype=np.float32)
    for i, c in enumerate(clips):
        batch[i, : c.size] = c
    return batch, lengths
