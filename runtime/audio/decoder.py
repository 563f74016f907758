"""Encoded audio to samples: file paths and bytes through libsndfile (``soundfile``), with
a size cap on what a file may decode to; arrays are passed through with their rate checked.
"""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path
from typing import Union

import numpy as np

from runtime.audio.condition import check_rate, samples_first
from runtime.audio.wav import parse_pcm16_wav
from runtime.errors import AudioDecodeError, AudioError, AudioTooLargeError, AudioTooLongError

AudioInput = Union[np.ndarray, str, os.PathLike, bytes, bytearray, memoryview]

SUPPORTED_FORMATS = ("WAV", "FLAC", "OGG")
# libsndfile's names of the containers accepted: a WAV whose format tag is
# WAVE_FORMAT_EXTENSIBLE (what most tools write for 24-bit or multichannel audio) is "WAVEX",
# one over 4 GB "RF64"
_ACCEPTED_CONTAINERS = frozenset(SUPPORTED_FORMATS) | {"WAVEX", "RF64"}

# Subtypes libsndfile hands back as int16 without loss: reading those as int16 and scaling
# in numpy is several times faster than libsndfile's own float conversion.
_INT16_SUBTYPES = frozenset({"PCM_16", "PCM_S8", "PCM_U8", "ULAW", "ALAW"})
_OPEN_LOCK = threading.Lock()

# Decoded audio is bounded by its size, whatever the header claims: 30 s at 48 kHz with 16
# channels (92 MB as float32). A few hundred kB of Vorbis or Opus can otherwise decode to
# gigabytes (192 kHz x 255 channels), and a FLAC header may claim any length.
MAX_DECODED_SAMPLES = 30 * 48_000 * 16
UNKNOWN_FRAMES = 2**62  # libsndfile's frame count of a stream of unknown length is about 2^63

# The first page of a logical Ogg stream: capture pattern, version 0, header type "beginning
# of stream" (0x02, perhaps with "end of stream" 0x04, never "continued" 0x01), granule
# position 0, any serial number, page sequence number 0. A file with a second one is chained
# (streams one after another) or multiplexed, and libsndfile decodes only the first stream.
_OGG_BOS_PAGE = re.compile(rb"OggS\x00[\x02\x06]\x00{8}.{4}\x00{4}", re.DOTALL)
_BOS_BYTES = 22  # the length of what _OGG_BOS_PAGE matches
_SCAN_BLOCK = 1 << 20  # bytes of an Ogg file searched at a time


def decode(data: str | os.PathLike | bytes | bytearray | memoryview, name: str | None = None,
           max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a file path or encoded bytes to ``(samples, channels)`` and its rate.

    Samples are int16 for 16-bit (or narrower) PCM and float32 otherwise; ``to_mono_float``
    turns either into float32 mono in [-1, 1]. 16-bit PCM WAV ``bytes`` come back as a
    read-only view of them (``parse_pcm16_wav``). The header is read once: its rate is
    checked (``check_rate``), and with ``max_seconds`` a longer clip is refused
    (``AudioTooLongError``) before its audio is decoded.

    Raises:
        AudioDecodeError: not audio in an accepted container, or a chained Ogg file.
        AudioTooLargeError: more than ``MAX_DECODED_SAMPLES`` samples.
        AudioTooLongError: longer than ``max_seconds``.
        AudioError: a sample rate outside ``check_rate``'s range.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        name = name or "audio bytes"
        if len(data) == 0:
            raise AudioDecodeError(f"{name}: audio bytes are empty")
        parsed = parse_pcm16_wav(data, name)
        if parsed is not None:
            samples, rate = parsed
            check_rate(rate, name)
            _check_length(name, samples.shape[0], rate, max_seconds)
            if samples.size > MAX_DECODED_SAMPLES:  # no bigger in memory than the bytes, but the same rule
                raise AudioTooLargeError(_too_much(name, samples.shape[1], rate))
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
            check_rate(f.samplerate, name)
            if f.format == "OGG":
                _check_single_stream(name, source)
            if f.frames < UNKNOWN_FRAMES:
                _check_length(name, f.frames, f.samplerate, max_seconds)
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
            _check_length(name, samples.shape[0], rate, max_seconds)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        reason = str(getattr(e, "error_string", "") or e).split(": ")[-1]
        if "psf_fseek" in reason:  # libsndfile read past the audio a (FLAC) header claims
            reason += " The header's length does not match the audio in it: re-encode the file."
        raise AudioDecodeError(f"{name} is not decodable audio ({reason}); accepted: {', '.join(SUPPORTED_FORMATS)}") from e
    return samples, int(rate)


def _check_length(name: str, frames: int, rate: int, max_seconds: float | None) -> None:
    if max_seconds is not None and frames > max_seconds * rate:
        raise AudioTooLongError(
            f"{name} is {frames / rate:.6g} s long; the maximum is {max_seconds:g} s (split long recordings into "
            "utterances, e.g. with the server's /v1/stream)", frames / rate, max_seconds)


def _check_single_stream(name: str, source: object) -> None:
    """Refuse an Ogg file with more than one logical stream (see ``_OGG_BOS_PAGE``)."""
    if isinstance(source, io.BytesIO):
        with source.getbuffer() as data:
            first = _OGG_BOS_PAGE.search(data)
            chained = first is not None and _OGG_BOS_PAGE.search(data, first.end()) is not None
    else:
        chained, seen, tail = False, 0, b""
        with open(source, "rb") as fh:  # type: ignore[arg-type]
            while not chained and (block := fh.read(_SCAN_BLOCK)):
                window = tail + block
                seen += len(_OGG_BOS_PAGE.findall(window, 0, len(window)))
                chained = seen > 1
                tail = window[-_BOS_BYTES + 1 :]  # a page header cut at the block edge is whole in the next window
    if chained:
        raise AudioDecodeError(
            f"{name} is a chained or multiplexed Ogg file (more than one logical stream), of which only the first "
            "would be decoded; re-encode it as one stream (e.g. ffmpeg -i in.ogg out.flac)")


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


def read_audio(data: AudioInput, sample_rate: int | None = None, name: str | None = None,
               max_seconds: float | None = None) -> tuple[np.ndarray, int, str]:
    """The first half of ``load_audio``: any accepted input -> ``(samples, rate, label)``,
    decoded but not yet downmixed or resampled (``label`` names the input in errors).
    Audio longer than ``max_seconds`` raises ``AudioTooLongError`` (encoded audio before
    it is decoded)."""
    if isinstance(data, np.ndarray):
        label = name or "audio array"
        if sample_rate is None:
            raise AudioError(f"{label}: sample_rate is required when audio is passed as an array")
        samples, rate = samples_first(data, label), check_rate(sample_rate, label)
        _check_length(label, samples.shape[0] if samples.ndim else 0, rate, max_seconds)
        return samples, rate, label
    if isinstance(data, (str, os.PathLike, bytes, bytearray, memoryview)):
        label = name or (_path_label(data) if isinstance(data, (str, os.PathLike)) else "audio bytes")
        samples, rate = decode(data, label, max_seconds)
        return samples, check_rate(rate, label), label
    raise AudioError(f"{name or 'audio'}: audio of type {type(data).__name__} is not supported; pass a numpy array, a file path or encoded bytes")


def _path_label(path: str | os.PathLike) -> str:
    try:
        return os.fsdecode(path)
    except (TypeError, ValueError):
        return str(path)
