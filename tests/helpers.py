"""Test helpers: data location, skip markers, synthetic audio and encoders."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("EMOTECH_DATA_ROOT") or REPO.parent / "shared" / "data")  # as export.data.default_data_root
BUNDLED = REPO / "weights" / "emotech"
TINY_MODEL_CONFIG = {
    "embed_dim": 16,
    "audio_cnn_channels": [4, 8, 8],
    "audio_lstm_hidden": 8,
    "audio_conv_channels": 8,
    "text_lstm_hidden": 8,
    "text_conv_channels": 8,
    "fusion_dim": 16,
}


def has_data() -> bool:
    return (DATA_ROOT / "ravdess").is_dir() and (DATA_ROOT / "text" / "goemotions_ekman").is_dir()


requires_data = pytest.mark.skipif(not has_data(), reason=f"real data not found at {DATA_ROOT} (../shared/data)")


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


requires_torch = pytest.mark.skipif(not has_torch(), reason="PyTorch not installed (pip install -e '.[export]')")


def speechlike(seconds: float, sr: int = 16000, seed: int = 0, f0: float = 140.0) -> np.ndarray:
    """A deterministic voiced signal: harmonics of a wobbling f0 with a syllable envelope
    and a little noise, peak 0.5. Not speech, but it exercises every front-end path."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    y = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    y = y * env + 0.02 * rng.standard_normal(t.size)
    return (0.5 * y / np.max(np.abs(y))).astype(np.float32)


def encode(audio: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    """Encode to WAV/FLAC/OGG bytes with libsndfile."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


# The audio-block option other than the default (the first shipped model's time pooling),
# so the tests of the defaults also run on it (padding invariance, missing modality, ONNX).
TINY_VARIANT = {"audio_cnn_time_pools": [2, 2, 2]}


def build_tiny_model(seed: int = 0, **overrides):
    """A seeded tiny EmoTech (eval mode) with non-trivial BatchNorm statistics and
    "missing" vectors, so masking and modality bugs show in its outputs; ``overrides``
    replace ``TINY_MODEL_CONFIG`` fields."""
    import torch

    from export.model import EmoTech, ModelConfig
    from runtime.frontend import FrontendConfig

    torch.manual_seed(seed)
    model = EmoTech(FrontendConfig(), ModelConfig.from_dict({**TINY_MODEL_CONFIG, **overrides})).eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        model.missing_audio.normal_()
        model.missing_text.normal_()
    return model


def softmax(z):
    """Row-wise softmax of a numpy array."""
    import numpy as np

    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def assert_padding_never_changes_a_result(model, batch: int, seconds: float, tokens: int, seed: int) -> None:
    """Each item of a padded batch (distinct audio and token lengths) scores exactly as alone."""
    import torch

    from export.onnx import example_inputs

    feed = example_inputs(model, batch=batch, seconds=seconds, tokens=tokens, seed=seed)
    with torch.no_grad():
        together = model(**feed)
        for i in range(batch):
            n, k = feed["audio_lengths"][i], feed["token_lengths"][i]
            alone = model(
                feed["audio"][i : i + 1, :n], feed["audio_lengths"][i : i + 1],
                feed["tokens"][i : i + 1, :k], feed["token_lengths"][i : i + 1],
                feed["has_audio"][i : i + 1], feed["has_text"][i : i + 1],
            )  # fmt: skip
            torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)
