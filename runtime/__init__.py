"""EmoTech runtime: speech emotion recognition without PyTorch.

    from runtime import EmotionRecognizer
    rec = EmotionRecognizer.load()            # bundled weights on ONNX Runtime
    print(rec.predict(audio="clip.wav", text="what a day").label)
"""

from runtime.errors import (
    AudioDecodeError,
    AudioError,
    AudioTooLargeError,
    AudioTooLongError,
    EmotionError,
    EngineUnavailableError,
    ModelFolderError,
    TextError,
)
from runtime.postprocess import Prediction
from runtime.recognizer import EmotionRecognizer

__version__ = "0.1.0"

__all__ = [
    "AudioDecodeError",
    "AudioError",
    "AudioTooLargeError",
    "AudioTooLongError",
    "EmotionError",
    "EmotionRecognizer",
    "EngineUnavailableError",
    "ModelFolderError",
    "Prediction",
    "TextError",
]
