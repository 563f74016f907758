"""Smoke run of `python -m export.train` and `python -m export.evaluate` entry points on a
tiny synthetic manifest corpus (seconds, no real data needed)."""

from __future__ import annotations

import json

import numpy as np

from export.train import main as train_main
from runtime import EmotionRecognizer
from tests.helpers import encode, requires_torch, speechlike

pytestmark = requires_torch


def write_corpus(root, n: int, seed: int) -> str:
    """Two 'emotions' that differ in pitch and loudness: learnable in one epoch or not,
    the pipeline must run end to end."""
    rows = ["path,label,text,speaker"]
    for i in range(n):
        label = ("calm", "agitated")[i % 2]
        f0 = 110.0 if label == "calm" else 260.0
        clip = speechlike(0.6 + 0.1 * (i % 4), seed=seed + i, f0=f0) * (0.3 if label == "calm" else 0.9)
        (root / f"{seed}_{i}.wav").write_bytes(encode(clip, 16000, "WAV"))
        rows.append(f"{seed}_{i}.wav,{label},{'fine thanks' if label == 'calm' else 'stop it now'},spk{i % 3}")
    path = root / f"manifest_{seed}.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_train_writes_a_loadable_model_folder(tmp_path, tokenizer_file, tiny_model_config_file):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": ["calm", "agitated"]}))
    train_csv, val_csv = write_corpus(tmp_path, 8, 0), write_corpus(tmp_path, 4, 100)
    out = tmp_path / "model"
    train_main([
        "--audio-corpus", "manifest", "--train-manifest", train_csv, "--val-manifest", val_csv,
        "--text-corpus", "none", "--labelset", str(labels), "--epochs", "1", "--threads", "1",
        "--tokenizer", str(tokenizer_file), "--no-pretrained-embeddings",
        "--model-config", str(tiny_model_config_file), "--out", str(out),
    ])
    spec = json.loads((out / "spec.json").read_text())
    assert spec["labels"] == ["calm", "agitated"]
    assert set(spec["files"]) == {"model.safetensors", "tokenizer.json", "emotech.onnx"}
    assert spec["training"]["command"].startswith("python -m export.train --audio-corpus manifest")
    assert all(t > 0 for t in spec["calibration"]["temperature"].values())
    rec = EmotionRecognizer.load(out)
    pred = rec.predict(audio=speechlike(1.0), text="stop it now", sample_rate=16000)
    assert set(pred.scores) == {"calm", "agitated"}
    assert np.isclose(sum(pred.scores.values()), 1.0)
