"""Transcript pairing, fusion targets and corpus x class sampling (export.pairing), and a
RAVDESS + nEMO training run end to end on fixture corpora."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from export import data
from export.config import TrainConfig
from export.pairing import PairSampler, audio_order, cell_weights, fusion_target
from tests.helpers import requires_torch

EMO7 = data.load_labelset("emotech7")
L = {name: i for i, name in enumerate(EMO7.labels)}
TEXTS = [data.Utterance(L[lab], text=f"{lab} {i}", corpus="goemotions") for lab in ("neutral", "happy", "sad", "angry") for i in range(3)]


def reference_pick(cfg, by_label, neutral, item, rng):
    """The pairing rule before other-label texts existed (RAVDESS clips), kept to check the
    default recipe draws exactly what it drew then."""
    if item.corpus != "ravdess":
        return item.text if rng.random() >= cfg.p_no_text else None
    r = rng.random()
    if r < cfg.p_no_text:
        return None
    if r < cfg.p_no_text + cfg.p_own_text or not by_label:
        return item.text
    pool = by_label.get(item.label) if r < cfg.p_no_text + cfg.p_own_text + cfg.p_same_label_text else None
    if pool is None:
        pool = by_label.get(neutral, [])
    return rng.choice(pool) if pool else item.text


def test_default_pairing_draws_what_it_always_drew():
    cfg = TrainConfig()
    sampler = PairSampler(cfg, TEXTS, EMO7.labels)
    items = [data.Utterance(L[lab], "x.wav", "Kids are talking by the door", "ravdess_01", "ravdess") for lab in ("neutral", "happy", "fearful", "angry")] * 50
    items += [data.Utterance(L["sad"], "y.wav", "a real line", "s", "manifest")] * 20
    a, b = random.Random(3), random.Random(3)
    got = [sampler.pick(u, a)[0] for u in items]
    want = [reference_pick(cfg, sampler.by_label, L["neutral"], u, b) for u in items]
    assert got == want and a.random() == b.random()


def test_other_label_texts_are_emotional_and_differ_from_the_clip():
    cfg = TrainConfig(p_no_text=0.0, p_own_text=0.0, p_same_label_text=0.0, p_other_label_text=1.0)
    sampler = PairSampler(cfg, TEXTS, EMO7.labels)
    rng = random.Random(0)
    for lab in ("neutral", "happy", "fearful"):
        item = data.Utterance(L[lab], "x.wav", None, "nemo_EB0", "nemo")
        picks = [sampler.pick(item, rng) for _ in range(200)]
        labels = Counter(k for _, k in picks)
        assert set(labels) == {L["happy"], L["sad"], L["angry"]} - {L[lab]}, lab
        assert all(t.startswith(EMO7.labels[k]) for t, k in picks)  # the label is the text's


def test_scripted_corpora_never_use_an_unreadable_own_text():
    cfg = TrainConfig(p_no_text=0.0, p_own_text=1.0, p_same_label_text=0.0)
    sampler = PairSampler(cfg, TEXTS, EMO7.labels)
    nemo = data.Utterance(L["sad"], "x.wav", None, "nemo_EB0", "nemo")
    assert sampler.pick(nemo, random.Random(0)) == (None, None)
    ravdess = data.Utterance(L["sad"], "x.wav", "Dogs are sitting by the door", "ravdess_01", "ravdess")
    assert sampler.pick(ravdess, random.Random(0)) == ("Dogs are sitting by the door", None)


@pytest.mark.parametrize(
    ("audio", "text", "targets", "want"),
    [
        ("sad", "angry", "audio", {"sad": 1.0}),
        ("sad", None, "evidence", {"sad": 1.0}),
        ("sad", "sad", "evidence", {"sad": 1.0}),
        ("sad", "neutral", "evidence", {"sad": 1.0}),  # neutral words: no evidence
        ("neutral", "angry", "evidence", {"angry": 1.0}),  # neutral voice: no evidence
        ("sad", "angry", "evidence", {"sad": 0.75, "angry": 0.25}),  # both emotional: shared
    ],
)
def test_fusion_targets(audio, text, targets, want):
    cfg = TrainConfig(fusion_targets=targets, text_target_weight=0.25)
    got = fusion_target(L[audio], None if text is None else L[text], cfg, len(L), L["neutral"])
    expected = np.zeros(len(L), dtype=np.float32)
    for k, v in want.items():
        expected[L[k]] = v
    np.testing.assert_allclose(got, expected)
    assert got.sum() == pytest.approx(1.0)


def test_corpus_class_sampling_draws_every_cell_equally_often():
    items = [data.Utterance(L["neutral"], corpus="ravdess")] * 300 + [data.Utterance(L["neutral"], corpus="nemo")] * 30
    items += [data.Utterance(L["angry"], corpus="ravdess")] * 60 + [data.Utterance(L["angry"], corpus="nemo")] * 10
    w = cell_weights(items)
    cells = Counter()
    for u, wi in zip(items, w):
        cells[(u.corpus, u.label)] += wi
    assert all(v == pytest.approx(1.0) for v in cells.values())
    rng = random.Random(0)
    drawn = Counter((items[i].corpus, items[i].label) for _ in range(50) for i in audio_order(items, "corpus_class", rng, w))
    total = sum(drawn.values())
    assert total == 50 * len(items)
    assert all(abs(n / total - 0.25) < 0.01 for n in drawn.values()), drawn
    shuffled = audio_order(items, "class_loss", random.Random(0))
    assert sorted(shuffled) == list(range(len(items)))  # a permutation: every item once


@requires_torch
def test_ravdess_and_nemo_train_together_end_to_end(tmp_path, tokenizer_file):
    """Two audio corpora (speaker splits of each), a text corpus, corpus x class sampling,
    evidence targets with other-label texts, and the out-of-domain augmentation: the run
    writes a folder whose record names both corpora and the recipe, and which loads."""
    from export.augment import AugmentConfig
    from export.config import DataConfig
    from export.model import ModelConfig
    from export.train import train
    from runtime import EmotionRecognizer
    from tests.corpus_fixtures import make_goemotions, make_nemo, make_ravdess
    from tests.helpers import TINY_MODEL_CONFIG, speechlike

    make_ravdess(tmp_path), make_nemo(tmp_path), make_goemotions(tmp_path)
    cfg = TrainConfig(
        epochs=2, swa_epochs=1, audio_batch=4, text_batch=4, p_same_label_text=0.15, p_other_label_text=0.3, fusion_targets="evidence", audio_balance="corpus_class",
        augment=AugmentConfig(p_reverb=0.5, p_telephone=0.5), tokenizer=str(tokenizer_file), pretrained_embeddings=False,
        model=ModelConfig.from_dict(TINY_MODEL_CONFIG),
    )  # fmt: skip
    data_cfg = DataConfig(data_root=str(tmp_path), audio_corpora=("ravdess", "nemo"), text_corpora=("goemotions",))
    out = train(cfg, data_cfg, tmp_path / "model", threads=1)
    spec = json.loads((out / "spec.json").read_text())
    tr = spec["training"]
    assert tr["audio_corpus"] == "ravdess+nemo" and tr["audio_train_items_per_corpus"] == {"ravdess": 16, "nemo": 12}
    assert tr["config"]["fusion_targets"] == "evidence" and tr["augment"]["p_telephone"] == 0.5
    assert {"audio[ravdess]", "audio[nemo]"} <= set(tr["history"][0])  # per-corpus validation UA
    pred = EmotionRecognizer.load(out).predict(audio=speechlike(0.8), text="I hate you", sample_rate=16000)
    assert np.isclose(sum(pred.scores.values()), 1.0)
