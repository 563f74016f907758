"""Audio input: formats, rates, channels, dtypes, and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.audio import decode, load_audio, pad_batch, to_mono_float
from runtime.errors import AudioDecodeError, AudioError
from runtime.frontend import FrontendConfig
from tests.helpers import DATA_ROOT, encode, requires_data, speechlike

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
    # a 16-microphone array, either layout: the longer axis is time
    mics = np.stack([y * (k + 1) / 16 for k in range(16)])
    for layout in (mics, mics.T, np.round(mics * 32767).astype(np.int16)):
        np.testing.assert_allclose(load_audio(layout, CFG, sample_rate=16000), y * 17 / 32, atol=1e-4)
    # a stack of 65+ clips is refused, not averaged into one; decoded files stay (frames, channels)
    with pytest.raises(AudioError, match="65 x 12800 array is neither .* pass a list of arrays"):
        load_audio(np.tile(y, (65, 1)), CFG, sample_rate=16000)
    many = np.random.default_rng(3).uniform(-0.5, 0.5, (30, 40)).astype(np.float32)  # 30 frames of 40 channels
    samples, rate = decode(encode(many, 8000, "WAV", "FLOAT"))
    assert samples.shape == (30, 40) and to_mono_float(samples).shape == (30,)


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
        (np.ones((3, 3, 3), np.float32), 16000, "1-D, \\(samples, channels\\) or \\(channels, samples\\)"),
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


def _trim_reference(audio: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """trim_silence written the direct way: every frame materialised, energies averaged."""
    hop, win = cfg.hop_length, min(cfg.n_fft, audio.size)
    n = 1 + (audio.size - win) // hop
    frames = audio[np.arange(n)[:, None] * hop + np.arange(win)[None, :]].astype(np.float64)
    db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    loud = np.flatnonzero(db >= db.max() - cfg.trim_db)
    margin = int(cfg.trim_margin_seconds * cfg.sample_rate)
    start, end = max(0, int(loud[0]) * hop - margin), min(audio.size, int(loud[-1]) * hop + win + margin)
    short = cfg.min_samples - (end - start)
    if short > 0:
        start = max(0, start - (short + 1) // 2)
        end = min(audio.size, start + cfg.min_samples)
        start = max(0, end - cfg.min_samples)
    return audio[start:end]


@pytest.mark.parametrize("lead,tail,seed", [(0.0, 0.0, 0), (0.7, 0.3, 1), (1.2, 0.0, 2), (0.05, 2.0, 3)])
def test_trim_silence_matches_direct_frame_energies(lead, tail, seed):
    from runtime.audio import trim_silence

    rng = np.random.default_rng(seed)
    speech = speechlike(1.0, seed=seed)
    quiet = lambda s: (1e-4 * rng.standard_normal(int(s * 16000))).astype(np.float32)
    clip = np.concatenate([quiet(lead), speech, quiet(tail)])
    got = trim_silence(clip, CFG)
    np.testing.assert_array_equal(got, _trim_reference(clip, CFG))
    margin = CFG.trim_margin_seconds
    assert got.size / 16000 <= 1.0 + 2 * margin + 2 * CFG.n_fft / 16000  # a frame may straddle each edge


@requires_data
def test_trim_silence_matches_direct_frame_energies_on_real_clips():
    """The block-sum running energy trims every clip of one actor exactly as the direct way."""
    import dataclasses

    from runtime.audio import trim_silence

    untrimmed = dataclasses.replace(CFG, trim_db=0.0)
    clips = sorted((DATA_ROOT / "ravdess" / "Actor_21").glob("*.flac"))
    assert len(clips) == 60
    for path in clips:
        y = load_audio(str(path), untrimmed)
        np.testing.assert_array_equal(trim_silence(y, CFG), _trim_reference(y, CFG), err_msg=path.name)


def test_trim_silence_of_huge_finite_samples():
    """Squares beyond float32's range are summed in float64, as the reference does."""
    from runtime.audio import trim_silence

    clip = np.concatenate([np.full(8000, 1e16, np.float32), speechlike(1.0, seed=4) * np.float32(1e20)])
    np.testing.assert_array_equal(trim_silence(clip, CFG), _trim_reference(clip, CFG))


def test_int16_fast_paths_equal_float_decoding():
    import io

    import soundfile as sf

    from runtime.audio import decode, to_mono_float

    y = speechlike(0.6, sr=22050)
    stereo = np.stack([y, -0.25 * y], axis=1)
    wav = encode(stereo, 22050, "WAV", "PCM_16")
    samples, rate = decode(wav)
    assert samples.dtype == np.int16 and rate == 22050
    ref = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)[0].mean(axis=1)
    np.testing.assert_allclose(to_mono_float(samples), ref, atol=1e-7)
    mono = (y * 32767).astype(np.int16)
    np.testing.assert_array_equal(to_mono_float(mono), mono.astype(np.float32) / 32768.0)
    np.testing.assert_array_equal(to_mono_float(mono[:, None]), mono.astype(np.float32) / 32768.0)


def test_non_seekable_wav_codec_decodes():
    # GSM 6.10 in WAV cannot be read without an explicit frame count.
    y = speechlike(0.8, sr=8000)
    out = load_audio(encode(y, 8000, "WAV", "GSM610"), CFG)
    assert out.dtype == np.float32 and abs(out.size - 12800) <= 400


def _libsndfile(data: bytes) -> tuple[np.ndarray, int]:
    import io

    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    return samples, rate


def _riff(*chunks: tuple[bytes, bytes]) -> bytes:
    """A RIFF/WAVE file of the given (id, body) chunks, odd bodies padded."""
    body = b"".join(cid + len(b).to_bytes(4, "little") + b + b"\0" * (len(b) & 1) for cid, b in chunks)
    return b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WAVE" + body


def _fmt(channels: int, rate: int, bits: int = 16, tag: int = 1) -> bytes:
    import struct

    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, (rate * align) % 2**32, align, bits)


@pytest.mark.parametrize("channels,rate,fmt", [(1, 48000, "WAV"), (2, 44100, "WAV"), (6, 16000, "WAVEX"), (1, 8000, "WAVEX")])
def test_pcm16_wav_parse_equals_libsndfile(channels, rate, fmt):
    from runtime.audio import decode, parse_pcm16_wav

    rng = np.random.default_rng(channels)
    audio = rng.uniform(-1, 1, (rate // 3, channels)).astype(np.float32)
    wav = encode(audio, rate, fmt, "PCM_16")
    for data in (wav, bytearray(wav), memoryview(wav)):
        parsed = parse_pcm16_wav(data)
        assert parsed is not None
        samples, got_rate = parsed
        ref, ref_rate = _libsndfile(wav)
        assert got_rate == ref_rate == rate and samples.dtype == np.int16
        assert samples.flags.writeable == isinstance(data, bytearray)  # a view of bytes, a copy of a bytearray
        np.testing.assert_array_equal(samples, ref)
        np.testing.assert_array_equal(decode(data)[0], ref)
    assert int.from_bytes(wav[20:22], "little") == (0xFFFE if fmt == "WAVEX" else 1)


def test_pcm16_wav_parse_walks_chunks_and_leaves_the_rest_to_libsndfile():
    from runtime.audio import decode, load_audio, parse_pcm16_wav

    pcm = (np.arange(-3000, 3000, 3, dtype=np.int16) * 5).reshape(-1, 2)
    data = pcm.tobytes()
    # Chunks before and after the audio, one of odd size (padded), are skipped.
    wav = _riff((b"fmt ", _fmt(2, 22050)), (b"junk", b"abc"), (b"data", data), (b"LIST", b"INFOISFT\x04\0\0\0test"))
    samples, rate = parse_pcm16_wav(wav)
    ref, ref_rate = _libsndfile(wav)
    assert rate == ref_rate == 22050
    np.testing.assert_array_equal(samples, pcm)
    np.testing.assert_array_equal(ref, pcm)
    # Everything parse_pcm16_wav does not take goes to libsndfile, and decodes as before.
    others = {
        "8-bit": _riff((b"fmt ", _fmt(1, 8000, bits=8)), (b"data", bytes(range(256)) * 40)),
        "32-bit": _riff((b"fmt ", _fmt(1, 8000, bits=32)), (b"data", np.arange(4000, dtype=np.int32).tobytes())),
        "float": encode(pcm / 32768.0, 16000, "WAV", "FLOAT"),
        "truncated data": wav[: wav.index(b"data") + 8 + 100],
        "data before fmt": _riff((b"data", data), (b"fmt ", _fmt(2, 22050))),
        "flac": encode(pcm / 32768.0, 16000, "FLAC"),
    }
    # Headers libsndfile refuses or reads differently go to it too (and decode as before).
    others.update(
        {
            "two data chunks": _riff((b"fmt ", _fmt(2, 22050)), (b"data", data), (b"data", data)),
            "two fmt chunks": _riff((b"fmt ", _fmt(2, 22050)), (b"fmt ", _fmt(1, 8000)), (b"data", data)),
            "empty fact chunk": _riff((b"fmt ", _fmt(2, 22050)), (b"fact", b""), (b"data", data)),
            "other chunk first": _riff((b"fmt ", _fmt(2, 22050)), (b"bext", bytes(602)), (b"data", data)),
            "1025 channels": _riff((b"fmt ", _fmt(1025, 8000)), (b"data", bytes(2050 * 4))),
            "rate 2^31": _riff((b"fmt ", _fmt(1, 2**31)), (b"data", data)),
        }
    )
    for what, blob in others.items():
        assert parse_pcm16_wav(blob) is None, what
    # Padding chunks before the format are skipped too.
    junk_first = _riff((b"JUNK", bytes(28)), (b"fmt ", _fmt(2, 22050)), (b"data", data))
    np.testing.assert_array_equal(parse_pcm16_wav(junk_first)[0], _libsndfile(junk_first)[0])
    # A mutable buffer is copied: its owner may change it after decoding.
    mutable = bytearray(wav)
    samples = parse_pcm16_wav(mutable)[0]
    mutable[wav.index(b"data") + 8 : wav.index(b"data") + 10] = b"\x11\x11"
    assert samples[0, 0] == pcm[0, 0] and samples.flags.writeable
    assert decode(others["truncated data"])[0].shape[1] == 2  # libsndfile reads what is there
    assert decode(others["float"])[0].dtype == np.float32
    with pytest.raises(AudioDecodeError, match="not decodable"):
        load_audio(others["data before fmt"], CFG)
    with pytest.raises(AudioDecodeError, match="not decodable"):
        load_audio(b"RIFF\x04\0\0\0WAVE", CFG)


def test_too_long_clips_are_rejected_before_resampling(monkeypatch):
    from runtime.audio import condition as audio

    def no_resampling(*args):
        raise AssertionError("resampled a clip that is too long anyway")

    monkeypatch.setattr(audio, "resample", no_resampling)
    # 250 kB of WAV claiming 4 kHz: 31.25 s, which would be 500k samples at 16 kHz
    low_rate = _riff((b"fmt ", _fmt(1, 4000)), (b"data", (np.arange(125_000, dtype=np.int16) % 2000 * 8).tobytes()))
    with pytest.raises(AudioError, match="is 31.25 s long; the maximum is 30.0 s"):
        load_audio(low_rate, CFG)
    with pytest.raises(AudioError, match="is 31 s long"):
        load_audio(np.tile(speechlike(1.0, sr=8000), 31), CFG, sample_rate=8000)
    monkeypatch.undo()
    assert load_audio(np.tile(speechlike(1.0, sr=8000), 30), CFG, sample_rate=8000).size <= CFG.max_samples


# ------------------------------------------------------------------ hostile input


@pytest.mark.parametrize("rate, ok", [
    (16000, True), (16000.0, True), (np.int32(16000), True), (np.float64(8000.0), True), (4000, True), (1_000_000, True),
    (3999, False), (1, False), (0, False), (-16000, False), (0.5, False), (16000.7, False), (float("nan"), False), (float("inf"), False),
    (True, False), ("16000", False), ([16000], False), (2**31, False), (2**46, False), (10**400, False),
])  # fmt: skip
def test_sample_rate_must_be_a_whole_number_of_hz_in_range(rate, ok):
    from runtime.audio import MAX_SAMPLE_RATE, check_rate

    if ok:
        assert check_rate(rate) == int(rate)
        return
    with pytest.raises(AudioError, match=f"whole number of Hz|between 4000 and {MAX_SAMPLE_RATE}") as e:
        check_rate(rate, "item 3")
    assert str(e.value).startswith("item 3:") and len(str(e.value)) < 300  # 10**400 is not printed whole


def test_too_loud_float_audio_is_named_not_turned_into_nan():
    x = speechlike(1.0, seed=2)
    with pytest.raises(AudioError, match="samples as large as 4.*float audio is expected in"):
        load_audio(x / np.abs(x).max() * 4e19, CFG, sample_rate=16000)
    with pytest.raises(AudioError, match="samples as large as 1e\\+300"):  # finite in float64, inf in float32
        load_audio(x.astype(np.float64) / np.abs(x).max() * 1e300, CFG, sample_rate=16000)
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(np.where(np.arange(x.size) == 7, np.inf, x), CFG, sample_rate=16000)
    loud = load_audio(x / np.abs(x).max() * 2.0**30, CFG, sample_rate=16000)  # integer-scaled floats still work
    assert np.isfinite(loud).all()


@pytest.mark.parametrize("shape", [(16000, 0), (0, 2), (0,), (0, 0)])
def test_arrays_without_samples_are_empty(shape):
    with pytest.raises(AudioError, match="is empty"):
        load_audio(np.zeros(shape, np.float32), CFG, sample_rate=16000)


def test_big_endian_int16_equals_little_endian():
    x = (speechlike(1.0, seed=3) * 20000).astype("<i2")
    np.testing.assert_array_equal(load_audio(x.astype(">i2"), CFG, sample_rate=16000), load_audio(x, CFG, sample_rate=16000))


def test_unreadable_paths_and_types_are_audio_errors():
    from runtime.audio import read_audio

    with pytest.raises(AudioDecodeError, match="cannot open audio file"):
        load_audio("a" * 5000, CFG)
    with pytest.raises(AudioDecodeError, match="no such audio file|cannot open audio file"):
        load_audio("clip\0.wav", CFG)
    with pytest.raises(AudioError, match="item 4: audio of type int is not supported"):
        read_audio(5, name="item 4")


def test_decoding_stops_at_max_decoded_samples(monkeypatch):
    """A small file that decodes to too many samples (channels x rate x length) is refused
    once that many are read, whatever its header claims."""
    from runtime import audio
    from runtime.audio import decoder

    monkeypatch.setattr(decoder, "MAX_DECODED_SAMPLES", 100_000)
    four = np.tile(speechlike(2.0, seed=4)[:, None], (1, 4))  # 4 channels x 32000 frames = 128000 samples
    for fmt in ("FLAC", "OGG"):
        with pytest.raises(AudioError, match="decodes to more than 100000 samples \\(4 channels at 16000 Hz; its header claims 32000"):
            audio.decode(encode(four, 16000, fmt), "bomb")
    samples, _ = audio.decode(encode(four[:24000], 16000, "FLAC"))  # 96000 samples: fine
    assert samples.shape == (24000, 4)
    wav = encode(four, 16000, "WAV", "PCM_16")  # the fast WAV parser keeps the same rule
    assert audio.parse_pcm16_wav(wav) is not None
    with pytest.raises(audio.AudioTooLargeError, match="decodes to more than 100000 samples"):
        audio.decode(wav, "bomb")
    # the header probe reads plain WAVs without libsndfile, with the same answer
    import io

    import soundfile as sf

    for data in (wav, encode(four, 16000, "FLAC")):
        info = sf.info(io.BytesIO(data))
        assert audio.probe(data) == (info.frames, info.samplerate, info.channels)


def test_a_header_claiming_too_much_is_refused_unread(monkeypatch):
    """A FLAC header's frame count above the cap is refused before any audio is read."""
    import soundfile as sf

    from runtime import audio
    from runtime.audio import decoder

    monkeypatch.setattr(decoder, "MAX_DECODED_SAMPLES", 100_000)
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("read a file whose header claims too much"))
    with pytest.raises(AudioError, match="decodes to more than 100000 samples \\(4 channels"):
        audio.decode(encode(np.tile(speechlike(2.0, seed=4)[:, None], (1, 4)), 16000, "FLAC"), "bomb")


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_wave_format_extensible_files_decode_as_paths_and_bytes(tmp_path, subtype):
    """libsndfile names a WAV with format tag 0xFFFE "WAVEX": what most tools write for
    24-bit or multichannel audio. It was refused as an unsupported format (only 16-bit bytes,
    read by parse_pcm16_wav, got through)."""
    import soundfile as sf

    x = np.tile(speechlike(1.0, seed=5)[:, None], (1, 4)) * np.array([1.0, 0.5, 0.25, 0.1], dtype=np.float32)
    path = tmp_path / "wavex.wav"
    sf.write(str(path), x, 16000, format="WAVEX", subtype=subtype)
    from_path, rate = decode(str(path))
    from_bytes, _ = decode(path.read_bytes())
    assert rate == 16000 and from_path.shape == (16000, 4)
    np.testing.assert_array_equal(to_mono_float(from_path), to_mono_float(from_bytes))
    np.testing.assert_allclose(to_mono_float(from_path), x.mean(axis=1), atol=2e-4)


def test_paths_that_are_not_files_say_what_they_are(tmp_path):
    import os

    clip = tmp_path / "a.wav"
    clip.write_bytes(encode(speechlike(1.0), 16000, "WAV"))
    (entry,) = list(os.scandir(os.fsencode(tmp_path)))  # an os.PathLike whose path is bytes
    assert load_audio(entry, CFG).size > 0
    with pytest.raises(AudioDecodeError, match="is a directory"):
        load_audio(str(tmp_path), CFG)
    with pytest.raises(AudioDecodeError, match="path is empty"):
        load_audio("", CFG)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(AudioDecodeError, match="not a regular file"):  # opening it would block forever
        load_audio(str(fifo), CFG)


# ------------------------------------------------------------------ issue 18: audio that is not what it says


def test_a_wav_of_many_chunks_is_refused_without_walking_them_all():
    """A valid WAV with 1.2 M empty JUNK chunks took ~1 s of Python (holding the GIL) per
    parse; the walk now stops after MAX_CHUNKS."""
    import time

    from runtime.audio import decode, parse_pcm16_wav
    from runtime.audio.wav import MAX_CHUNKS

    wav = encode(speechlike(0.5), 16000, "WAV", "PCM_16")
    data = wav.index(b"data")

    def with_junk(n):
        body = wav[12:data] + b"JUNK\0\0\0\0" * n + wav[data:]
        return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WAVE" + body

    assert parse_pcm16_wav(with_junk(MAX_CHUNKS - 3)) is not None  # fmt + junk + data
    start = time.perf_counter()
    with pytest.raises(AudioDecodeError, match=f"more than {MAX_CHUNKS} chunks"):
        decode(with_junk(1_200_000), "junk.wav")
    assert time.perf_counter() - start < 0.1


def test_a_chained_ogg_file_is_refused_as_bytes_and_as_a_path(tmp_path):
    """libsndfile decodes only the first link of a chained Ogg file: 1 s of noise chained
    with 40 s of speech decoded to the 1 s (past every length limit, about the wrong audio)."""
    from runtime.audio import decode

    noise = encode((0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000, "OGG")
    speech = encode(speechlike(40.0), 16000, "OGG")
    path = tmp_path / "chained.ogg"
    path.write_bytes(noise + speech)
    for data in (noise + speech, path, str(path)):
        with pytest.raises(AudioDecodeError, match="chained or multiplexed Ogg"):
            decode(data)
    assert decode(speech)[0].shape[0] == 640_000  # one stream decodes whole
    # a link boundary at any offset of the path scanner's blocks is still found
    from runtime.audio import decoder

    for block in (4096, len(noise) - 3, len(noise) + 5):
        decoder._SCAN_BLOCK, saved = block, decoder._SCAN_BLOCK
        try:
            with pytest.raises(AudioDecodeError, match="chained"):
                decode(path)
        finally:
            decoder._SCAN_BLOCK = saved


def test_audio_below_4_khz_is_refused_before_resampling():
    """One sample at 1 Hz (46 bytes of WAV) was resampled to a second of audio and scored."""
    from runtime.audio import MIN_SAMPLE_RATE

    tiny = _riff((b"fmt ", _fmt(1, 1)), (b"data", np.array([16384], "<i2").tobytes()))
    assert len(tiny) == 46
    with pytest.raises(AudioError, match=f"between {MIN_SAMPLE_RATE} and"):
        load_audio(tiny, CFG)
    with pytest.raises(AudioError, match=f"between {MIN_SAMPLE_RATE} and"):
        load_audio(speechlike(1.0, sr=8000)[::4], CFG, sample_rate=2000)
    with pytest.raises(AudioError, match="0.25"):  # the minimum length still applies at the model's rate
        load_audio(speechlike(0.2, sr=4000), CFG, sample_rate=4000)
    assert load_audio(speechlike(1.0, sr=4000), CFG, sample_rate=4000).size > 0


def test_max_seconds_refuses_long_audio_from_its_header(monkeypatch):
    """``max_seconds`` (the server's --max-audio-seconds) is checked before decoding."""
    import soundfile as sf

    from runtime.audio import read_audio
    from runtime.errors import AudioTooLongError

    flac = encode(speechlike(3.0), 16000, "FLAC")
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("decoded audio longer than max_seconds"))
    for data in (flac, encode(speechlike(3.0), 16000, "WAV", "PCM_16")):
        with pytest.raises(AudioTooLongError, match="is 3 s long; the maximum is 2 s") as e:
            read_audio(data, max_seconds=2.0)
        assert e.value.max_seconds == 2.0
    with pytest.raises(AudioTooLongError):
        read_audio(speechlike(3.0), 16000, max_seconds=2.0)
    monkeypatch.undo()
    assert read_audio(flac, max_seconds=3.0)[0].shape[0] == 48000
