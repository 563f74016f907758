"""The deployment prior: its effect on scores (runtime), its validation in spec.json, and
its fitting on validation data (``export.prior``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime.errors import ModelFolderError
from runtime.postprocess import postprocess
from tests.helpers import DATA_ROOT, requires_data, requires_torch, softmax, speechlike

LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
TEMPS = {"audio": 1.5, "text": 0.8, "audio+text": 1.2}


def test_offset_multiplies_neutral_odds_per_mode_and_scores_stay_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7)).astype(np.float32)
    has_audio, has_text = np.array([1, 0, 1]), np.array([0, 1, 1])
    plain = postprocess(logits, LABELS, has_audio, has_text, TEMPS)
    shifted = postprocess(logits, LABELS, has_audio, has_text, TEMPS, prior_log_odds={"audio": {"neutral": 1.5}, "text": {"neutral": 0.0}})
    for p, q, b in zip(plain, shifted, (1.5, 0.0, 0.0)):  # audio+text has no entry: no shift
        odds = lambda s: s["neutral"] / (1 - s["neutral"])
        assert odds(q.scores) == pytest.approx(np.exp(b) * odds(p.scores), rel=1e-9)
        assert sum(q.scores.values()) == pytest.approx(1.0, abs=1e-12)
        others = [k for k in LABELS if k != "neutral"]  # the other classes keep their ratios
        assert [q.scores[k] / q.scores["happy"] for k in others] == pytest.approx([p.scores[k] / p.scores["happy"] for k in others])
    big = postprocess(logits[:1], LABELS, has_audio[:1], has_text[:1], TEMPS, prior_log_odds={"audio": {"neutral": 15.0}})
    assert big[0].label == "neutral"


@requires_torch
def test_spec_reads_and_checks_the_prior(tiny_model_dir, tmp_path):
    from runtime.recognizer import EmotionRecognizer
    from runtime.spec import load_spec

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    spec_file = folder / "spec.json"
    raw = json.loads(spec_file.read_text())
    rec = EmotionRecognizer.load(folder)
    clip = speechlike(1.0, seed=3)
    before = rec.predict(audio=clip, sample_rate=16000).scores
    rec.close()
    raw["calibration"]["prior_log_odds"] = {"audio": {"neutral": 2.0}}
    spec_file.write_text(json.dumps(raw))
    assert load_spec(folder).prior_log_odds == {"audio": {"neutral": 2.0}}
    rec = EmotionRecognizer.load(folder)
    after = rec.predict(audio=clip, sample_rate=16000).scores
    rec.close()
    odds = lambda s: s["neutral"] / (1 - s["neutral"])
    assert odds(after) == pytest.approx(np.exp(2.0) * odds(before), rel=1e-5)
    for bad in ({"audio": {"calm": 1.0}}, {"speech": {"neutral": 1.0}}, {"audio": {"neutral": 1e9}}, {"audio": {"neutral": float("nan")}}):
        raw["calibration"]["prior_log_odds"] = bad
        spec_file.write_text(json.dumps(raw))
        with pytest.raises(ModelFolderError, match="prior_log_odds"):
            load_spec(folder)


def test_fit_offset_maximises_the_deployment_objective():
    from export.prior import fit_offset, objective, shifted

    rng = np.random.default_rng(1)
    y = rng.integers(0, 7, size=700)
    logits = rng.normal(size=(700, 7))
    logits[np.arange(700), y] += 1.0  # informative but imperfect
    logits[:, 0] -= 1.5  # a model that under-calls neutral
    probs = softmax(logits)
    b, at0, best = fit_offset(probs, y, 0, 0.5, 4.0)
    assert b > 0 and best > at0
    assert best == pytest.approx(objective(shifted(probs, 0, b), y, 0, 0.5))
    for other in np.arange(0, 4.0001, 0.05):
        assert objective(shifted(probs, 0, other), y, 0, 0.5) <= best + 1e-12
    # at the balanced share the objective is unweighted accuracy, and neutral recall rises with the share
    recall = lambda share: np.mean(shifted(probs, 0, fit_offset(probs, y, 0, share, 4.0)[0]).argmax(1)[y == 0] == 0)
    assert recall(0.6) >= recall(1 / 7)


@requires_torch
@requires_data
@pytest.mark.requires_data
def test_export_prior_writes_fits_and_clears(tiny_model_dir, tmp_path, capsys):
    from export.prior import main
    from runtime.spec import load_spec

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    thresholds = load_spec(folder).uncertain_below
    assert main(["--model-dir", str(folder), "--data-root", str(DATA_ROOT), "--neutral-share", "0.6", "--limit", "40", "-q"]) == 0
    out = capsys.readouterr().out
    assert "neutral offset" in out
    spec = load_spec(folder)
    raw = spec.raw["calibration"]
    assert set(spec.prior_log_odds) == {"audio", "text", "audio+text"}
    assert raw["prior"]["neutral_share"] == 0.6 and raw["prior"]["modes"]["audio"]["sets"] == ["ravdess_val"]
    for mode, r in raw["prior"]["modes"].items():
        assert r["objective_with"] >= r["objective_without"] and spec.prior_log_odds[mode]["neutral"] == r["offset"]
    # fitting again starts from the scores without the prior: the same offsets
    assert main(["--model-dir", str(folder), "--data-root", str(DATA_ROOT), "--neutral-share", "0.6", "--limit", "40", "-q"]) == 0
    assert load_spec(folder).prior_log_odds == spec.prior_log_odds
    assert main(["--model-dir", str(folder), "--clear"]) == 0
    cleared = load_spec(folder)
    assert cleared.prior_log_odds == {} and cleared.uncertain_below == thresholds
    with pytest.raises(SystemExit):
        main(["--model-dir", str(folder), "--neutral-share", "1.0"])


def test_validation_sets_come_from_the_training_corpora_only():
    """A leave-one-corpus-out model never has its prior fitted on the held-out corpus."""
    from export.prior import validation_sets

    nemo_only = validation_sets({"training": {"audio_corpus": "nemo", "text_corpus": "goemotions+meld"}})
    assert nemo_only == {"audio": ["nemo_val"], "text": ["goemotions_dev", "meld_dev"]}
    both = validation_sets({"training": {"audio_corpus": "ravdess+nemo", "text_corpus": "goemotions"}})
    assert both["audio"] == ["ravdess_val", "nemo_val"] and both["audio+text"] == ["ravdess_val+own_text", "ravdess_val+same_label_text"]
