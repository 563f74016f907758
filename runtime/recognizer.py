"""``EmotionRecognizer``: audio and/or transcript in, calibrated emotion scores out.

    from runtime import EmotionRecognizer
    rec = EmotionRecognizer.load()                      # bundled weights, ONNX Runtime
    rec.predict(audio="clip.wav", text="I can't believe it")
    rec.predict(audio=[a, b, c], sample_rate=16000)    # batched engine calls

Pipeline: ``prepare`` (decode, downmix, resample, validate; check text) ->
``build_feed`` (pad audio, tokenise in one batch) -> ``Engine.infer`` ->
``postprocess`` (per-mode temperature, softmax, labels).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.asr import SAMPLE_RATE as ASR_SAMPLE_RATE
from runtime.asr import Transcriber, TranscriptionError, load_transcriber
from runtime.audio import AudioInput, check_clip, pad_batch, read_audio, resample, to_model_rate
from runtime.engines import AUTO, candidates, create_engine
from runtime.engines.base import MODALITY_OUTPUTS, OUTPUT, Engine
from runtime.errors import EmotionError, EngineUnavailableError, TextError
from runtime.postprocess import Prediction, postprocess
from runtime.spec import ModelSpec, load_spec
from runtime.text import TextEncoder

logger = logging.getLogger(__name__)

WEIGHTED_AVERAGE = "weighted_average"  # spec.json fusion.method of a folder whose audio weight can be re-set at load time


def batch_size(max_batch: object) -> int:
    """``max_batch`` as an int, or ValueError: an int (numpy's too, not a bool) >= 1."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
    return int(max_batch)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_audio_weight(spec: ModelSpec, audio_weight: object, engine: Engine | None = None) -> None:
    """Raise unless ``audio_weight`` (None: no re-fusion) can re-fuse ``spec``'s model on ``engine``.

    Raises:
        ValueError: not a number in [0, 1], or the folder's fusion is not a weighted average
            of the two modalities' probabilities (spec.json ``fusion.method``).
        EngineUnavailableError: ``engine`` does not return both per-modality outputs.
    """
    if audio_weight is None:
        return
    if isinstance(audio_weight, bool) or not isinstance(audio_weight, (int, float, np.floating)) or not 0.0 <= audio_weight <= 1.0:
        raise ValueError(f"audio_weight must be a number in [0, 1], got {audio_weight!r}")
    fusion = spec.raw.get("fusion")
    method = fusion.get("method") if isinstance(fusion, dict) else None
    if method != WEIGHTED_AVERAGE:
        raise ValueError(f"audio_weight re-fuses a weighted average of the two modalities' probabilities, and {spec.root} "
                         f"does not fuse that way (spec.json fusion.method is {method!r}, not {WEIGHTED_AVERAGE!r}); leave audio_weight unset")
    if engine is not None and not set(MODALITY_OUTPUTS.values()) <= set(engine.extra_outputs):
        raise EngineUnavailableError(f"audio_weight needs the per-modality outputs {', '.join(MODALITY_OUTPUTS.values())}, which "
                                     f"engine '{engine.name}' does not return; use --engine ort")


@dataclass(frozen=True)
class Item:
    """One validated request item, ready for batching."""

    audio: np.ndarray | None  # float32 mono at the model's sample rate, or None
    text: str | None  # transcript, or None
    text_source: str | None = None  # "caller", "asr:<name>", or None when there is no text


class EmotionRecognizer:
    """A model folder loaded on one engine."""

    # Padded audio per engine call on a CPU engine (seconds): a batch holding more is split
    # into calls of up to this much (a clip longer than it runs alone), because beyond it the
    # MFCC graph's intermediates outgrow the CPU caches (docs/benchmarks.md, "Engine-call
    # size"). GPU engines take whole batches of up to ``max_batch``.
    max_call_audio_seconds = 96.0

    def __init__(self, spec: ModelSpec, engine: Engine, max_batch: int = 32, prepare_threads: int | None = None,
                 asr: str | Transcriber | None = None, audio_weight: float | None = None):
        max_batch = batch_size(max_batch)
        check_audio_weight(spec, audio_weight, engine)
        # re-fuses audio+text items as w * p_audio + (1 - w) * p_text (None: the graph's own fusion)
        self.audio_weight = audio_weight
        # the transcriber that fills in a missing transcript (runtime.asr), and the
        # transcript_source its texts carry
        self.asr, self.asr_source = load_transcriber(asr)
        self.spec = spec
        self.engine = engine
        self.max_batch = max_batch
        self.encoder = TextEncoder(spec.require(spec.tokenizer_file, "the text encoder"), spec.max_tokens, spec.max_text_chars)
        # Resampling (libsoxr) releases the GIL, so the clips of a list are resampled on
        # several cores (``prepare_many``); 1 = all in the calling thread.
        self.prepare_threads = max(1, prepare_threads if prepare_threads is not None else usable_cpus())
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        self.engine_notes: tuple[str, ...] = ()  # engine="auto": why each faster engine was skipped

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike | None = None,
        engine: str = "auto",
        precision: str = "fp32",
        device: str | None = None,
        verify: bool = True,
        max_batch: int = 32,
        prepare_threads: int | None = None,
        asr: str | Transcriber | None = None,
        audio_weight: float | None = None,
        **engine_kwargs,
    ) -> "EmotionRecognizer":
        """Load a model folder on ``engine`` at ``precision`` ('fp32', 'fp16', 'int8').

        Args:
            model_dir: the model folder; None: ``$EMOTECH_MODEL_DIR`` if set, else the
                bundled model (``runtime.spec.resolve_model_dir``).
            engine: 'auto' (TensorRT, else PyTorch on CUDA, else ONNX Runtime on CUDA,
                else on the CPU), 'ort', 'torch' or 'trt'.
            device: 'cpu', 'cuda' or 'cuda:N'; None: ``runtime.engines.default_device``.
            max_batch: clips per engine call (the TensorRT profile's largest batch).
            prepare_threads: threads that decode and resample the clips of one
                ``predict`` call (default: the usable CPU count).
            asr: a ``runtime.asr`` name such as 'pocketsphinx', or any object with a
                ``transcribe(audio)`` method (default None: off); it transcribes the
                audio of items given without text, and results carry its ``transcript``.
            audio_weight: for a folder whose spec.json ``fusion.method`` is "weighted_average"
                (a late-fusion zoo folder), the weight ``w`` of the audio probabilities in
                ``w * p_audio + (1 - w) * p_text`` for items with both modalities, in place of
                the fitted ``fusion.audio_weight`` the graph applies (default None: that one).
                Needs an engine that returns the per-modality outputs (ONNX Runtime).
            engine_kwargs: passed to the engine (e.g. ``threads`` for ONNX Runtime).

        Raises:
            ModelFolderError: no model folder, missing files, malformed spec or a hash mismatch.
            EngineUnavailableError: the engine, device or precision cannot run here.
            ValueError: an engine, precision, device or asr name that does not exist, a
                ``max_batch`` below 1, a negative ``threads`` (0 or None: the default), or an
                ``audio_weight`` outside [0, 1] or for a folder without weighted late fusion.
        """
        spec = load_spec(model_dir, verify=verify)
        max_batch = batch_size(max_batch)  # before an engine is built for it
        check_audio_weight(spec, audio_weight)
        transcriber = load_transcriber(asr)  # before the engine: a missing package fails fast
        if engine != AUTO:
            rec = cls(spec, cls._engine(spec, engine, precision, device, max_batch, engine_kwargs), max_batch, prepare_threads,
                      audio_weight=audio_weight)
            rec.asr, rec.asr_source = transcriber
            return rec
        notes: list[str] = []
        last: Exception | None = None
        for name, dev, skip in candidates(device):
            if skip:
                notes.append(f"{name}/{dev}: skipped ({skip})")
                continue
            # only ONNX Runtime takes the CPU-side options (threads, spin) on auto
            kwargs = engine_kwargs if name == "ort" else {}
            try:
                rec = cls(spec, cls._engine(spec, name, precision, dev, max_batch, kwargs), max_batch, prepare_threads,
                          audio_weight=audio_weight)
            except (EmotionError, ImportError, OSError, RuntimeError) as e:
                notes.append(f"{name}/{dev}: failed ({type(e).__name__}: {e})")
                last = e
                continue
            rec.asr, rec.asr_source = transcriber
            rec.engine_notes = tuple(notes)
            for note in notes:
                logger.info("engine %s", note)
            return rec
        raise EngineUnavailableError("no engine could load the model: " + "; ".join(notes)) from last

    @staticmethod
    def _engine(spec: ModelSpec, name: str, precision: str, device: str | None, max_batch: int, kwargs: dict) -> Engine:
        if name == "trt" and "profile" not in kwargs:
            # the TensorRT profile's batch range follows max_batch (else a batch above the
            # default profile's 32 would run as several engine calls)
            from runtime.trt_cache import Profile

            kwargs = {**kwargs, "profile": Profile.for_spec(spec, batch=(1, min(8, max_batch), max_batch))}
        return create_engine(name, spec, precision=precision, device=device, **kwargs)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def sample_rate(self) -> int:
        return self.spec.frontend.sample_rate

    # ------------------------------------------------------------------ stages

    def prepare(self, audio: AudioInput | None = None, text: str | None = None, sample_rate: int | None = None, name: str | None = None,
                *, max_seconds: float | None = None) -> Item:
        """Decode, resample and validate one item; raises ``EmotionError`` subclasses.
        With ``max_seconds``, longer audio is refused from its header, before it is decoded
        (``AudioTooLongError``)."""
        staged = self._to_model_rate(audio, text, sample_rate, name, max_seconds)
        return self._check(staged, text, name)

    def _to_model_rate(self, audio: AudioInput | None, text: str | None, sample_rate: int | None, name: str | None,
                       max_seconds: float | None = None) -> tuple | None:
        """``prepare``'s first step: ``(mono clip at the model's rate, label)``, or None."""
        if audio is None and text is None:
            raise EmotionError(f"{name or 'item'}: give audio, text or both")
        if audio is None:
            return None
        samples, rate, label = read_audio(audio, sample_rate, name, max_seconds)
        return to_model_rate(samples, rate, self.spec.frontend, label), label

    def _check(self, staged: tuple | None, text: str | None, name: str | None) -> Item:
        """``prepare``'s second step: check and trim the clip (``check_clip``), check the text.
        A transcript without words (an ASR's answer to silence: blank, or only characters
        the tokenizer drops, such as NUL or zero-width spaces) is no text: the model's
        learned "missing text" input, not an empty sequence it never saw in training."""
        clip = None if staged is None else check_clip(staged[0], self.spec.frontend, staged[1])
        source = None
        if text is not None:
            label = f"{name} text" if name else "text"
            if not self.encoder.has_words(self.encoder.check(text, label)):
                if clip is None:
                    raise TextError(f"{label} has no words and there is no audio; give audio, or a transcript with words")
                text = None
            else:
                source = "caller"
        if text is None and clip is not None and self.asr is not None:
            text = self._transcribe(clip, name)
            source = self.asr_source if text is not None else None
        return Item(clip, text, source)

    def _transcribe(self, clip: np.ndarray, name: str | None) -> str | None:
        """The transcriber's words for a checked clip, cut to the model's text limit at a
        word boundary; None when it heard no words."""
        audio = resample(clip, self.sample_rate, ASR_SAMPLE_RATE)
        try:
            text = self.asr.transcribe(audio)
        except Exception as e:
            raise TranscriptionError(f"{name or 'audio'}: the {self.asr_source} transcriber failed: {type(e).__name__}: {e}") from e
        if not isinstance(text, str):
            raise TranscriptionError(f"{name or 'audio'}: the {self.asr_source} transcriber returned {type(text).__name__}, not str")
        text = " ".join(text.split())
        if len(text) > self.encoder.max_chars:
            text = text[: self.encoder.max_chars + 1].rsplit(" ", 1)[0][: self.encoder.max_chars]
        try:
            self.encoder.check(text, f"the {self.asr_source} transcript")
        except TextError as e:
            raise TranscriptionError(f"{name or 'audio'}: {e}") from e
        return text if self.encoder.has_words(text) else None

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

    def calls(self, items: Sequence[Item]) -> list[list[int]]:
        """How ``run`` splits ``items`` into engine calls: indices sorted by audio length (to
        keep padding small), at most ``max_batch`` per call and, on a CPU engine, at most
        ``max_call_audio_seconds`` of padded audio."""
        size = [0 if it.audio is None else it.audio.size for it in items]
        on_cpu = str(self.engine.device).split(":")[0].strip().lower() == "cpu"  # "cpu", "cpu:0", torch.device("cpu")
        limit = self.max_call_audio_seconds * self.sample_rate if on_cpu else float("inf")
        floor = self.spec.frontend.min_samples  # what build_feed pads every clip to, at least
        chunks: list[list[int]] = []
        for i in sorted(range(len(items)), key=size.__getitem__):
            chunk = chunks[-1] if chunks else None
            if chunk is None or len(chunk) >= self.max_batch or (len(chunk) + 1) * max(size[i], floor) > limit:
                chunks.append([i])  # ascending sizes: item i sets the call's padded length
            else:
                chunk.append(i)
        return chunks

    def run(self, items: Sequence[Item]) -> list[Prediction]:
        """Predictions for already-prepared items, in their order, in the engine calls
        ``calls`` makes of them."""
        self._check_open()
        results: list[Prediction | None] = [None] * len(items)
        sr = self.sample_rate
        for idx in self.calls(items):
            chunk = [items[i] for i in idx]
            feed = self.build_feed(chunk)
            outputs = self.engine.infer_outputs(feed)
            own = {m: outputs[name] for m, name in MODALITY_OUTPUTS.items() if name in outputs}
            durations = [None if it.audio is None else round(it.audio.size / sr, 4) for it in chunk]
            preds = postprocess(
                outputs[OUTPUT], self.labels, feed["has_audio"], feed["has_text"], self.spec.temperature, durations, self.spec.uncertain_below,
                self.spec.prior_log_odds, modality_logits=own or None, audio_weight=self.audio_weight,
            )  # fmt: skip
            for i, p in zip(idx, preds):
                results[i] = replace(p, transcript=items[i].text, transcript_source=items[i].text_source) if items[i].text else p
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

        With more than one clip and ``prepare_threads > 1``, the clips are decoded and
        resampled on the thread pool (libsoxr works without the GIL, and so does most of
        libsndfile's FLAC/OGG decoding), and then checked and trimmed here, in order: many
        short numpy calls, which more threads only slow down with GIL hand-overs
        (docs/benchmarks.md, "Preparing a batch"; ``pytest benchmarks --benchmark-only -k "decode_32 or check_32"``).
        """
        clips = sum(1 for a in args if a[0] is not None)
        if self.prepare_threads == 1 or clips < 2:
            return [self.prepare(*a) for a in args]
        with self._pool_lock:
            self._check_open()  # under the lock close() takes: never make the pool again after it
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.prepare_threads, thread_name_prefix="emotech-prepare")
            pool = self._pool
        jobs = [pool.submit(self._to_model_rate, *a) for a in args]
        items = []
        try:
            for (_, text, _, name), job in zip(args, jobs):
                staged = job.result()
                items.append(self._check(staged, text, name))
        finally:  # on an error, drop the jobs not started (at most prepare_threads still run)
            for job in jobs[len(items) :]:
                job.cancel()
        return items

    def describe(self) -> dict:
        """Labels, engine, precision, versions and hashes (the server's ``/v1/model``)."""
        return {
            "labels": list(self.labels),
            "model_dir": str(self.spec.root),
            **self.engine.describe(),
            "versions": self.spec.raw.get("versions", {}),
            "files": self.spec.files,
            "missing_files": sorted(n for n in self.spec.files if not self.spec.path(n).is_file()),  # a pruned folder's
            "frontend": self.spec.frontend.to_dict(),
            "max_tokens": self.spec.max_tokens,
            "max_text_chars": self.spec.max_text_chars,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this EmotionRecognizer is closed: load a new one")

    def close(self) -> None:
        """Release the engine and the thread pool; ``predict`` and ``run`` then raise RuntimeError."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.engine.close()


__all__ = ["EmotionRecognizer", "Item", "Prediction", "TextError"]
