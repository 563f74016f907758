"""The engine interface: ``infer(feed) -> logits`` for the fused graph.

``Engine.infer`` checks input names, dtypes and shapes, then calls the backend's own
``_infer``. Engines only move tensors; turning logits into answers is
``runtime.postprocess``'s job, shared by every backend.
"""

from __future__ import annotations

import abc
import os

import numpy as np

from runtime.spec import ModelSpec

# name -> (dtype, rank) of each input of the fused graph
FUSED_INPUTS: dict[str, tuple[type, int]] = {
    "audio": (np.float32, 2),
    "audio_lengths": (np.int64, 1),
    "tokens": (np.int64, 2),
    "token_lengths": (np.int64, 1),
    "has_audio": (np.float32, 1),
    "has_text": (np.float32, 1),
}
OUTPUT = "logits"
# Optional outputs of a fused graph, declared in spec.json ``outputs``: each modality's own
# scores for every item, calibrated by that modality's temperature (a zoo folder's late fusion).
MODALITY_OUTPUTS = {"audio": "audio_logits", "text": "text_logits"}
PRECISIONS = ("fp32", "fp16", "int8")


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ("cpu", 0); ``"cuda"`` -> ("cuda", 0); ``"cuda:N"`` -> ("cuda", N).

    Raises:
        ValueError: any other string, naming the accepted forms.
    """
    if device == "cpu":
        return "cpu", 0
    if device == "cuda":
        return "cuda", 0
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", int(device[5:])
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


class Engine(abc.ABC):
    """One loaded model on one backend."""

    name: str = "base"

    def __init__(self, spec: ModelSpec, precision: str = "fp32", device: str = "cpu"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.spec = spec
        self.precision = precision
        self.device = device

    # The ``MODALITY_OUTPUTS`` of the graph that ``infer_outputs`` returns beside the logits
    # (set by a backend that can fetch them; none by default).
    extra_outputs: tuple[str, ...] = ()

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Logits ``(B, num_classes)`` float32 for a padded batch."""
        check_feed(feed)
        return self._infer(feed)

    def infer_outputs(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``logits`` and each of ``extra_outputs`` (each ``(B, num_classes)`` float32) for a padded batch."""
        check_feed(feed)
        return self._infer_outputs(feed)

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...

    def _infer_outputs(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {OUTPUT: self._infer(feed)}

    def describe(self) -> dict[str, str]:
        """Engine, precision, device and backend versions, for logs and ``/v1/model``."""
        return {"engine": self.name, "precision": self.precision, "device": self.device}

    def close(self) -> None:
        """Release backend resources (sessions, device buffers)."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tf32_setting(allowed: object = None) -> str:
    """How an NVIDIA GPU (Ampere and later) runs FP32 convolutions and matmuls, for
    ``describe()``: "allowed" means they may round inputs to TF32's 10-bit mantissa, the
    default of cuDNN, TensorRT and ONNX Runtime's CUDA provider, so "fp32" rows on such a GPU
    are not IEEE FP32 unless ``NVIDIA_TF32_OVERRIDE=0`` is set (which all of them obey).
    ``allowed``: the library's own switch, None where it has none to read."""
    if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
        return "off (NVIDIA_TF32_OVERRIDE=0)"
    if allowed is None:
        return "allowed (the library's default)"
    return "allowed" if str(allowed).strip().lower() in ("1", "true") else "off"


def check_feed(feed: dict[str, np.ndarray]) -> None:
    missing = set(FUSED_INPUTS) - set(feed)
    extra = set(feed) - set(FUSED_INPUTS)
    if missing or extra:
        raise ValueError(f"feed must have exactly {sorted(FUSED_INPUTS)}; missing {sorted(missing)}, unexpected {sorted(extra)}")
    batch = feed["audio"].shape[0]
    for name, (dtype, rank) in FUSED_INPUTS.items():
        a = feed[name]
        if a.dtype != dtype or a.ndim != rank:
            raise ValueError(f"input {name} must be {np.dtype(dtype).name} of rank {rank}, got {a.dtype} of shape {a.shape}")
        if a.shape[0] != batch:
            raise ValueError(f"input {name} has batch {a.shape[0]}, expected {batch}")
    # a length beyond its padded width makes the graph read past the row (undefined in TensorRT)
    for lengths, padded in (("audio_lengths", "audio"), ("token_lengths", "tokens")):
        width, n = feed[padded].shape[1], feed[lengths]
        if n.size and (n.min() < 0 or n.max() > width):
            raise ValueError(f"input {lengths} must be within 0..{width} (the width of {padded}), got {n.min()}..{n.max()}")
