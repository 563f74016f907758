"""What each training step sees: which audio items (``audio_order``), which transcript each
is paired with (``PairSampler``) and what the paired item is trained towards
(``fusion_target``).

Pairing assumption. No corpus here has emotional speech with emotional words: RAVDESS and
nEMO actors read fixed, emotionally neutral sentences in an acted voice. A fusion model is
therefore trained on pairs built from the two sides: an audio clip with no text, its own
sentence (RAVDESS only: nEMO's Polish sentences are unreadable to the English tokenizer),
a text-corpus text of the same label, a text of another emotional label, or a
neutral-labelled text. Corpora with real transcripts (IEMOCAP, manifests with text) use
them. Neutral words count as "no evidence" on the text side, as a neutral voice does on
the audio side.

Targets (``TrainConfig.fusion_targets``):
- ``audio``: always the audio label (a transcript can only support the voice);
- ``evidence``: whichever side carries emotion decides: a neutral voice with emotional words
  is trained towards the words' label, emotional words that disagree with an emotional
  voice share the target (``text_target_weight`` to the words), and neutral or same-label
  words leave the audio label. Only pairs drawn with ``p_other_label_text`` can disagree.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

from export import data
from export.config import TrainConfig

# Corpora whose transcripts are scripted, emotionally neutral sentences read in an acted
# voice: their own text is no evidence, and other texts are paired with their clips.
SCRIPTED_CORPORA = ("ravdess", "nemo")


class PairSampler:
    """Chooses the transcript paired with each audio item (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, text_items: list[data.Utterance], labels: tuple[str, ...]):
        self.cfg = cfg
        self.by_label: dict[int, list[str]] = {}
        for u in text_items:
            self.by_label.setdefault(u.label, []).append(u.text or "")
        self.neutral = labels.index("neutral") if "neutral" in labels else None

    def pick(self, item: data.Utterance, rng: random.Random) -> tuple[str | None, int | None]:
        """``(text, its label)`` for ``item``: the label is None for no text and for the
        item's own transcript (whose label is the item's only for unscripted corpora)."""
        c = self.cfg
        if item.corpus not in SCRIPTED_CORPORA:
            return (item.text, item.label if item.text is not None else None) if rng.random() >= c.p_no_text else (None, None)
        r = rng.random()
        if r < c.p_no_text:
            return None, None
        if r < c.p_no_text + c.p_own_text or not self.by_label:
            return item.text, None
        if r < c.p_no_text + c.p_own_text + c.p_same_label_text:
            label = item.label if self.by_label.get(item.label) else None
        elif r < c.p_no_text + c.p_own_text + c.p_same_label_text + c.p_other_label_text:
            others = sorted(k for k in self.by_label if k not in (item.label, self.neutral))
            label = rng.choice(others) if others else None
        else:
            label = None
        if label is None:
            label = self.neutral if self.neutral is not None and self.by_label.get(self.neutral) else None
        if label is None:
            return item.text, None
        return rng.choice(self.by_label[label]), label


def fusion_target(audio_label: int, text_label: int | None, cfg: TrainConfig, k: int, neutral: int | None) -> np.ndarray:
    """The target distribution (``k`` classes) of a paired item under ``cfg.fusion_targets``."""
    target = np.zeros(k, dtype=np.float32)
    if cfg.fusion_targets == "audio" or text_label is None or text_label in (audio_label, neutral):
        target[audio_label] = 1.0
    elif audio_label == neutral:
        target[text_label] = 1.0
    else:
        target[audio_label] = 1.0 - cfg.text_target_weight
        target[text_label] += cfg.text_target_weight
    return target


def cell_weights(items: list[data.Utterance]) -> list[float]:
    """Per item, ``1 / n(corpus, class)``: every (corpus, class) cell present gets the same
    total weight, so a corpus with more clips, or a class with more clips in one corpus,
    is not drawn more often."""
    counts = Counter((u.corpus, u.label) for u in items)
    return [1.0 / counts[(u.corpus, u.label)] for u in items]


def audio_order(items: list[data.Utterance], balance: str, rng: random.Random, weights: list[float] | None = None) -> list[int]:
    """One epoch's item indices: a shuffle of all items, or (``corpus_class``) as many draws
    with replacement, weighted by ``cell_weights``."""
    if balance == "corpus_class":
        return rng.choices(range(len(items)), weights=weights if weights is not None else cell_weights(items), k=len(items))
    order = list(range(len(items)))
    rng.shuffle(order)
    return order
