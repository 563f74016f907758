"""The engine interface: ``infer(feed) -> logits`` for the fused graph.

``Engine.infer`` checks input names, dtypes and shapes, then calls the backend's own
``_infer``. Engines only move tensors; turning logits into answers is
``runtime.postprocess``'s job, shared by every backend.
"""

from __future__ import annotations

import abc

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
PRECISIONS = ("fp32", "fp16", "int8")


class Engine(abc.ABC):
    """One loaded model on one backend."""

    name: str = "base"

    def __init__(self, spec: ModelSpec, precision: str = "fp32", device: str = "cpu"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.spec = spec
        self.precision = precision
        self.device = device

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Logits ``(B, num_classes)`` float32 for a padded batch."""
        check_feed(feed)
        return self._infer(feed)

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...

    def describe(self) -> dict[str, str]:
        """Engine, precision, device and backend versions, for logs and ``/v1/model``."""
        return {"engine": self.name, "precision": self.precision, "device": self.device}

    def close(self) -> None:
        """Release backend resources (sessions, device buffers)."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
