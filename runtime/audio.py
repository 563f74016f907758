"""Audio input: decode, downmix, resample, validate, and pad into a batch.

Accepts float or int16 numpy arrays, file paths, and encoded bytes (WAV / FLAC / OGG, any
sample rate, any channel count). Decoding uses libsndfile (``soundfile``); resampling
uses libsoxr's high-quality filter (``soxr``).
"""

from __future__ import annotations

import io
import math
import os
import struct
import sys
import threading
from pathlib import Path
from typing import Union

import numpy as np

from runtime.errors import AudioDecodeError, AudioError, AudioTooLargeError
from runtime.frontend import FrontendConfig

AudioInput = Union[np.ndarray, str, os.PathLike, bytes, bytearray, memoryview]

SUPPORTED_FORMATS = ("WAV", "FLAC", "OGG")
# libsndfile's names of the containers accepted: a WAV whose format tag is
# WAVE_FORMAT_EXTENSIBLE (what most tools write for 24-bit or multichannel audio) is "WAVEX",
# one over 4 GB "RF64"
_ACCEPTED_CONTAINERS = frozenset(SUPPORTED_FORMATS) | {"WAVEX", "RF64"}
SILENCE_PEAK = 1e-5  # clips whose peak |sample| is below this are treated as silent


# Subtypes libsndfile hands back as int16 without loss: reading those as int16 and scaling
# in numpy is several times faster than libsndfile's own float conversion.
_INT16_SUBTYPES = frozenset({"PCM_16", "PCM_S8", "PCM_U8", "ULAW", "ALAW"})


# KSDATAFORMAT_SUBTYPE_PCM, the sub-format GUID of a WAVE_FORMAT_EXTENSIBLE PCM file.
_PCM_GUID = bytes.fromhex("0100000000001000800000aa00389b71")


# Chunks a plain WAV may carry before its audio that libsndfile skips whatever they hold
# (text metadata, padding); any other chunk type sends the file to libsndfile.
_SKIPPED_CHUNKS = frozenset({b"LIST", b"JUNK", b"junk", b"PAD "})
_MAX_CHANNELS = 1024  # libsndfile's limit
_OPEN_LOCK = threading.Lock()

# Decoded audio is bounded by its size, whatever the header claims: 30 s at 48 kHz with 16
# channels (92 MB as float32). A few hundred kB of Vorbis or Opus can otherwise decode to
# gigabytes (192 kHz x 255 channels), and a FLAC header may claim any length.
MAX_DECODED_SAMPLES = 30 * 48_000 * 16
MAX_SAMPLE_RATE = 1_000_000  # Hz; libsoxr does not return for rates from about 2^46
UNKNOWN_FRAMES = 2**62  # libsndfile's frame count of a stream of unknown length is about 2^63
# Larger |samples| are rejected: float audio belongs in [-1, 1], and far beyond it the
# front-end's float32 power spectrum overflows (the shipped model's scores turn NaN near
# 1e19). 2^31 leaves room for integer-scaled floats.
MAX_PEAK = 2.0**31


def parse_pcm16_wav(data: bytes | bytearray | memoryview) -> tuple[np.ndarray, int] | None:
    """``(samples, channels)`` int16 and the rate of a plain 16-bit PCM WAV, or None.

    Only the unambiguous case is handled here: RIFF/WAVE; a ``fmt `` chunk for 16-bit
    integer PCM (plain or WAVE_FORMAT_EXTENSIBLE, at most 1024 channels, a rate below
    2^31); then, with nothing but LIST/JUNK/PAD/fact chunks between, one complete ``data``
    chunk of whole frames; and no second ``fmt `` or ``data`` chunk after it. Anything else
    (other formats and widths, RF64, other chunks before the audio, a truncated or empty
    data chunk, malformed headers) gives None, and ``decode`` leaves it to libsndfile, whose
    samples this equals (tests/test_audio.py). Why not always libsndfile: it reads
    in-memory audio through Python callbacks, ~0.1 ms per 3-s clip holding the GIL
    (``pytest benchmarks --benchmark-only -k decode_32``), against microseconds here.

    The samples are a read-only view of immutable ``bytes``, and a copy of a ``bytearray``
    or writable buffer (which its owner could change under the view).
    """
    buf = memoryview(data)
    if not buf.c_contiguous or sys.byteorder != "little":
        return None
    buf = buf.cast("B")
    if len(buf) < 12 or buf[0:4] != b"RIFF" or buf[8:12] != b"WAVE":
        return None
    fmt: tuple[int, int, int] | None = None  # channels, rate, block_align
    found: tuple[int, int] | None = None  # offset and size of the data chunk
    pos = 12
    while pos + 8 <= len(buf):
        chunk, size = bytes(buf[pos : pos + 4]), int.from_bytes(buf[pos + 4 : pos + 8], "little")
        body = pos + 8
        if found is not None:  # after the audio: only a second fmt/data chunk matters
            if chunk in (b"fmt ", b"data"):
                return None
        elif chunk == b"fmt ":
            if fmt is not None or size < 16 or body + size > len(buf):
                return None
            tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", buf, body)
            if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: valid bits and sub-format decide
                if size < 40 or struct.unpack_from("<H", buf, body + 18)[0] != 16 or buf[body + 24 : body + 40] != _PCM_GUID:
                    return None
            elif tag != 1:
                return None
            if bits != 16 or not 1 <= channels <= _MAX_CHANNELS or not 1 <= rate < 2**31 or block_align != 2 * channels:
                return None
            fmt = channels, rate, block_align
        elif chunk == b"data":
            if fmt is None or size == 0 or size % fmt[2] or body + size > len(buf):
                return None
            found = body, size
        elif chunk not in _SKIPPED_CHUNKS and not (chunk == b"fact" and size >= 4):  # fact: a frame count
            return None
        pos = body + size + (size & 1)  # chunks are padded to an even size
    if found is None or fmt is None:
        return None
    samples = np.frombuffer(buf, dtype=np.int16, count=found[1] // 2, offset=found[0]).reshape(-1, fmt[0])
    if buf.readonly:
        samples.flags.writeable = False
    else:
        samples = samples.copy()
    return samples, fmt[1]


def decode(data: str | os.PathLike | bytes | bytearray | memoryview, name: str | None = None) -> tuple[np.ndarray, int]:
    """Decode a file path or encoded bytes to ``(samples, channels)`` and its rate.

    Samples are int16 for 16-bit (or narrower) PCM and float32 otherwise; ``to_mono_float``
    turns either into float32 mono in [-1, 1]. 16-bit PCM WAV ``bytes`` come back as a
    read-only view of them (``parse_pcm16_wav``).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        name = name or "audio bytes"
        if len(data) == 0:
            raise AudioDecodeError(f"{name}: audio bytes are empty")
        parsed = parse_pcm16_wav(data)
        if parsed is not None:
            if parsed[0].size > MAX_DECODED_SAMPLES:  # no bigger in memory than the bytes, but the same rule
                raise AudioTooLargeError(_too_much(name, parsed[0].shape[1], parsed[1]))
            return parsed
        source: object = io.BytesIO(data if isinstance(data, bytes) else bytes(data))
    else:
        try:
            text = os.fsdecode(data)  # also a bytes path, or an os.PathLike giving one
        except (TypeError, ValueError) as e:
            raise AudioDecodeError(f"{name or 'audio'}: not a file path ({e})") from e
        if not text:
            raise AudioDecodeError("the audio file path is empty")
        path = Path(text)
        name = name or text
        try:
            if not path.is_file():
                # a directory, a pipe or a device is no file to decode (a pipe may never end)
                what = "is a directory" if path.is_dir() else "is not a regular file (a pipe, socket or device)"
                raise AudioDecodeError(f"{name} {what}; give an audio file, or its bytes" if path.exists() else f"no such audio file: {path}")
        except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
            raise AudioDecodeError(f"{name}: cannot open audio file ({e})") from e
        source = text
    import soundfile as sf

    try:
        # libsndfile reports a failed open through a process-wide error code: one open at
        # a time, so concurrent decodes (the server's, prepare_many's) name their own
        # error. Reading the opened file, the slow part, runs in parallel.
        with _OPEN_LOCK:
            f = sf.SoundFile(source)
        with f:
            if f.format not in _ACCEPTED_CONTAINERS:
                raise AudioDecodeError(
                    f"{name}: unsupported audio format {f.format}; accepted: {', '.join(SUPPORTED_FORMATS)}"
                )
            dtype = "int16" if f.subtype in _INT16_SUBTYPES else "float32"
            # An explicit frame count (some codecs, GSM 6.10 and G.721 ADPCM, are not
            # seekable), never more than one frame beyond MAX_DECODED_SAMPLES: a header that
            # claims more is refused unread, and one that claims less than it holds is read
            # only that far. (libsndfile cannot read a FLAC stream of unknown length, whose
            # header says 0: it fails with an error that names it.)
            most = MAX_DECODED_SAMPLES // max(f.channels, 1)
            if most < f.frames < UNKNOWN_FRAMES:
                raise AudioTooLargeError(_too_much(name, f.channels, f.samplerate, f.frames))
            samples, rate = f.read(min(f.frames, most + 1), dtype=dtype, always_2d=True), f.samplerate
            if samples.shape[0] > most:
                raise AudioTooLargeError(_too_much(name, f.channels, rate))
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        reason = str(getattr(e, "error_string", "") or e).split(": ")[-1]
        if "psf_fseek" in reason:  # libsndfile read past the audio a (FLAC) header claims
            reason += " The header's length does not match the audio in it: re-encode the file."
        raise AudioDecodeError(f"{name} is not decodable audio ({reason}); accepted: {', '.join(SUPPORTED_FORMATS)}") from e
    return samples, int(rate)


def _too_much(name: str, channels: int, rate: int, claimed_frames: int | None = None) -> str:
    what = f"{channels} channel{'s' if channels != 1 else ''} at {rate} Hz"
    if claimed_frames is not None:
        what += f"; its header claims {claimed_frames} frames, {claimed_frames / max(rate, 1):.6g} s"
    return (
        f"{name} decodes to more than {MAX_DECODED_SAMPLES} samples ({what}); "
        f"at most {MAX_DECODED_SAMPLES} are accepted (30 s at 48 kHz with 16 channels): downmix or split it"
    )


def probe(data: bytes) -> tuple[int | None, int, int] | None:
    """``(frames or None if unknown, rate, channels)`` from encoded audio's header, or None
    if libsndfile cannot read it (``decode`` then says why). A plain 16-bit WAV is read by
    ``parse_pcm16_wav`` (microseconds, no libsndfile open)."""
    parsed = parse_pcm16_wav(data)
    if parsed is not None:
        return parsed[0].shape[0], parsed[1], parsed[0].shape[1]
    import soundfile as sf

    try:
        with _OPEN_LOCK:  # see decode
            info = sf.info(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any header failure is reported by the decoder instead
        return None
    return (info.frames if 0 <= info.frames < UNKNOWN_FRAMES else None), int(info.samplerate), int(info.channels)


def check_rate(sample_rate: object, name: str = "audio") -> int:
    """``sample_rate`` as an int in [1, MAX_SAMPLE_RATE] Hz, else ``AudioError``: a whole
    number (an int, or a float without a fractional part), not a bool or a string."""
    if isinstance(sample_rate, (bool, np.bool_)) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise AudioError(f"{name}: sample_rate must be a whole number of Hz, got {type(sample_rate).__name__} {sample_rate!r}")
    if isinstance(sample_rate, (float, np.floating)):
        if not math.isfinite(sample_rate) or sample_rate != math.floor(sample_rate):
            raise AudioError(f"{name}: sample_rate must be a whole number of Hz, got {sample_rate!r}")
    rate = int(sample_rate)
    if not 1 <= rate <= MAX_SAMPLE_RATE:
        shown = str(rate) if len(str(rate)) <= 20 else str(rate)[:20] + "..."
        raise AudioError(f"{name}: the sample rate must be between 1 and {MAX_SAMPLE_RATE} Hz, got {shown}")
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


def read_audio(data: AudioInput, sample_rate: int | None = None, name: str | None = None) -> tuple[np.ndarray, int, str]:
    """The first half of ``load_audio``: any accepted input -> ``(samples, rate, label)``,
    decoded but not yet downmixed or resampled (``label`` names the input in errors)."""
    if isinstance(data, np.ndarray):
        label = name or "audio array"
        if sample_rate is None:
            raise AudioError(f"{label}: sample_rate is required when audio is passed as an array")
        return samples_first(data, label), check_rate(sample_rate, label), label
    if isinstance(data, (str, os.PathLike, bytes, bytearray, memoryview)):
        label = name or (_path_label(data) if isinstance(data, (str, os.PathLike)) else "audio bytes")
        samples, rate = decode(data, label)
        return samples, check_rate(rate, label), label
    raise AudioError(f"{name or 'audio'}: audio of type {type(data).__name__} is not supported; pass a numpy array, a file path or encoded bytes")


def _path_label(path: str | os.PathLike) -> str:
    try:
        return os.fsdecode(path)
    except (TypeError, ValueError):
        return str(path)


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


def pad_batch(clips: list[np.ndarray], min_len: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad clips into ``(B, N)`` float32 with their lengths as int64 ``(B,)``."""
    lengths = np.array([c.size for c in clips], dtype=np.int64)
    n = max(int(lengths.max()) if clips else 0, min_len)
    batch = np.zeros((len(clips), n), dtype=np.float32)
    for i, c in enumerate(clips):
        batch[i, : c.size] = c
    return batch, lengths
