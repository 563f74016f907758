"""Speech recognition plug-ins: a transcript for an utterance whose caller gave none.

A transcriber is any object with one method, ``transcribe(audio) -> str``: float32 mono
samples in [-1, 1] at 16 kHz in, the recognised words out ('' when it heard none). The
registry maps the names ``--asr`` accepts to factories; ``pocketsphinx`` is the one that
ships (``pip install 'emotech[asr]'``: its wheel carries an English acoustic and language
model, offline). Others plug in as a class, e.g. faster-whisper::

    class Whisper:
        name = "faster-whisper"  # results say transcript_source "asr:faster-whisper"

        def __init__(self, size="base.en"):
            from faster_whisper import WhisperModel
            self.model = WhisperModel(size, device="cpu", compute_type="int8")

        def transcribe(self, audio):
            segments, _ = self.model.transcribe(audio, language="en", beam_size=1)
            return " ".join(s.text.strip() for s in segments)

    rec = EmotionRecognizer.load(asr=Whisper())          # or: register("whisper", Whisper)

(docs/asr.md has Vosk and sherpa-onnx too.) The recognizer calls ``transcribe`` from the
thread that prepares the item (a server's decode threads), so an implementation that is
not thread-safe keeps one decoder per thread, as ``PocketSphinx`` does.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from runtime.errors import EmotionError

SAMPLE_RATE = 16000  # Hz: what every transcriber receives


@runtime_checkable
class Transcriber(Protocol):
    """Turns one utterance's audio into text."""

    def transcribe(self, audio: np.ndarray) -> str:
        """float32 mono samples in [-1, 1] at 16 kHz -> the recognised words ('' for none)."""
        ...


class TranscriptionError(EmotionError):
    """A transcriber failed on an utterance (a fault of the recogniser, not of the input)."""


def _pocketsphinx() -> Transcriber:
    from runtime.asr.sphinx import PocketSphinx

    return PocketSphinx()


# name -> factory; ``--asr`` offers "none" and these names
TRANSCRIBERS: dict[str, Callable[[], Transcriber]] = {"pocketsphinx": _pocketsphinx}


def register(name: str, factory: Callable[[], Transcriber]) -> None:
    """Make ``factory`` loadable as ``asr=name`` (and, if registered before the parser is
    built, as ``--asr name``)."""
    if not name or name == "none" or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"a transcriber name is letters, digits, '-' or '_' and not 'none', got {name!r}")
    TRANSCRIBERS[name] = factory


def choices() -> list[str]:
    """What ``--asr`` accepts."""
    return ["none", *TRANSCRIBERS]


def load_transcriber(asr: str | Transcriber | None) -> tuple[Transcriber | None, str | None]:
    """``(transcriber, source)`` for a registry name, a transcriber object, or None/'none'.

    ``source`` is what results carry as ``transcript_source``: ``"asr:<name>"``, the name
    being the registry key, or an object's ``name`` attribute (else its class name).

    Raises:
        ValueError: an unknown name, or an object without a ``transcribe`` method.
        EngineUnavailableError: the transcriber's package is not installed.
    """
    if asr is None or asr == "none":
        return None, None
    if isinstance(asr, str):
        if asr not in TRANSCRIBERS:
            raise ValueError(f"asr must be one of {choices()}, got {asr!r}")
        return TRANSCRIBERS[asr](), f"asr:{asr}"
    if not isinstance(asr, Transcriber):
        raise ValueError(f"asr must be a name in {choices()} or an object with a transcribe(audio) method, got {type(asr).__name__}")
    return asr, f"asr:{getattr(asr, 'name', None) or type(asr).__name__}"


def add_asr_argument(parser: argparse.ArgumentParser) -> None:
    """``--asr``, shared by ``runtime.predict`` and ``runtime.serve``."""
    parser.add_argument("--asr", default="none", choices=choices(),
                        help="speech recogniser that supplies the transcript when none is given "
                             "(pocketsphinx: pip install 'emotech[asr]'; see docs/asr.md for its accuracy)")


__all__ = ["SAMPLE_RATE", "TRANSCRIBERS", "Transcriber", "TranscriptionError", "add_asr_argument", "choices", "load_transcriber",
           "register"]
