"""EmoTechEnsemble: the mean of its members, padding-invariant, exported like a single
model; `export.train --text-from` and `python -m export.ensemble` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import assert_padding_never_changes_a_result, build_tiny_model, requires_torch, speechlike

pytestmark = requires_torch


def members(n: int = 3):
    """Tiny members (with the non-default audio options) sharing member 0's text block."""
    from tests.helpers import TINY_VARIANT

    models = [build_tiny_model(seed=10 + i, **TINY_VARIANT) for i in range(n)]
    for m in models[1:]:
        m.text.load_state_dict(models[0].text.state_dict())
    return models


@pytest.fixture(scope="module")
def ensemble_and_members():
    from export.model import EmoTechEnsemble

    ms = members(3)
    return EmoTechEnsemble.from_members(ms).eval(), ms


@pytest.mark.parametrize("mode", ["both", "audio", "text"])
def test_ensemble_logits_are_the_mean_of_its_members(ensemble_and_members, mode):
    import torch

    from export.onnx import example_inputs

    ens, ms = ensemble_and_members
    feed = example_inputs(ens, batch=3, seconds=1.7, tokens=11, seed=2)
    if mode == "audio":
        feed["has_text"] = torch.zeros(3)
    elif mode == "text":
        feed["has_audio"] = torch.zeros(3)
    with torch.no_grad():
        got = ens(**feed)
        want = torch.stack([m(**feed) for m in ms]).mean(dim=0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ensemble_padding_never_changes_a_result(ensemble_and_members):
    assert_padding_never_changes_a_result(ensemble_and_members[0], batch=3, seconds=2.2, tokens=15, seed=4)


def test_members_with_different_text_blocks_are_refused():
    from export.model import EmoTechEnsemble

    a, b = build_tiny_model(seed=1), build_tiny_model(seed=2)
    with pytest.raises(ValueError, match="different text block.*--text-from"):
        EmoTechEnsemble.from_members([a, b])
    with pytest.raises(ValueError, match="at least one member"):
        EmoTechEnsemble.from_members([])


def test_ensemble_folder_round_trip_onnx_and_runtime(ensemble_and_members, tmp_path, tokenizer_file):
    import torch

    from export import bundle
    from export.onnx import GRAPHS, example_inputs, export_all
    from export.op_support import check_file
    from runtime import EmotionRecognizer
    from tests.test_onnx import ATOL, scores_parity

    ens, _ = ensemble_and_members
    labels = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    spec = bundle.save_model(ens, tmp_path, labels, tokenizer_file, max_tokens=32)
    assert spec["model"]["architecture"] == "EmoTechEnsemble" and spec["model"]["members"] == 3
    diffs = export_all(ens, tmp_path, names=("fused", "audio"))
    bundle.register_graphs(spec, {n: GRAPHS[n].filename for n in diffs})
    bundle.update_files(tmp_path, spec)

    loaded, _ = bundle.load_torch_model(tmp_path)
    feed = example_inputs(ens, batch=2, seconds=1.2, tokens=9, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**feed), ens(**feed))
    path = tmp_path / GRAPHS["fused"].filename
    assert scores_parity(ens, path) <= ATOL
    assert check_file(path) == []
    # one token-embedding table: the graph is not members x a single model's size
    emb = ens.text.embed.weight.numel() * 4
    assert path.stat().st_size < 2 * emb

    rec = EmotionRecognizer.load(tmp_path)
    pred = rec.predict(audio=speechlike(1.1), text="what a day", sample_rate=16000)
    assert np.isclose(sum(pred.scores.values()), 1.0)
    # the torch engine runs the merged form (export.merged): same scores as the ONNX graph
    from export.merged import MergedEnsemble

    torch_rec = EmotionRecognizer.load(tmp_path, engine="torch")
    assert isinstance(torch_rec.engine.model, MergedEnsemble)
    on_torch = torch_rec.predict(audio=speechlike(1.1), text="what a day", sample_rate=16000)
    for k in labels:
        assert abs(on_torch.scores[k] - pred.scores[k]) < 1e-5


def test_text_from_then_ensemble_cli(tmp_path, tokenizer_file, tiny_model_config_file):
    import torch

    from export.bundle import load_torch_model
    from export.ensemble import main as ensemble_main
    from export.train import main as train_main
    from runtime import EmotionRecognizer
    from tests.test_train_smoke import write_corpus

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": ["calm", "agitated"]}))
    train_csv, val_csv = write_corpus(tmp_path, 8, 0), write_corpus(tmp_path, 4, 100)
    data = ["--audio-corpus", "manifest", "--train-manifest", train_csv, "--val-manifest", val_csv,
            "--text-corpus", "none", "--labelset", str(labels)]  # fmt: skip
    common = [*data, "--epochs", "1", "--threads", "1", "--model-config", str(tiny_model_config_file), "--swa-epochs", "0"]
    m0, m1 = tmp_path / "m0", tmp_path / "m1"
    train_main([*common, "--tokenizer", str(tokenizer_file), "--no-pretrained-embeddings", "--out", str(m0)])
    train_main([*common, "--seed", "1", "--text-from", str(m0), "--out", str(m1)])

    a, _ = load_torch_model(m0)
    b, spec_b = load_torch_model(m1)
    for k, v in a.text.state_dict().items():
        assert torch.equal(v, b.text.state_dict()[k]), k  # frozen while member 1 trained
    assert not torch.equal(a.head[1].weight, b.head[1].weight)
    assert spec_b["training"]["text_block_from"]["model_dir"] == str(m0)

    out = tmp_path / "ens"
    ensemble_main(["--members", str(m0), str(m1), *data, "--threads", "1", "--out", str(out)])
    spec = json.loads((out / "spec.json").read_text())
    assert spec["model"]["members"] == 2
    assert [m["model_dir"] for m in spec["training"]["ensemble"]["members"]] == [str(m0), str(m1)]
    assert set(spec["training"]["ensemble"]["validation"]) == {"member 0", "member 1", "ensemble"}
    assert spec["training"]["command"].startswith("python -m export.ensemble --members")
    pred = EmotionRecognizer.load(out).predict(audio=speechlike(0.9), text="stop it now", sample_rate=16000)
    assert set(pred.scores) == {"calm", "agitated"} and np.isclose(sum(pred.scores.values()), 1.0)


def test_text_from_a_folder_that_does_not_fit_is_refused(tmp_path, tiny_model_dir, tiny_model_config_file):
    from export.config import DataConfig, TrainConfig
    from export.model import ModelConfig
    from export.train import train
    from tests.helpers import TINY_MODEL_CONFIG
    from tests.test_train_smoke import write_corpus

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": ["calm", "agitated"]}))
    csv = write_corpus(tmp_path, 4, 0)
    data = DataConfig(audio_corpora=("manifest",), train_manifest=csv, val_manifest=csv, text_corpora=(), labelset=str(labels))
    cfg = TrainConfig(epochs=1, model=ModelConfig.from_dict(TINY_MODEL_CONFIG), text_from=str(tiny_model_dir))
    with pytest.raises(ValueError, match="its labels .* differ from this run's"):
        train(cfg, data, tmp_path / "x")
    assert not (tmp_path / "x").exists()
