"""Smoke runs of `python -m export.train` and of `train(cfg, data, out)` on a tiny synthetic
manifest corpus (seconds, no real data needed); the typed configs and the CLI adapter."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from runtime import EmotionRecognizer
from tests.helpers import REPO, encode, requires_torch, speechlike

pytestmark = requires_torch


def train_main(argv):
    from export.train import main

    return main(argv)


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

    from export.selection import audio_logits
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


def smoke_args(tmp_path, tokenizer_file, tiny_model_config_file) -> list[str]:
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": ["calm", "agitated"]}))
    train_csv, val_csv = write_corpus(tmp_path, 8, 0), write_corpus(tmp_path, 4, 100)
    return [
        "--audio-corpus", "manifest", "--train-manifest", train_csv, "--val-manifest", val_csv,
        "--text-corpus", "none", "--labelset", str(labels), "--epochs", "2", "--swa-epochs", "1", "--threads", "1",
        "--tokenizer", str(tokenizer_file), "--no-pretrained-embeddings", "--model-config", str(tiny_model_config_file),
    ]  # fmt: skip


def test_the_cli_only_adapts_its_options_to_train(tmp_path, tokenizer_file, tiny_model_config_file):
    """The CLI and ``train(TrainConfig, DataConfig, out)`` with the same settings write the
    same weights, bit for bit (same seed), and record the same config."""
    from export.config import DataConfig, TrainConfig
    from export.model import ModelConfig
    from export.train import train
    from tests.helpers import TINY_MODEL_CONFIG

    args = smoke_args(tmp_path, tokenizer_file, tiny_model_config_file)
    train_main([*args, "--out", str(tmp_path / "cli")])

    def get(flag: str) -> str:
        return args[args.index(flag) + 1]

    cfg = TrainConfig(epochs=2, swa_epochs=1, tokenizer=str(tokenizer_file), pretrained_embeddings=False, model=ModelConfig.from_dict(TINY_MODEL_CONFIG))
    data = DataConfig(audio_corpora=("manifest",), train_manifest=get("--train-manifest"), val_manifest=get("--val-manifest"), text_corpora=(), labelset=get("--labelset"))
    train(cfg, data, tmp_path / "api", threads=1)
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == (tmp_path / "api" / "model.safetensors").read_bytes()
    cli_spec, api_spec = (json.loads((tmp_path / d / "spec.json").read_text())["training"] for d in ("cli", "api"))
    assert cli_spec["config"] == api_spec["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert api_spec["command"] is None and cli_spec["command"].startswith("python -m export.train ")


@pytest.mark.parametrize("module", ["export.train", "export.ensemble"])
def test_out_is_required_and_help_names_the_module(module):
    """No entry point writes a model folder unless told where: without --out the command
    stops before doing anything (a default would let one forgotten flag overwrite the
    shipped weights/emotech)."""

    def run(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *a], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    done = run("--members", "a") if module == "export.ensemble" else run()
    assert done.returncode == 2 and "the following arguments are required: --out" in done.stderr
    helped = run("--help")
    assert helped.returncode == 0 and helped.stdout.startswith(f"usage: python -m {module} ")
    assert "(default: None)" not in helped.stdout and helped.stdout.count("(default:") == helped.stdout.count("default:")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"p_no_text": 0.6, "p_own_text": 0.5}, "sum to at most 1"),
        ({"fusion_targets": "text"}, "fusion_targets must be one of \\('audio', 'evidence'\\)"),
        ({"audio_balance": "oversample"}, "audio_balance must be one of \\('class_loss', 'corpus_class', 'none'\\)"),
        ({"text_target_weight": 1.5}, "text_target_weight must be in \\[0, 1\\]"),
        ({"max_audio_train": 0}, "max_audio_train must be None"),
    ],
)
def test_train_config_refuses_what_it_cannot_run(kwargs, message):
    from export.config import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_data_config_refuses_what_it_cannot_load():
    from export.config import DataConfig

    with pytest.raises(ValueError, match="audio_corpora must be distinct names from \\('ravdess', 'nemo', 'iemocap', 'manifest'\\)"):
        DataConfig(audio_corpora=("ravdess", "crema"))
    with pytest.raises(ValueError, match="at least one"):
        DataConfig(audio_corpora=())
    with pytest.raises(ValueError, match="text_corpora must be distinct names"):
        DataConfig(text_corpora=("goemotions", "goemotions"))
    with pytest.raises(ValueError, match="needs train_manifest and val_manifest"):
        DataConfig(audio_corpora=("manifest",), train_manifest="t.csv")
    with pytest.raises(ValueError, match="exactly one audio corpus"):
        DataConfig(audio_corpora=("ravdess", "nemo"), audio_root="/x")
    with pytest.raises(ValueError, match="ravdess_split must be one of"):
        DataConfig(ravdess_split="random")
    assert DataConfig(audio_corpora=("ravdess", "nemo"), text_corpora=("goemotions", "meld")).audio_corpora == ("ravdess", "nemo")


def test_cli_reports_a_bad_option_as_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "aug.json"
    bad.write_text(json.dumps({"p_telephone": 2.0}))
    with pytest.raises(SystemExit) as e:
        train_main(["--out", str(tmp_path / "m"), "--augment-config", str(bad)])
    assert e.value.code == 2 and "p_telephone must be a probability in [0, 1]" in capsys.readouterr().err
    bad.write_text(json.dumps({"p_telefone": 0.5}))
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "m"), "--augment-config", str(bad)])
    assert "unknown field(s) ['p_telefone']" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an augmentation file given as the model config
        train_main(["--out", str(tmp_path / "m"), "--model-config", str(REPO / "export" / "configs" / "augment" / "ood.json")])
    assert "--model-config" in (err := capsys.readouterr().err) and "unknown field(s) ['drr_db_range'" in err
    with pytest.raises(SystemExit):  # test data is export.evaluate's, never training's
        train_main(["--out", str(tmp_path / "m"), "--test-manifest", "test.csv"])
    assert "unrecognized arguments: --test-manifest" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_the_model_definition_imports_without_the_training_code(tiny_model_dir):
    """The torch engine loads a folder through export.bundle / export.merged: neither may pull
    in data loaders, augmentation or the training loop (nor their heavy libraries)."""
    code = (
        "import sys\n"
        "from runtime import EmotionRecognizer\n"
        f"rec = EmotionRecognizer.load({str(tiny_model_dir)!r}, engine='torch')\n"
        "rec.predict(text='hello there')\n"
        "training = ('export.train', 'export.data', 'export.augment', 'export.pairing', 'export.selection', 'export.config',\n"
        "            'export.evaluate', 'librosa', 'matplotlib', 'scipy')\n"
        "print(sorted(m for m in training if m in sys.modules))\n"
        "print('export.bundle' in sys.modules and 'export.model' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "True"]
