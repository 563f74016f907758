"""Audio input: formats, rates, channels, dtypes, and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.audio import load_audio, pad_batch
from runtime.errors import AudioDecodeError, AudioError
from runtime.frontend import FrontendConfig
from tests.helpers import encode, speechlike

CFG = FrontendConfig()


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")])
def test_encoded_bytes_any_rate_stereo(fmt, subtype):
    y = speechlike(1.0, sr=44100)
    stereo = np.stack([y, 0.5 * y], axis=1)
    out = load_audio(encode(stereo, 44100, fmt, subtype), CFG)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.size - 16000) <= 2
    ref = load_audio(0.75 * y, CFG, sample_rate=44100)  # the downmix of the two channels
    n = min(out.size, ref.size)
    tol = 0.05 if fmt == "OGG" else 1e-3
    assert np.abs(out[:n] - ref[:n]).max() < tol


def test_file_path_and_int16(tmp_path):
    y = speechlike(0.8)
    path = tmp_path / "clip.wav"
    path.write_bytes(encode(y, 16000, "WAV", "PCM_16"))
    from_file = load_audio(path, CFG)
    from_int16 = load_audio((y * 32767).astype(np.int16), CFG, sample_rate=16000)
    assert np.abs(from_file - from_int16).max() < 1e-3
    channels_first = load_audio(np.stack([y, y]), CFG, sample_rate=16000)
    np.testing.assert_allclose(channels_first, y, atol=1e-6)


def test_resampling_is_band_limited():
    """A 1 kHz tone at 48 kHz stays a clean 1 kHz tone at 16 kHz (a real resampler)."""
    t = np.arange(48000) / 48000
    out = load_audio(0.5 * np.sin(2 * np.pi * 1000 * t), CFG, sample_rate=48000)
    spec = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    assert abs(np.argmax(spec) * 16000 / out.size - 1000) < 2
    assert spec[np.abs(np.fft.rfftfreq(out.size, 1 / 16000) - 1000) > 50].max() < 1e-3 * spec.max()


@pytest.mark.parametrize(
    "audio,sr,match",
    [
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.zeros(16000, np.float32), 16000, "silent"),
        (speechlike(0.1), 16000, "minimum is 0.25 s"),
        (np.tile(speechlike(1.0), 31), 16000, "maximum is 30.0 s"),
        (np.array([0.1, np.nan] * 8000, np.float32), 16000, "NaN or infinite"),
        (np.array([0.1, np.inf] * 8000, np.float32), 16000, "NaN or infinite"),
        (np.ones((3, 3, 3), np.float32), 16000, "1-D or"),
        (np.arange(16000, dtype=np.int32), 16000, "dtype int32"),
        (speechlike(1.0), None, "sample_rate is required"),
    ],
)
def test_bad_arrays(audio, sr, match):
    with pytest.raises(AudioError, match=match):
        load_audio(audio, CFG, sample_rate=sr)


def test_bad_bytes_files_and_formats(tmp_path):
    with pytest.raises(AudioDecodeError, match="not decodable"):
        load_audio(b"this is not audio at all" * 10, CFG)
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(b"", CFG)
    with pytest.raises(AudioDecodeError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav", CFG)
    with pytest.raises(AudioDecodeError, match="unsupported audio format AIFF"):
        load_audio(encode(speechlike(0.5), 16000, "AIFF"), CFG)
    with pytest.raises(AudioError, match="type int"):
        load_audio(42, CFG)  # type: ignore[arg-type]


def test_pad_batch():
    batch, lengths = pad_batch([np.ones(3, np.float32), np.ones(5, np.float32)], min_len=2)
    assert batch.shape == (2, 5) and lengths.tolist() == [3, 5]
    assert batch[0, 3:].tolist() == [0, 0]
