"""The fast path for plain 16-bit PCM WAV bytes: RIFF chunk walking without libsndfile.

libsndfile reads in-memory audio through Python callbacks (~0.1 ms per 3-s clip holding
the GIL); a 16-bit PCM WAV's samples are a view of its bytes, found in microseconds.
"""

from __future__ import annotations

import struct
import sys

import numpy as np

from runtime.errors import AudioDecodeError

# KSDATAFORMAT_SUBTYPE_PCM, the sub-format GUID of a WAVE_FORMAT_EXTENSIBLE PCM file.
_PCM_GUID = bytes.fromhex("0100000000001000800000aa00389b71")

# Chunks a plain WAV may carry before its audio that libsndfile skips whatever they hold
# (text metadata, padding); any other chunk type sends the file to libsndfile.
_SKIPPED_CHUNKS = frozenset({b"LIST", b"JUNK", b"junk", b"PAD "})
_MAX_CHANNELS = 1024  # libsndfile's limit
# Chunks walked at most (each costs ~0.5 us of Python): real files have a handful; a 10-MB
# file of empty JUNK chunks has 1.2 million, a second of the GIL per parse.
MAX_CHUNKS = 256


def parse_pcm16_wav(data: bytes | bytearray | memoryview, name: str = "audio bytes") -> tuple[np.ndarray, int] | None:
    """``(samples, channels)`` int16 and the rate of a plain 16-bit PCM WAV, or None.

    Only the unambiguous case is handled here: RIFF/WAVE; a ``fmt `` chunk for 16-bit
    integer PCM (plain or WAVE_FORMAT_EXTENSIBLE, at most 1024 channels, a rate below
    2^31); then, with nothing but LIST/JUNK/PAD/fact chunks between, one complete ``data``
    chunk of whole frames; and no second ``fmt `` or ``data`` chunk after it. Anything else
    (other formats and widths, RF64, other chunks before the audio, a truncated or empty
    data chunk, malformed headers) gives None, and ``decode`` leaves it to libsndfile, whose
    samples this equals (tests/test_audio.py).

    The samples are a read-only view of immutable ``bytes``, and a copy of a ``bytearray``
    or writable buffer (which its owner could change under the view).

    Raises:
        AudioDecodeError: the file has more than ``MAX_CHUNKS`` chunks (``name`` says
            which input in the message).
    """
    buf = memoryview(data)
    if not buf.c_contiguous or sys.byteorder != "little":
        return None
    buf = buf.cast("B")
    if len(buf) < 12 or buf[0:4] != b"RIFF" or buf[8:12] != b"WAVE":
        return None
    fmt: tuple[int, int, int] | None = None  # channels, rate, block_align
    found: tuple[int, int] | None = None  # offset and size of the data chunk
    pos, chunks = 12, 0
    while pos + 8 <= len(buf):
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise AudioDecodeError(f"{name}: the WAV has more than {MAX_CHUNKS} chunks (audio files have a handful); re-encode it")
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
