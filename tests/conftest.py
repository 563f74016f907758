"""Shared fixtures: a tiny random-weight model folder and its config."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.helpers import BUNDLED, TINY_MODEL_CONFIG, build_tiny_model, has_torch


@pytest.fixture(autouse=True)
def _restore_root_logger():
    """A CLI's main() run in-process configures the root logger on the test's captured
    stderr, which pytest closes after the test: put the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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
    from export import bundle
    from export.onnx import GRAPHS, export_all

    model = build_tiny_model(seed=0)
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


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A writable copy of the tiny model folder (for tests that add variants to it)."""
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    return out
