"""CMU PocketSphinx 5 as a transcriber: offline, CPU, English, no download.

The ``pocketsphinx`` wheel ships a US-English acoustic model, a general trigram language
model and the CMU pronouncing dictionary; this class decodes with them as they are. It
is small and runs faster than real time on one CPU core, and is much less accurate than a
neural recogniser: docs/asr.md has its word error rate and speed on RAVDESS and its
effect on emotion accuracy.
"""

from __future__ import annotations

import threading

import numpy as np

from runtime.errors import EngineUnavailableError


class PocketSphinx:
    """``transcribe(audio)`` with PocketSphinx's bundled English model.

    A ``pocketsphinx.Decoder`` is not thread-safe, so each calling thread gets its own
    (loaded on the thread's first call).

    Args:
        **config: PocketSphinx options passed to every ``Decoder`` (e.g. ``hmm``, ``lm``,
            ``dict`` for another language's model; ``beam``); ``samprate`` is fixed at 16000.
    """

    name = "pocketsphinx"

    def __init__(self, **config):
        try:
            import pocketsphinx
        except ImportError as e:
            raise EngineUnavailableError(f"--asr pocketsphinx needs the pocketsphinx package: pip install 'emotech[asr]' ({e})") from e
        self._pocketsphinx = pocketsphinx
        self._config = {"loglevel": "FATAL", **config, "samprate": 16000}
        self._local = threading.local()
        self._decoder()  # a bad option or model path fails here, at load, not on the first utterance

    def _decoder(self):
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            decoder = self._local.decoder = self._pocketsphinx.Decoder(**self._config)
        return decoder

    def transcribe(self, audio: np.ndarray) -> str:
        """float32 mono samples in [-1, 1] at 16 kHz -> lower-case words ('' for none)."""
        pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
        decoder = self._decoder()
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp is not None else ""
