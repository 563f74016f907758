"""Audio input: decode, downmix, resample, validate, and pad into a batch.

Accepts float or int16 numpy arrays, file paths, and encoded bytes (WAV / FLAC / OGG, any
sample rate, any channel count). One job per module:

* ``wav``: the fast parser of plain 16-bit PCM WAV bytes (no libsndfile);
* ``decoder``: paths and bytes to samples through libsndfile, with a size cap;
* ``condition``: channels, rate checks, validation, resampling (libsoxr), silence
  trimming and batch padding.

``load_audio`` is the whole path: ``read_audio`` (decode) then ``condition_audio``.
"""

from __future__ import annotations

import numpy as np

from runtime.audio.condition import (
    MAX_CHANNELS_FIRST,
    MAX_PEAK,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SILENCE_PEAK,
    StreamResampler,
    check_clip,
    check_rate,
    condition_audio,
    pad_batch,
    resample,
    samples_first,
    to_model_rate,
    to_mono_float,
    trim_silence,
    validate,
)
from runtime.audio.decoder import MAX_DECODED_SAMPLES, SUPPORTED_FORMATS, AudioInput, decode, probe, read_audio
from runtime.audio.wav import parse_pcm16_wav
from runtime.errors import AudioDecodeError, AudioError, AudioTooLargeError, AudioTooLongError
from runtime.frontend import FrontendConfig


def load_audio(data: AudioInput, cfg: FrontendConfig, sample_rate: int | None = None, name: str | None = None) -> np.ndarray:
    """Any accepted audio input -> validated float32 mono at ``cfg.sample_rate``.

    Args:
        data: array (float in [-1, 1] or int16), file path, or encoded bytes.
        cfg: the model's front-end parameters.
        sample_rate: rate of an array input (required for arrays; ignored for files and
            bytes, which carry their own).
        name: how to refer to this input in error messages.
    """
    samples, rate, label = read_audio(data, sample_rate, name)
    return condition_audio(samples, rate, cfg, label)


__all__ = [
    "MAX_CHANNELS_FIRST",
    "MAX_DECODED_SAMPLES",
    "MAX_PEAK",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "SILENCE_PEAK",
    "SUPPORTED_FORMATS",
    "AudioDecodeError",
    "AudioError",
    "AudioInput",
    "AudioTooLargeError",
    "AudioTooLongError",
    "check_clip",
    "check_rate",
    "condition_audio",
    "decode",
    "load_audio",
    "pad_batch",
    "parse_pcm16_wav",
    "probe",
    "read_audio",
    "resample",
    "samples_first",
    "to_model_rate",
    "to_mono_float",
    "trim_silence",
    "validate",
]
