"""Shared fixtures: a tiny random-weight model folder and its config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import BUNDLED, TINY_MODEL_CONFIG, has_torch


@pytest.fixture(scope="session")
def tokenizer_file() -> Path:
    path = BUNDLED / "tokenizer.json"
    if not path.is_file():
        pytest.skip("weights/emotech/tokenizer.json missing")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_file) -> Path:
    """A model folder with random (seeded) tiny weights and its exported ONNX graphs."""
    if not has_torch():
        pytest.skip("PyTorch not installed: the tiny model is built with export/")
    import torch

    from export import bundle
    from export.model import EmoTech, ModelConfig
    from export.onnx import GRAPHS, export_all
    from runtime.frontend import FrontendConfig

    torch.manual_seed(0)
    model = EmoTech(FrontendConfig(), ModelConfig.from_dict(TINY_MODEL_CONFIG)).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics so masking bugs show
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        model.missing_audio.normal_()
        model.missing_text.normal_()
    out = tmp_path_factory.mktemp("tiny_model")
    labels = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    spec = bundle.save_model(model, out, labels, tokenizer_file, max_tokens=32)
    spec["calibration"]["temperature"] = {"audio": 1.5, "text": 0.8, "audio+text": 1.2}
    diffs = export_all(model, out, names=("fused",))
    bundle.register_graphs(spec, {n: GRAPHS[n].filename for n in diffs})
    bundle.update_files(out, spec)
    return out


@pytest.fixture(scope="session")
def tiny_model_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY_MODEL_CONFIG))
    return path
