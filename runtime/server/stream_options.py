"""The optional first message of a ``/v1/stream``: the client's sample rate and options.

    {"type": "start", "sample_rate": 48000, "smoothing_half_life_s": 5, "per_modality": true}

Every key but ``type`` is optional. ``sample_rate`` (Hz, a whole number in 8000..48000;
default 16000) is the rate of the PCM16 frames that follow; the server resamples them to
the VAD's and model's 16 kHz with the runtime's libsoxr resampler, keeping its filter
state across frames. ``smoothing_half_life_s`` overrides the server's
``--smoothing-half-life-s`` for this stream (``runtime.server.smoothing``).
``per_modality: true`` adds the scores of the audio alone and of the transcript alone to
each result (two more items in the same batch as the fused one), as the demo page shows.
The message must come before the first audio frame, once; the server answers
``{"type": "started", ...}`` with the values in force.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.server.smoothing import check_half_life

MIN_SAMPLE_RATE = 8000  # Hz
MAX_SAMPLE_RATE = 48000  # Hz
KEYS = ("type", "sample_rate", "smoothing_half_life_s", "per_modality")


@dataclass(frozen=True)
class StreamOptions:
    """What a stream's ``start`` message sets."""

    sample_rate: int = 16000  # Hz of the PCM16 frames the client sends
    smoothing_half_life_s: float | None = None  # None: the server's default
    per_modality: bool = False  # add audio-only and text-only scores to each result


def parse_start(body: dict) -> StreamOptions:
    """The options of a ``{"type": "start", ...}`` message; ``ValueError`` names the bad key."""
    unknown = sorted(set(body) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown start option(s) {unknown}; accepted: {list(KEYS[1:])}")
    rate = body.get("sample_rate", 16000)
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample_rate must be a whole number of Hz in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}], got {rate!r}")
    half_life = body.get("smoothing_half_life_s")
    if half_life is not None:
        half_life = check_half_life(half_life)
    per_modality = body.get("per_modality", False)
    if not isinstance(per_modality, bool):
        raise ValueError(f"per_modality must be true or false, got {per_modality!r}")
    return StreamOptions(rate, half_life, per_modality)
