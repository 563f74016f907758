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


def test_weight_average_and_batchnorm_reestimation(tokenizer_file):
    import torch

    from export.train import WeightAverage, update_batchnorm
    from runtime.text import TextEncoder
    from tests.helpers import build_tiny_model

    a, b = build_tiny_model(seed=1), build_tiny_model(seed=2)
    avg = WeightAverage()
    avg.add(a)
    avg.add(b)
    target = build_tiny_model(seed=3)
    avg.apply(target)
    sa, sb, st = a.state_dict(), b.state_dict(), target.state_dict()
    for k, v in st.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (sa[k] + sb[k]) / 2)

    # After re-estimation each BatchNorm holds the plain mean of its inputs over the clips,
    # and the model is back in eval mode with the layers' own momentum.
    clips = [speechlike(0.8, seed=i) for i in range(5)]
    encoder = TextEncoder(tokenizer_file)
    bn = target.audio.cnn[0][1]
    seen = []
    hook = target.audio.cnn[0][0].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    update_batchnorm(target, clips, encoder, batch=2)
    hook.remove()
    assert not target.training and bn.momentum == 0.1
    # the batch mean over (N, H, W) of each call, averaged over the calls (cumulative average)
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen])
    torch.testing.assert_close(bn.running_mean, means.mean(0), atol=1e-5, rtol=1e-4)
    assert int(bn.num_batches_tracked) == len(seen) == 3


def test_audio_only_logits_match_a_textless_request(tokenizer_file):
    """The auxiliary audio-only logits are exactly what the model gives the same clips
    with no transcript (the learned "missing" text), and the paired logits are unchanged."""
    import torch

    from export.train import audio_logits
    from runtime.text import TextEncoder
    from tests.helpers import build_tiny_model

    model = build_tiny_model(seed=4).eval()
    encoder = TextEncoder(tokenizer_file)
    clips = [speechlike(0.5 + 0.2 * i, seed=i) for i in range(3)]
    texts = ["stop it now", None, "fine thanks"]
    with torch.no_grad():
        paired, alone = audio_logits(model, clips, texts, encoder, audio_only=True)
        torch.testing.assert_close(paired, audio_logits(model, clips, texts, encoder))
        torch.testing.assert_close(alone, audio_logits(model, clips, [None] * 3, encoder))
    assert not torch.allclose(paired[0], alone[0])


def test_class_weights_balance_inverse_sqrt_frequency():
    from export.data import Utterance
    from export.train import class_weights

    items = [Utterance(path=None, label=0)] * 12 + [Utterance(path=None, label=1)] * 8 + [Utterance(path=None, label=2)] * 8
    w = class_weights(items, 3).numpy()
    assert np.isclose(w.mean(), 1.0)
    assert np.isclose(w[1] / w[0], np.sqrt(12 / 8)) and np.isclose(w[1], w[2])
