"""The ``uncertain`` flag: a threshold on the calibrated top score per mode, from the
runtime's default or the model folder's spec.json; and the rule that chooses it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.postprocess import UNCERTAIN_BELOW, postprocess
from tests.helpers import requires_torch

LABELS = ("neutral", "happy", "sad")


def test_flag_follows_the_top_score_and_the_mode():
    # top scores: 0.6 (audio), 0.4 (audio), 0.45 (audio+text), 0.45 (text)
    p = np.array([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25], [0.45, 0.3, 0.25], [0.45, 0.3, 0.25]])
    logits = np.log(p)
    has_audio, has_text = np.array([1, 1, 1, 0]), np.array([0, 0, 1, 1])
    temps = {"audio": 1.0, "text": 1.0, "audio+text": 1.0}
    preds = postprocess(logits, LABELS, has_audio, has_text, temps, uncertain_below={"audio": 0.5, "text": 0.5, "audio+text": 0.4})
    assert [pr.uncertain for pr in preds] == [False, True, False, True]
    assert preds[1].to_dict()["uncertain"] is True and preds[0].to_dict()["uncertain"] is False
    default = postprocess(logits, LABELS, has_audio, has_text, temps)
    assert [pr.uncertain for pr in default] == [pr.scores[pr.label] < UNCERTAIN_BELOW[m] for pr, m in zip(default, ("audio", "audio", "audio+text", "text"))]


def test_flag_uses_the_calibrated_score():
    logits = np.log(np.array([[0.6, 0.3, 0.1]]))
    cooled = postprocess(logits, LABELS, np.array([1]), np.array([0]), {"audio": 0.5}, uncertain_below={"audio": 0.55})
    heated = postprocess(logits, LABELS, np.array([1]), np.array([0]), {"audio": 3.0}, uncertain_below={"audio": 0.55})
    assert not cooled[0].uncertain and heated[0].uncertain  # T = 3 flattens 0.6 to about 0.46


def test_model_folder_threshold_reaches_predictions(model_copy):
    from export import bundle
    from runtime import EmotionRecognizer
    from runtime.errors import ModelFolderError
    from tests.helpers import speechlike

    rec = EmotionRecognizer.load(model_copy)
    assert rec.spec.uncertain_below == UNCERTAIN_BELOW  # a spec without the key: the runtime's default
    spec = bundle.read_spec(model_copy)
    spec["calibration"]["uncertain_below"] = {"audio": 1.0, "text": 0.0}
    bundle.write_spec(model_copy, spec)
    rec = EmotionRecognizer.load(model_copy)
    assert rec.spec.uncertain_below == {"audio": 1.0, "text": 0.0, "audio+text": UNCERTAIN_BELOW["audio+text"]}
    assert rec.predict(audio=speechlike(1.0), sample_rate=16000).uncertain  # nothing scores above 1.0
    assert not rec.predict(text="hello there").uncertain  # everything scores above 0.0
    spec["calibration"]["uncertain_below"] = {"audio": 1.5}
    bundle.write_spec(model_copy, spec)
    with pytest.raises(ModelFolderError, match="uncertain_below must be scores in \\[0, 1\\]"):
        EmotionRecognizer.load(model_copy)


def test_rule_threshold_is_the_top_of_the_highest_bin_more_often_wrong():
    from export.metrics import uncertain_threshold

    conf = np.concatenate([np.full(20, 0.32), np.full(20, 0.52), np.full(20, 0.57), np.full(5, 0.67), np.full(20, 0.92)])
    correct = np.concatenate([np.zeros(20), np.r_[np.ones(9), np.zeros(11)], np.r_[np.ones(12), np.zeros(8)], np.zeros(5), np.ones(20)]).astype(bool)
    # bins: [0.30,0.35) 0 %, [0.50,0.55) 45 %, [0.55,0.60) 60 %, [0.65,0.70) 0 % but only 5 items, [0.90,0.95) 100 %
    assert uncertain_threshold(conf, correct) == pytest.approx(0.55)
    assert uncertain_threshold(conf, correct, min_items=5) == pytest.approx(0.70)
    assert uncertain_threshold(conf, np.ones_like(correct)) == 0.0


@requires_torch
def test_training_writes_its_own_thresholds(tmp_path, tokenizer_file, tiny_model_config_file):
    from tests.test_train_smoke import smoke_args, train_main

    train_main([*smoke_args(tmp_path, tokenizer_file, tiny_model_config_file), "--out", str(tmp_path / "m")])
    cal = json.loads((tmp_path / "m" / "spec.json").read_text())["calibration"]
    assert set(cal["uncertain_below"]) == {"audio", "text", "audio+text"}
    assert all(0.0 <= t <= 1.0 for t in cal["uncertain_below"].values())
    assert cal["uncertain_below"]["text"] == UNCERTAIN_BELOW["text"]  # no text corpus: the default
