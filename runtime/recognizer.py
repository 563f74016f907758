"""``EmotionRecognizer``: audio and/or transcript in, calibrated emotion scores out.

    from runtime import EmotionRecognizer
    rec = EmotionRecognizer.load()                      # bundled weights, ONNX Runtime
    rec.predict(audio="clip.wav", text="I can't believe it")
    rec.predict(audio=[a, b, c], sample_rate=16000)    # one engine call for the batch

Pipeline: ``prepare`` (decode, downmix, resample, validate; check text) ->
``build_feed`` (pad audio, tokenise in one batch) -> ``Engine.infer`` ->
``postprocess`` (per-mode temperature, softmax, labels).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.audio import AudioInput, condition_audio, read_audio, pad_batch
from runtime.engines import create_engine
from runtime.engines.base import Engine
from runtime.errors import EmotionError, TextError
from runtime.postprocess import Prediction, postprocess
from runtime.spec import ModelSpec, load_spec
from runtime.text import TextEncoder


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Item:
    """One validated request item, ready for batching."""

    audio: np.ndarray | None  # float32 mono at the model's sample rate, or None
    text: str | None  # transcript, or None


class EmotionRecognizer:
    """A model folder loaded on one engine."""

    def __init__(self, spec: ModelSpec, engine: Engine, max_batch: int = 32, prepare_threads: int | None = None):
        self.spec = spec
        self.engine = engine
        self.max_batch = max_batch
        self.encoder = TextEncoder(spec.path(spec.tokenizer_file), spec.max_tokens, spec.max_text_chars)
        # Resampling (libsoxr) and the numpy checks release the GIL, so the clips of a list
        # are conditioned on several cores (``prepare_many``); 1 = in the calling thread.
        self.prepare_threads = max(1, prepare_threads if prepare_threads is not None else usable_cpus())
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._decode_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike | None = None,
        engine: str = "ort",
        precision: str = "fp32",
        device: str | None = None,
        verify: bool = True,
        max_batch: int = 32,
        prepare_threads: int | None = None,
        **engine_kwargs,
    ) -> "EmotionRecognizer":
        """Load a model folder (None: the bundled weights) on ``engine`` ('ort', 'torch',
        'trt') at ``precision`` ('fp32', 'fp16', 'int8'). ``prepare_threads`` (default: the
        CPU count) decode and resample the clips of one ``predict`` call in parallel.

        Raises:
            ModelFolderError: missing files, malformed spec or a hash mismatch.
            EngineUnavailableError: the engine, device or precision cannot run here.
        """
        spec = load_spec(model_dir, verify=verify)
        return cls(spec, create_engine(engine, spec, precision=precision, device=device, **engine_kwargs), max_batch, prepare_threads)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def sample_rate(self) -> int:
        return self.spec.frontend.sample_rate

    # ------------------------------------------------------------------ stages

    def prepare(self, audio: AudioInput | None = None, text: str | None = None, sample_rate: int | None = None, name: str | None = None) -> Item:
        """Decode, resample and validate one item; raises ``EmotionError`` subclasses."""
        return self._finish(self._read(audio, text, sample_rate, name), text, name)

    def _read(self, audio: AudioInput | None, text: str | None, sample_rate: int | None, name: str | None) -> tuple | None:
        """``prepare``'s first step: the decoded audio (``read_audio``), or None."""
        if audio is None and text is None:
            raise EmotionError(f"{name or 'item'}: give audio, text or both")
        if audio is None:
            return None
        if isinstance(audio, np.ndarray):
            return read_audio(audio, sample_rate, name)
        # One decoder at a time (prepare_many's docstring says why): concurrent requests of
        # the server, each prepared on a pool thread, then queue here instead of contending.
        with self._decode_lock:
            return read_audio(audio, sample_rate, name)

    def _finish(self, read: tuple | None, text: str | None, name: str | None) -> Item:
        """``prepare``'s second step: condition the audio, check the text."""
        clip = None
        if read is not None:
            samples, rate, label = read
            clip = condition_audio(samples, rate, self.spec.frontend, label)
        if text is not None:
            self.encoder.check(text, f"{name} text" if name else "text")
        return Item(clip, text)

    def build_feed(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
        """Padded engine inputs for ``items``; absent modalities get placeholder inputs
        and a 0 flag (the model substitutes its learned "missing" embedding)."""
        cfg = self.spec.frontend
        placeholder = np.zeros(cfg.min_samples, dtype=np.float32)
        clips = [it.audio if it.audio is not None else placeholder for it in items]
        audio, audio_lengths = pad_batch(clips, min_len=cfg.min_samples)
        tokens, token_lengths = self.encoder.encode([it.text if it.text is not None else "" for it in items])
        return {
            "audio": audio,
            "audio_lengths": audio_lengths,
            "tokens": tokens,
            "token_lengths": token_lengths,
            "has_audio": np.array([it.audio is not None for it in items], dtype=np.float32),
            "has_text": np.array([it.text is not None for it in items], dtype=np.float32),
        }

    def run(self, items: Sequence[Item]) -> list[Prediction]:
        """Predictions for already-prepared items, in their order, ``max_batch`` per engine
        call (grouped by audio length to keep padding small)."""
        order = sorted(range(len(items)), key=lambda i: 0 if items[i].audio is None else items[i].audio.size)
        results: list[Prediction | None] = [None] * len(items)
        sr = self.sample_rate
        for start in range(0, len(order), self.max_batch):
            idx = order[start : start + self.max_batch]
            chunk = [items[i] for i in idx]
            feed = self.build_feed(chunk)
            logits = self.engine.infer(feed)
            durations = [None if it.audio is None else round(it.audio.size / sr, 4) for it in chunk]
            preds = postprocess(logits, self.labels, feed["has_audio"], feed["has_text"], self.spec.temperature, durations)
            for i, p in zip(idx, preds):
                results[i] = p
        return results  # type: ignore[return-value]

    # -------------------------------------------------------------------- API

    def predict(
        self,
        audio: AudioInput | Sequence[AudioInput | None] | None = None,
        text: str | Sequence[str | None] | None = None,
        sample_rate: int | None = None,
    ) -> Prediction | list[Prediction]:
        """Emotion of one item, or of each item of lists (batched).

        Args:
            audio: a float or int16 array, a file path, or encoded bytes (WAV/FLAC/OGG);
                or a list of those (None entries for text-only items).
            text: the transcript, or a list aligned with ``audio`` (None for no text).
            sample_rate: rate of array inputs (files and bytes carry their own).

        Returns:
            A ``Prediction`` (``.label``, ``.scores``) for one item, a list for lists.

        Raises:
            AudioError / TextError / EmotionError: naming the bad item and what is accepted.
        """
        batched = isinstance(audio, (list, tuple)) or isinstance(text, (list, tuple))
        if not batched:
            return self.run([self.prepare(audio, text, sample_rate)])[0]
        n = len(audio) if isinstance(audio, (list, tuple)) else len(text)  # type: ignore[arg-type]
        audios = list(audio) if isinstance(audio, (list, tuple)) else [audio] * n if audio is None else None
        texts = list(text) if isinstance(text, (list, tuple)) else [None] * n if text is None else None
        if audios is None or texts is None:
            raise EmotionError("when one of audio/text is a list, the other must be a list of the same length or None")
        if len(audios) != len(texts):
            raise EmotionError(f"audio has {len(audios)} items but text has {len(texts)}")
        args = [(a, t, sample_rate, f"item {i} ({a})" if isinstance(a, (str, Path)) else f"item {i}") for i, (a, t) in enumerate(zip(audios, texts))]
        return self.run(self.prepare_many(args))

    def prepare_many(self, args: Sequence[tuple]) -> list[Item]:
        """``prepare(*a)`` for each ``(audio, text, sample_rate, name)`` tuple; the first
        failing item (in order) raises, as it would one by one.

        With more than one clip and ``prepare_threads > 1``, the clips are decoded here,
        one after another, and then resampled and checked on the thread pool. Decoding on
        the pool was slower than not threading at all: libsndfile reads in-memory audio
        through Python callbacks, and two threads doing that fight for the GIL (32 WAV
        clips of 3 s decoded in one thread and in two: ``pytest benchmarks --benchmark-only
        -k decode_32``, 6.5 vs 13.3 ms on the build machine).
        """
        clips = sum(1 for a in args if a[0] is not None)
        if self.prepare_threads == 1 or clips < 2:
            return [self.prepare(*a) for a in args]
        reads: list[tuple[tuple | None, Exception | None]] = []
        for audio, text, sample_rate, name in args:
            try:
                reads.append((self._read(audio, text, sample_rate, name), None))
            except Exception as e:  # raised by finish() below, in item order
                reads.append((None, e))

        def finish(i: int) -> Item:
            read, error = reads[i]
            if error is not None:
                raise error
            return self._finish(read, args[i][1], args[i][3])

        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.prepare_threads, thread_name_prefix="emotech-prepare")
            pool = self._pool
        return list(pool.map(finish, range(len(args))))

    def describe(self) -> dict:
        """Labels, engine, precision, versions and hashes (the server's ``/v1/model``)."""
        return {
            "labels": list(self.labels),
            "model_dir": str(self.spec.root),
            **self.engine.describe(),
            "versions": self.spec.raw.get("versions", {}),
            "files": self.spec.files,
            "frontend": self.spec.frontend.to_dict(),
            "max_tokens": self.spec.max_tokens,
            "max_text_chars": self.spec.max_text_chars,
        }

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.engine.close()


__all__ = ["EmotionRecognizer", "Item", "Prediction", "TextError"]
