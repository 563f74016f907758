"""The benchmark's requests: encoded audio clips and transcripts, deterministic per seed.

Each item is what a client sends: a 16-bit WAV at the capture rate (48 kHz by default,
so that decoding and resampling are part of the work) and a transcript of a given
number of words.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from benchmarks.loadgen import speechlike, wav_bytes

WORDS = [
    "i",
    "can",
    "not",
    "believe",
    "you",
    "did",
    "that",
    "again",
    "after",
    "everything",
    "we",
    "talked",
    "about",
    "yesterday",
    "honestly",
    "this",
    "is",
    "the",
    "best",
    "news",
    "i",
    "have",
    "heard",
    "all",
    "week",
    "and",
    "it",
    "makes",
    "me",
    "so",
    "happy",
    "please",
    "stop",
    "shouting",
    "at",
    "me",
    "it",
    "really",
    "scares",
    "me",
    "when",
    "you",
    "get",
    "angry",
    "like",
    "this",
    "the",
    "meeting",
    "moved",
    "to",
    "three",
    "and",
    "nobody",
    "told",
    "the",
    "team",
    "so",
    "we",
    "waited",
    "for",
    "an",
    "hour",
]


@dataclass(frozen=True)
class Workload:
    """``batch`` requests of ``audio_seconds`` of audio at ``input_rate`` Hz plus text."""

    batch: int
    audio_seconds: float = 3.0
    text_words: int = 12
    input_rate: int = 48000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.audio_seconds <= 0 or self.text_words < 0 or self.input_rate <= 0:
            raise ValueError("need batch >= 1, audio_seconds > 0, text_words >= 0, input_rate > 0")


def sentence(words: int, rng: np.random.Generator) -> str:
    start = int(rng.integers(len(WORDS)))
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(words))


DISTINCT_CLIPS = 8  # synthesising a clip takes ~0.1 s, so larger batches cycle through 8


@lru_cache(maxsize=64)
def clip(seconds: float, rate: int, seed: int) -> bytes:
    """One synthetic utterance as 16-bit WAV bytes (cached: batches share their clips)."""
    return wav_bytes(speechlike(seconds, seed=seed, sr=rate), rate)


def make_requests(w: Workload) -> tuple[list[bytes], list[str]]:
    """WAV bytes and transcripts for ``w.batch`` items (texts distinct, clips cycling
    through ``DISTINCT_CLIPS`` voices)."""
    rng = np.random.default_rng(w.seed)
    clips = [clip(w.audio_seconds, w.input_rate, w.seed * 1000 + i % DISTINCT_CLIPS) for i in range(w.batch)]
    texts = [sentence(w.text_words, rng) for _ in range(w.batch)]
    return clips, texts


def make_sentences(n: int, words: int = 12, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [sentence(words, rng) for _ in range(n)]
