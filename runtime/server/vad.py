"""Voice-activity detection for ``/v1/stream``: Silero VAD on ONNX Runtime, streamed.

``SileroVad`` scores 32-ms windows (512 samples at 16 kHz) with the vendored
``weights/silero_vad/silero_vad_16k_op15.onnx`` (MIT; see its README for origin and
hash). The ONNX session is stateless — the recurrent state and the 64-sample context
travel with each stream — so one session serves every connection.

``Segmenter`` turns the probabilities into utterances with silero's hysteresis rule
(``get_speech_timestamps``): speech starts at a window scoring >= ``threshold``; it
ends once the score has stayed below ``neg_threshold`` for ``min_silence_ms``;
utterances shorter than ``min_speech_ms`` are dropped, and each is padded by ``pad_ms``
on both sides. It works online: segments are emitted as soon as their end is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import ModelFolderError

VAD_MODEL_PARTS = ("silero_vad", "silero_vad_16k_op15.onnx")  # inside the weights package
VAD_SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
SAMPLE_RATE = 16000  # the only rate this model variant accepts
WINDOW = 512  # samples scored per call (32 ms)
CONTEXT = 64  # samples of the previous window prepended to each call
MAX_SILENCE_MS = 10_000  # a longer pause is no longer "inside one utterance"
MAX_PAD_MS = 1_000  # more padding only adds silence to every utterance


def vad_model_path() -> Path | None:
    """The bundled Silero VAD model file (None when the weights package is not installed)."""
    from runtime.spec import weights_path

    return weights_path(*VAD_MODEL_PARTS)


@dataclass(frozen=True)
class VadConfig:
    """Segmentation parameters (silero's defaults, except a longer ``min_silence_ms``
    so that a short pause inside one utterance does not split it)."""

    threshold: float = 0.5  # a window scoring >= this starts (or continues) speech
    neg_threshold: float | None = None  # below this counts as silence; None: threshold - 0.15
    min_speech_ms: int = 250  # shorter utterances are dropped
    min_silence_ms: int = 300  # silence that ends an utterance
    pad_ms: int = 30  # added before and after each utterance
    max_speech_s: float = 30.0  # longer utterances are cut here (the model's max clip length)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold must be in (0, threshold], got {self.neg_threshold}")
        if self.min_speech_ms < 0 or self.min_silence_ms < 0 or self.pad_ms < 0:
            raise ValueError("min_speech_ms, min_silence_ms and pad_ms must be >= 0")
        if self.min_silence_ms > MAX_SILENCE_MS or self.pad_ms > MAX_PAD_MS:
            raise ValueError(f"min_silence_ms must be <= {MAX_SILENCE_MS} and pad_ms <= {MAX_PAD_MS}, "
                             f"got {self.min_silence_ms} and {self.pad_ms}")
        if self.max_speech_s * 1000 <= self.min_speech_ms:
            raise ValueError("max_speech_s must be longer than min_speech_ms")

    @property
    def exit_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


class SileroVad:
    """The Silero VAD ONNX model: speech probability per 512-sample window."""

    def __init__(self, path: str | Path | None = None, verify: bool = True):
        """Load the model from ``path`` (None: the bundled copy; ``verify`` checks its sha256)."""
        import onnxruntime as ort

        from runtime.spec import sha256_file

        bundled = vad_model_path()
        path = Path(path) if path is not None else bundled
        if path is None or not path.is_file():
            raise ModelFolderError(f"VAD model not found: {path or 'the emotech_weights package is not installed'} (see weights/silero_vad/README.md)")
        if verify and path == bundled and sha256_file(path) != VAD_SHA256:
            raise ModelFolderError(f"{path} does not match its sha256 {VAD_SHA256}")
        opts = ort.SessionOptions()
        # One window is ~0.3 ms of work: threads would cost more than they save.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(recurrent state, context) for a new stream."""
        return np.zeros((2, 1, 128), dtype=np.float32), np.zeros(CONTEXT, dtype=np.float32)

    def window(self, samples: np.ndarray, state: np.ndarray, context: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Score one ``WINDOW``-sample window; returns (probability, state, context)."""
        x = np.concatenate([context, samples]).astype(np.float32, copy=False)[None]
        prob, state = self.session.run(None, {"input": x, "state": state, "sr": self._sr})
        return float(prob[0, 0]), state, x[0, -CONTEXT:].copy()

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Per-window probabilities of a whole clip (the last window zero-padded)."""
        state, context = self.initial_state()
        n = -(-audio.size // WINDOW)
        padded = np.zeros(n * WINDOW, dtype=np.float32)
        padded[: audio.size] = audio
        out = np.empty(n, dtype=np.float32)
        for i in range(n):
            out[i], state, context = self.window(padded[i * WINDOW : (i + 1) * WINDOW], state, context)
        return out


@dataclass(frozen=True)
class Segment:
    """One utterance found in a stream."""

    index: int  # 0, 1, ... in the order the stream produced them
    start: int  # first sample (stream time, at 16 kHz)
    end: int  # one past the last sample
    audio: np.ndarray  # float32 samples [start, end)

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE


class Segmenter:
    """Online utterance segmentation of one stream (not thread-safe; one per stream)."""

    def __init__(self, vad: SileroVad, config: VadConfig = VadConfig()):
        self.vad = vad
        self.cfg = config
        ms = SAMPLE_RATE // 1000
        self._pad = config.pad_ms * ms
        self._min_speech = config.min_speech_ms * ms
        self._min_silence = config.min_silence_ms * ms
        self._max_speech = int(config.max_speech_s * SAMPLE_RATE) - 2 * self._pad - WINDOW
        self._state, self._context = vad.initial_state()
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet scored (< WINDOW)
        self._buffer = np.zeros(0, dtype=np.float32)  # kept audio, starting at stream sample _buf_start
        self._buf_start = 0
        self._scored = 0  # samples scored so far (stream time)
        self._speech_start: int | None = None  # start of the utterance in progress
        self._silence_start = 0  # where the current run of silence began (0: none)
        self._last_end = 0  # end of the previous emitted segment (padding never crosses it)
        self._count = 0

    @property
    def position(self) -> int:
        """Samples received so far."""
        return self._scored + self._pending.size

    @property
    def in_speech(self) -> bool:
        return self._speech_start is not None

    def feed(self, samples: np.ndarray) -> list[Segment]:
        """Add float32 samples in [-1, 1]; return the utterances that ended in them."""
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        self._buffer = np.concatenate([self._buffer, data[: data.size - data.size % WINDOW]])
        out: list[Segment] = []
        n = data.size // WINDOW
        for i in range(n):
            seg = self._step(data[i * WINDOW : (i + 1) * WINDOW])
            if seg is not None:
                out.append(seg)
        self._pending = data[n * WINDOW :].copy()
        self._trim()
        return out

    def flush(self) -> list[Segment]:
        """End of stream: close the utterance in progress (if long enough)."""
        self._buffer = np.concatenate([self._buffer, self._pending])
        end = self._scored + self._pending.size
        self._pending = np.zeros(0, dtype=np.float32)
        out = []
        if self._speech_start is not None:
            speech_end = self._silence_start or end  # where the speech stopped, if it did
            if speech_end - self._speech_start > self._min_speech:  # the rule _step applies
                out.append(self._emit(self._speech_start, speech_end, limit=end))
        self._speech_start, self._silence_start = None, 0
        return out

    # ----------------------------------------------------------------- internals

    def _step(self, window: np.ndarray) -> Segment | None:
        cur = self._scored
        prob, self._state, self._context = self.vad.window(window, self._state, self._context)
        self._scored += WINDOW
        cfg = self.cfg
        if prob >= cfg.threshold:
            self._silence_start = 0
            if self._speech_start is None:
                self._speech_start = cur
                return None
        if self._speech_start is None:
            return None
        if cur - self._speech_start > self._max_speech:
            # Cut over-long speech where it stands; the rest continues as a new utterance.
            seg = self._emit(self._speech_start, cur, limit=cur, pad_end=False)
            self._speech_start, self._silence_start = cur, 0
            return seg
        if prob < cfg.exit_threshold:
            if not self._silence_start:
                self._silence_start = cur
            if cur - self._silence_start >= self._min_silence:
                start, end = self._speech_start, self._silence_start
                self._speech_start, self._silence_start = None, 0
                if end - start > self._min_speech:
                    return self._emit(start, end, limit=self._scored)
        return None

    def _emit(self, start: int, end: int, limit: int, pad_end: bool = True) -> Segment:
        start = max(self._last_end, start - self._pad, self._buf_start)
        end = min(limit, end + self._pad) if pad_end else end
        audio = self._buffer[start - self._buf_start : end - self._buf_start].copy()
        self._last_end = end
        seg = Segment(self._count, start, end, audio)
        self._count += 1
        return seg

    def _trim(self) -> None:
        """Drop kept audio no future segment can include (bounds memory on long streams)."""
        keep_from = self._speech_start if self._speech_start is not None else self._scored
        keep_from = max(self._last_end, keep_from - self._pad)
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buf_start = keep_from


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian PCM16 bytes -> float32 in [-1, 1); raises ``ValueError`` on odd length."""
    if len(data) % 2:
        raise ValueError(f"PCM16 frames need an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
