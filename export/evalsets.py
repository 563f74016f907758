"""Named evaluation sets (``export.evaluate --sets``) and sets from a user's manifest.

Each set is one modality mode on one list of items, labelled with the model's classes:

| name | items |
|---|---|
| audio | RAVDESS test actors 21-24, no transcript |
| audio+own_text | the same clips with their real (neutral) sentence |
| audio+same_label_text | the same clips, each with a GoEmotions test text of its label (seeded) |
| neutral_audio+emotional_text | RAVDESS test neutral clips, each with one GoEmotions test text of every emotional label (seeded), labelled with the text's label: how often clear words move the answer |
| text | GoEmotions Ekman test (single-label rows) |
| meld_test | MELD test utterances, text only |
| kiosk | ``export/kiosk_requests.csv``: plain kiosk/robot requests (neutral) and a few emotional controls, text only |
| nemo_test / nemo_val / nemo_all | nEMO speakers of ``data.NEMO_SPLIT`` test / val / all nine, no transcript |
| ravdess_val / ravdess_all | RAVDESS actors 19-20 / all 24, no transcript |
| ravdess_val+own_text / ravdess_val+same_label_text | actors 19-20 with their sentence / a GoEmotions dev text of their label (seeded) |
| goemotions_dev / meld_dev | the text corpora's dev sets (validation: thresholds, calibration checks) |

The leave-one-corpus-out check evaluates a model trained on one audio corpus on all
speakers of the other: ``nemo_all`` for RAVDESS-trained models, ``ravdess_all`` for
nEMO-trained ones.

The kiosk requests were written for this project (not taken from any corpus): questions
and requests a kiosk or service robot hears, with and without question marks and
courtesy words, labelled neutral, and 17 clearly emotional controls labelled with their
emotion. A plain request should read as neutral unless its words carry emotion.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from export import data

MODES = ("audio", "text", "audio+text")


@dataclass(frozen=True)
class EvalSet:
    """Items of one mode: audio file paths and/or texts, with their class indices."""

    name: str  # the key of its result in metrics.json
    title: str  # the row title in reports
    audio: tuple[str | None, ...]  # file path per item (None: no audio)
    text: tuple[str | None, ...]  # transcript per item (None: no text)
    labels: np.ndarray  # class index per item

    @property
    def mode(self) -> str:
        has_audio, has_text = self.audio[0] is not None, self.text[0] is not None
        return "audio+text" if has_audio and has_text else "audio" if has_audio else "text"

    def __len__(self) -> int:
        return len(self.labels)

    def subsample(self, n: int | None, seed: int = 0) -> EvalSet:
        """At most ``n`` items (seeded), for smoke runs."""
        if not n or len(self) <= n:
            return self
        keep = sorted(random.Random(seed).sample(range(len(self)), n))
        return EvalSet(self.name, self.title, tuple(self.audio[i] for i in keep), tuple(self.text[i] for i in keep), self.labels[keep])


def from_items(name: str, title: str, items: list[data.Utterance], texts: list[str | None] | None = None) -> EvalSet:
    """A set of ``items``' audio with ``texts`` (default: none); text-only items when they have no audio."""
    audio = tuple(u.path for u in items)
    if texts is None:
        texts = [None if u.path is not None else u.text for u in items]
    return EvalSet(name, title, audio, tuple(texts), np.array([u.label for u in items], dtype=np.int64))


def kiosk_items(labelset: data.LabelSet) -> list[data.Utterance]:
    """The kiosk requests shipped with the package."""
    with resources.as_file(resources.files("export").joinpath("kiosk_requests.csv")) as path:
        return data.load_manifest(Path(path), labelset)


def seeded_pairs(audio_items: list[data.Utterance], by_label: dict[int, list[str]], seed: int) -> list[str]:
    """A text of each clip's own label, drawn with ``seed``."""
    rng = random.Random(seed)
    return [rng.choice(by_label[u.label]) for u in audio_items]


def emotional_text_pairs(neutral_items: list[data.Utterance], by_label: dict[int, list[str]], neutral: int, seed: int) -> list[tuple[data.Utterance, str, int]]:
    """Each neutral clip with one text of every other label present, drawn with ``seed``."""
    rng = random.Random(seed)
    return [(u, rng.choice(by_label[k]), k) for u in neutral_items for k in sorted(by_label) if k != neutral]


def named_sets(names: list[str], root: Path, labelset: data.LabelSet, seed: int = 0) -> list[EvalSet]:
    """The sets ``names`` (see the module docstring) from the corpora under ``root``, in order.

    Raises:
        ValueError: an unknown name.
        FileNotFoundError: a corpus the set needs is not under ``root``.
    """
    unknown = [n for n in names if n not in NAMED]
    if unknown:
        raise ValueError(f"unknown evaluation set(s) {unknown}; known: {', '.join(NAMED)}")
    cache: dict[str, object] = {}

    def once(key: str, make: Callable[[], object]):
        if key not in cache:
            cache[key] = make()
        return cache[key]

    ctx = Context(Path(root), labelset, seed, once)
    return [NAMED[n][1](ctx) for n in names]


@dataclass(frozen=True)
class Context:
    root: Path
    labelset: data.LabelSet
    seed: int
    once: Callable

    def ravdess(self, actors: range) -> list[data.Utterance]:
        items = self.once(f"ravdess{actors}", lambda: data.load_ravdess(self.root / "ravdess", self.labelset, actors))
        if not items:
            raise FileNotFoundError(f"no RAVDESS clips under {self.root / 'ravdess'}")
        return items

    def nemo(self, speakers: tuple[str, ...] | None) -> list[data.Utterance]:
        return self.once(f"nemo{speakers}", lambda: data.load_nemo(self.root / "nemo", self.labelset, speakers))

    def text(self, corpus: str, split: str) -> list[data.Utterance]:
        return self.once(f"{corpus}{split}", lambda: data.text_split(self.root, corpus, self.labelset, split))

    def by_label(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for u in self.text("goemotions", "test"):
            out.setdefault(u.label, []).append(u.text)
        return out


def _paired_same(ctx: Context) -> EvalSet:
    items = ctx.ravdess(data.RAVDESS_SPLIT["test"])
    return from_items("audio+same_label_text", "RAVDESS test + same-label GoEmotions text", items, seeded_pairs(items, ctx.by_label(), ctx.seed))


def _val_paired(ctx: Context, kind: str) -> EvalSet:
    items = ctx.ravdess(data.RAVDESS_SPLIT["val"])
    if kind == "own":
        return from_items("ravdess_val+own_text", NAMED["ravdess_val+own_text"][0], items, [u.text for u in items])
    by_label: dict[int, list[str]] = {}
    for u in ctx.text("goemotions", "val"):
        by_label.setdefault(u.label, []).append(u.text)
    return from_items("ravdess_val+same_label_text", NAMED["ravdess_val+same_label_text"][0], items, seeded_pairs(items, by_label, ctx.seed))


def _neutral_emotional(ctx: Context) -> EvalSet:
    neutral = ctx.labelset.labels.index("neutral")
    clips = [u for u in ctx.ravdess(data.RAVDESS_SPLIT["test"]) if u.label == neutral]
    pairs = emotional_text_pairs(clips, ctx.by_label(), neutral, ctx.seed)
    return EvalSet(
        "neutral_audio+emotional_text",
        "RAVDESS test neutral clips + an emotional GoEmotions text (label: the text's)",
        tuple(u.path for u, _, _ in pairs),
        tuple(t for _, t, _ in pairs),
        np.array([k for _, _, k in pairs], dtype=np.int64),
    )


NAMED: dict[str, tuple[str, Callable[[Context], EvalSet]]] = {
    "audio": ("RAVDESS test (actors 21-24), audio only", lambda c: from_items("audio", NAMED["audio"][0], c.ravdess(data.RAVDESS_SPLIT["test"]))),
    "text": ("GoEmotions Ekman test, text only", lambda c: from_items("text", NAMED["text"][0], c.text("goemotions", "test"))),
    "audio+own_text": (
        "RAVDESS test + own neutral sentence",
        lambda c: from_items("audio+own_text", NAMED["audio+own_text"][0], c.ravdess(data.RAVDESS_SPLIT["test"]), [u.text for u in c.ravdess(data.RAVDESS_SPLIT["test"])]),
    ),
    "audio+same_label_text": ("RAVDESS test + same-label GoEmotions text", _paired_same),
    "neutral_audio+emotional_text": ("RAVDESS test neutral clips + an emotional GoEmotions text", _neutral_emotional),
    "meld_test": ("MELD test, text only", lambda c: from_items("meld_test", NAMED["meld_test"][0], c.text("meld", "test"))),
    "kiosk": ("Kiosk requests (export/kiosk_requests.csv), text only", lambda c: from_items("kiosk", NAMED["kiosk"][0], kiosk_items(c.labelset))),
    "nemo_test": ("nEMO test speakers (IC0, SM0), audio only", lambda c: from_items("nemo_test", NAMED["nemo_test"][0], c.nemo(data.NEMO_SPLIT["test"]))),
    "nemo_val": ("nEMO validation speakers (KD0, TP0), audio only", lambda c: from_items("nemo_val", NAMED["nemo_val"][0], c.nemo(data.NEMO_SPLIT["val"]))),
    "nemo_all": ("nEMO, all 9 speakers, audio only", lambda c: from_items("nemo_all", NAMED["nemo_all"][0], c.nemo(None))),
    "ravdess_val": ("RAVDESS validation (actors 19-20), audio only", lambda c: from_items("ravdess_val", NAMED["ravdess_val"][0], c.ravdess(data.RAVDESS_SPLIT["val"]))),
    "ravdess_all": ("RAVDESS, all 24 actors, audio only", lambda c: from_items("ravdess_all", NAMED["ravdess_all"][0], c.ravdess(range(1, 25)))),
    "ravdess_val+own_text": ("RAVDESS validation + own neutral sentence", lambda c: _val_paired(c, "own")),
    "ravdess_val+same_label_text": ("RAVDESS validation + same-label GoEmotions dev text", lambda c: _val_paired(c, "same")),
    "goemotions_dev": ("GoEmotions Ekman dev, text only", lambda c: from_items("goemotions_dev", NAMED["goemotions_dev"][0], c.text("goemotions", "val"))),
    "meld_dev": ("MELD dev, text only", lambda c: from_items("meld_dev", NAMED["meld_dev"][0], c.text("meld", "val"))),
}

# The model card's rows (``export.evaluate`` without --sets or --test-manifest).
CARD_SETS = ("audio", "text", "audio+own_text", "audio+same_label_text", "neutral_audio+emotional_text", "nemo_test", "meld_test", "kiosk")
# Validation data for choosing the uncertain threshold (never the test splits).
VALIDATION_SETS = ("ravdess_val", "ravdess_val+own_text", "ravdess_val+same_label_text", "goemotions_dev")


def manifest_sets(path: Path, labelset: data.LabelSet, modes: tuple[str, ...] = MODES) -> list[EvalSet]:
    """A user's manifest ``path,label[,text][,speaker]`` as one set per mode in ``modes``:
    rows with audio (audio alone), rows with text (text alone) and rows with both (paired).

    Raises:
        ValueError: a malformed manifest, or one with no rows for any of ``modes``.
    """
    items = data.load_manifest(Path(path), labelset)
    stem = Path(path).stem
    with_audio = [u for u in items if u.path is not None]
    with_text = [u for u in items if u.text is not None]
    both = [u for u in with_audio if u.text is not None]
    out = []
    if "audio" in modes and with_audio:
        out.append(from_items(f"{stem}/audio", f"{stem}, audio only", with_audio, [None] * len(with_audio)))
    if "text" in modes and with_text:
        out.append(EvalSet(f"{stem}/text", f"{stem}, text only", (None,) * len(with_text), tuple(u.text for u in with_text), np.array([u.label for u in with_text], dtype=np.int64)))
    if "audio+text" in modes and both:
        out.append(from_items(f"{stem}/audio+text", f"{stem}, audio + text", both, [u.text for u in both]))
    if not out:
        raise ValueError(f"{path}: no rows to evaluate in mode(s) {', '.join(modes)}")
    return out
