"""Exception types raised by the runtime. All derive from ``EmotionError``.

Each message names what was wrong with the input and what is accepted, so the CLI and the
server can show it to a user as it is.
"""

from __future__ import annotations


class EmotionError(Exception):
    """Base class of every error this package raises on purpose."""


class AudioError(EmotionError, ValueError):
    """The audio could not be used: undecodable, unsupported, empty, silent, non-finite,
    too short or too long."""


class AudioTooLargeError(AudioError):
    """The audio would decode to more than ``runtime.audio.MAX_DECODED_SAMPLES`` samples."""


class AudioTooLongError(AudioError):
    """The audio is longer than the caller's limit (``runtime.audio.decode``'s ``max_seconds``)."""

    def __init__(self, message: str, seconds: float, max_seconds: float):
        super().__init__(message)
        self.seconds, self.max_seconds = seconds, max_seconds


class AudioDecodeError(AudioError):
    """The bytes or file are not audio in a supported container (WAV, FLAC, OGG)."""


class TextError(EmotionError, ValueError):
    """The transcript is not a string, or is longer than the model accepts."""


class ModelFolderError(EmotionError):
    """The model folder is missing files, has a malformed spec, or fails its hash check."""


class EngineUnavailableError(EmotionError):
    """The requested engine or precision cannot run here (missing package, GPU or variant)."""
