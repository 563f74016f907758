"""Corpus loaders and label sets.

Each loader returns a list of ``Utterance`` with labels already mapped onto a
``LabelSet`` (read from ``labelsets.json`` or a user's JSON of the same shape), so the
label set is data, not code. Corpus labels that the set does not map are dropped.

Layouts:
- RAVDESS: ``Actor_XX/03-01-EE-II-SS-RR-AA.(wav|flac)``; speaker = actor.
- nEMO: ``manifest.csv`` (``path,label,text,speaker,gender``, labels already in the project's
  names) beside ``<speaker>/<speaker>_<emotion>_<n>.ogg``; speaker = actor.
- GoEmotions (Ekman TSV): ``text<TAB>label ids<TAB>id`` with ``labels.txt``.
- MELD: ``*_sent_emo.csv`` with Utterance, Speaker, Emotion columns.
- Manifest CSV: ``path,label[,text][,speaker][,corpus]`` (header row), paths relative to the
  CSV; an empty ``path`` is a text-only item.
- IEMOCAP: ``Session*/dialog/EmoEvaluation/*.txt``, ``Session*/sentences/wav/<dialog>/<utt>.wav``,
  ``Session*/dialog/transcriptions/<dialog>.txt``; speaker = session + gender.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from export.config import DataConfig

logger = logging.getLogger(__name__)


def default_data_root() -> Path:
    """``$EMOTECH_DATA_ROOT``, else ``../shared/data`` from the working directory (the
    corpora's place beside a checkout, for commands run from its root)."""
    env = os.environ.get("EMOTECH_DATA_ROOT")
    return Path(env) if env else Path.cwd().resolve().parent / "shared" / "data"


DEFAULT_DATA_ROOT = default_data_root()

RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
# The speaker-independent split used everywhere (never mix actors across splits).
RAVDESS_SPLIT = {"train": range(1, 19), "val": range(19, 21), "test": range(21, 25)}
# For comparing training recipes only (``export.train --ravdess-split selection``): six
# validation speakers (360 clips) instead of two, so a recipe's score moves less by chance;
# the test actors stay untouched. Shipped models always use RAVDESS_SPLIT.
RAVDESS_SELECTION_SPLIT = {"train": range(1, 15), "val": range(15, 21), "test": range(21, 25)}
RAVDESS_SPLITS = {"standard": RAVDESS_SPLIT, "selection": RAVDESS_SELECTION_SPLIT}

# nEMO's speaker-independent split: 9 actors (4 female, 5 male), a female and a male actor
# each for validation and test. The test and validation actors recorded all six emotions
# (MK0 has no surprised clips, MP0 only 256 clips), so they train.
NEMO_SPLIT = {
    "train": ("EB0", "MK0", "KS0", "MP0", "WR0"),  # female EB0, MK0; male KS0, MP0, WR0
    "val": ("KD0", "TP0"),  # female KD0, male TP0
    "test": ("IC0", "SM0"),  # female IC0, male SM0
}
NEMO_SPEAKERS = tuple(sorted(s for part in NEMO_SPLIT.values() for s in part))


@dataclass(frozen=True)
class LabelSet:
    """An ordered label list and, per corpus, a map from corpus labels to those labels."""

    name: str
    labels: tuple[str, ...]
    maps: dict[str, dict[str, str]]

    def index(self, corpus: str, corpus_label: str) -> int | None:
        """Class index of a corpus label, or None when the set does not use it."""
        if corpus == "manifest":
            target = corpus_label
        else:
            target = self.maps.get(corpus, {}).get(corpus_label)
        if target is None or target not in self.labels:
            return None
        return self.labels.index(target)


def load_labelset(name_or_path: str = "emotech7") -> LabelSet:
    """A named set from ``labelsets.json``, or a JSON file with ``labels`` and ``maps``."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        name = path.stem
    else:
        sets = json.loads(resources.files("export").joinpath("labelsets.json").read_text(encoding="utf-8"))
        if name_or_path not in sets or name_or_path.startswith("_"):
            known = ", ".join(k for k in sets if not k.startswith("_"))
            raise ValueError(f"unknown label set {name_or_path!r}; known: {known}, or a path to a .json file")
        data, name = sets[name_or_path], name_or_path
    labels = tuple(data["labels"])
    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise ValueError(f"label set {name}: labels must be at least two distinct names")
    return LabelSet(name=name, labels=labels, maps=data.get("maps", {}))


@dataclass(frozen=True)
class Utterance:
    """One labelled example: audio path and/or text, with its speaker when known."""

    label: int
    path: str | None = None
    text: str | None = None
    speaker: str | None = None
    corpus: str = ""


_CP1252_CONTROL = re.compile("[\x80-\x9f]")
_MOJIBAKE = {"â€™": "'", "â€˜": "'", "â€œ": '"', "â€\x9d": '"', "â€”": "-", "â€“": "-", "â€¦": "...", "Ã©": "é"}
_PUNCT = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-", "\u2013": "-", "\u2026": "..."}


def normalize_text(text: str) -> str:
    """Repair mis-encoded characters (cp1252 bytes read as latin-1, UTF-8 read as cp1252)
    and fold typographic punctuation to ASCII."""
    for bad, good in _MOJIBAKE.items():
        text = text.replace(bad, good)
    text = _CP1252_CONTROL.sub(lambda m: bytes([ord(m.group())]).decode("cp1252", errors="ignore"), text)
    for bad, good in _PUNCT.items():
        text = text.replace(bad, good)
    return " ".join(text.split())


def parse_ravdess_name(name: str) -> dict[str, str]:
    """Fields of a RAVDESS file name ``MM-VC-EE-II-SS-RR-AA``."""
    parts = Path(name).stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a RAVDESS file name: {name}")
    keys = ("modality", "channel", "emotion", "intensity", "statement", "repetition", "actor")
    return dict(zip(keys, parts))


def load_ravdess(root: Path, labelset: LabelSet, actors: Iterable[int] | None = None) -> list[Utterance]:
    """RAVDESS speech clips (audio-only modality 03, speech channel 01) of the given actors."""
    wanted = set(actors) if actors is not None else None
    items = []
    for path in sorted(Path(root).glob("Actor_*/*")):
        if path.suffix.lower() not in (".wav", ".flac"):
            continue
        f = parse_ravdess_name(path.name)
        actor = int(f["actor"])
        if (wanted is not None and actor not in wanted) or f["channel"] != "01":
            continue
        label = labelset.index("ravdess", f["emotion"])
        if label is not None:
            text = RAVDESS_STATEMENTS.get(f["statement"])
            items.append(Utterance(label, str(path), text, f"ravdess_{actor:02d}", "ravdess"))
    return items


def ravdess_split(root: Path, labelset: LabelSet, split: str, scheme: str = "standard") -> list[Utterance]:
    """The ``split`` ('train', 'val', 'test') of a speaker split in ``RAVDESS_SPLITS``."""
    return load_ravdess(root, labelset, RAVDESS_SPLITS[scheme][split])


def load_nemo(root: Path, labelset: LabelSet, speakers: Iterable[str] | None = None) -> list[Utterance]:
    """nEMO clips of the given speakers (all when None) from ``root/manifest.csv``.

    The transcript is left out: it is the Polish sentence read (scripted, like RAVDESS's,
    so it carries no emotion), which the English WordPiece tokenizer cannot read.
    """
    root = Path(root)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"no nEMO manifest at {manifest} (set data_root, audio_root or $EMOTECH_DATA_ROOT)")
    wanted = set(speakers) if speakers is not None else None
    items = []
    with manifest.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if wanted is not None and row["speaker"] not in wanted:
                continue
            label = labelset.index("nemo", row["label"].strip())
            if label is not None:
                items.append(Utterance(label, str(root / row["path"]), None, f"nemo_{row['speaker']}", "nemo"))
    return items


def nemo_split(root: Path, labelset: LabelSet, split: str) -> list[Utterance]:
    """The ``split`` ('train', 'val', 'test') of ``NEMO_SPLIT``."""
    return load_nemo(root, labelset, NEMO_SPLIT[split])


def load_goemotions(path: Path, labelset: LabelSet, multilabel: str = "drop") -> list[Utterance]:
    """GoEmotions Ekman TSV. ``multilabel``: 'drop' keeps single-label rows only (the
    default, used for the shipped weights); 'first' keeps the first listed label."""
    path = Path(path)
    names = (path.parent / "labels.txt").read_text().split()
    items = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 2:
                continue
            ids = cols[1].split(",")
            if len(ids) > 1 and multilabel == "drop":
                continue
            label = labelset.index("goemotions", names[int(ids[0])])
            if label is not None:
                items.append(Utterance(label, text=normalize_text(cols[0]), corpus="goemotions"))
    return items


# A surprised reaction phrased as a question: "What?", "Really?!", "Are you serious?", "wow, how?".
SURPRISE_MARKERS = re.compile(
    r"!|^\W*(what|huh|really|seriously|wait)\W*$|\b(wow|whoa|woah|omg|oh my|what the|wtf|really|seriously|no way|holy|"
    r"wait,? what|unbelievable|can'?t believe|are you (serious|kidding)|surprised?|surprising|shock(ed|ing)?|amazed?|amazing)\b",
    re.IGNORECASE,
)
GOEMOTIONS_QUESTIONS = ("surprise", "neutral")  # how training reads GoEmotions' surprise-labelled plain questions


def is_plain_question(text: str) -> bool:
    """A question without an exclamation mark or a word of surprise (``SURPRISE_MARKERS``)."""
    return "?" in text and not SURPRISE_MARKERS.search(text)


def relabel_plain_questions(items: list[Utterance], labelset: LabelSet) -> int:
    """Give GoEmotions items labelled surprise whose text is a plain question the neutral
    label, in place; returns how many.

    GoEmotions' Ekman grouping files curiosity and confusion under surprise, so about half
    of its surprise items are plain questions ("Who exactly are their volunteers?") and a
    model trained on it reads any question as surprised, a kiosk's requests included. The
    label set's surprised is a reaction (RAVDESS's surprised voice, MELD's surprise); a
    question that only asks carries no emotion the voice would show."""
    if not {"surprised", "neutral"} <= set(labelset.labels):
        raise ValueError(f"reading plain questions as neutral needs the labels surprised and neutral; {labelset.name} has {labelset.labels}")
    surprised, neutral = labelset.labels.index("surprised"), labelset.labels.index("neutral")
    n = 0
    for i, u in enumerate(items):
        if u.corpus == "goemotions" and u.label == surprised and u.text and is_plain_question(u.text):
            items[i] = dataclasses.replace(u, label=neutral)
            n += 1
    return n


def load_meld(path: Path, labelset: LabelSet) -> list[Utterance]:
    """MELD ``*_sent_emo.csv`` utterances (text only: MELD audio is not distributed here)."""
    items = []
    with Path(path).open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            label = labelset.index("meld", row["Emotion"].strip().lower())
            if label is not None:
                speaker = f"meld_{row.get('Speaker', '').strip()}"
                items.append(Utterance(label, text=normalize_text(row["Utterance"]), speaker=speaker, corpus="meld"))
    return items


def load_manifest(path: Path, labelset: LabelSet) -> list[Utterance]:
    """A user's CSV ``path,label[,text][,speaker][,corpus]``; labels are names from the
    label set, paths relative to the CSV's folder (empty: a text-only item); ``corpus``
    (default ``manifest``) groups items for class balance across corpora."""
    path = Path(path)
    items = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: manifest needs a header with at least 'path,label'")
        for n, row in enumerate(reader, start=2):
            label = labelset.index("manifest", row["label"].strip())
            if label is None:
                raise ValueError(f"{path}:{n}: label {row['label']!r} is not in {list(labelset.labels)}")
            audio = (path.parent / row["path"]).resolve() if row["path"] else None
            text = normalize_text(row["text"]) if row.get("text") else None
            if audio is None and text is None:
                raise ValueError(f"{path}:{n}: a row needs a path, a text or both")
            corpus = (row.get("corpus") or "").strip() or "manifest"
            items.append(Utterance(label, str(audio) if audio else None, text, row.get("speaker") or None, corpus))
    return items


_EMO_LINE = re.compile(r"^\[(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\]\s+(?P<utt>\S+)\s+(?P<emo>\w+)\s+\[")
_TRN_LINE = re.compile(r"^(?P<utt>Ses\d+[FM]_\S+)\s+\[[^\]]*\]:\s*(?P<text>.*)$")


def load_iemocap(root: Path, labelset: LabelSet, sessions: Iterable[int] | None = None) -> list[Utterance]:
    """IEMOCAP release layout; categorical labels from ``dialog/EmoEvaluation``.

    Speakers are ``SesNN`` + the utterance's gender letter, so a session split is a
    speaker-independent split (the usual leave-one-session-out protocol).
    """
    wanted = set(sessions) if sessions is not None else None
    items = []
    for sess_dir in sorted(Path(root).glob("Session*")):
        num = int(re.sub(r"\D", "", sess_dir.name) or 0)
        if wanted is not None and num not in wanted:
            continue
        texts: dict[str, str] = {}
        for trn in sorted((sess_dir / "dialog" / "transcriptions").glob("*.txt")):
            for line in trn.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _TRN_LINE.match(line.strip())
                if m:
                    texts[m["utt"]] = normalize_text(m["text"])
        for evl in sorted((sess_dir / "dialog" / "EmoEvaluation").glob("*.txt")):
            for line in evl.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _EMO_LINE.match(line.strip())
                if not m:
                    continue
                label = labelset.index("iemocap", m["emo"])
                if label is None:
                    continue
                utt = m["utt"]
                dialog = utt.rsplit("_", 1)[0]
                wav = sess_dir / "sentences" / "wav" / dialog / f"{utt}.wav"
                if not wav.is_file():
                    continue
                gender = utt.rsplit("_", 1)[1][0]
                items.append(Utterance(label, str(wav), texts.get(utt), f"Ses{num:02d}{gender}", "iemocap"))
    return items


def class_counts(items: list[Utterance], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for u in items:
        counts[u.label] += 1
    return counts


@dataclass
class Corpora:
    """The items of a run, per split ('train', 'val')."""

    labels: tuple[str, ...]
    audio: dict[str, list[Utterance]]  # split -> items with audio (each carries its corpus)
    text: dict[str, list[Utterance]]  # split -> text-only items


def audio_split(cfg: DataConfig, corpus: str, labelset: LabelSet, split: str) -> list[Utterance]:
    """One audio corpus's ``split`` ('train' or 'val') as ``cfg`` selects it."""
    root = Path(cfg.audio_root) if cfg.audio_root else Path(cfg.data_root) / corpus
    if corpus == "ravdess":
        return ravdess_split(root, labelset, split, cfg.ravdess_split)
    if corpus == "nemo":
        return nemo_split(root, labelset, split)
    if corpus == "iemocap":
        held_out = {cfg.iemocap_val_session, cfg.iemocap_test_session}
        sessions = {cfg.iemocap_val_session} if split == "val" else set(range(1, 6)) - held_out
        return load_iemocap(root, labelset, sessions)
    if corpus == "manifest":
        return load_manifest(Path(cfg.train_manifest if split == "train" else cfg.val_manifest), labelset)
    raise ValueError(f"unknown audio corpus {corpus!r}")


TEXT_FILES = {  # corpus -> (folder under data_root/text, split -> file)
    "goemotions": ("goemotions_ekman", {"train": "train.tsv", "val": "dev.tsv", "test": "test.tsv"}),
    "meld": ("meld", {"train": "train_sent_emo.csv", "val": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}),
}


def text_split(data_root: Path, corpus: str, labelset: LabelSet, split: str) -> list[Utterance]:
    """A text corpus's ``split`` ('train', 'val' = its dev set, 'test')."""
    folder, files = TEXT_FILES[corpus]
    path = Path(data_root) / "text" / folder / files[split]
    return load_goemotions(path, labelset) if corpus == "goemotions" else load_meld(path, labelset)


def trained_corpora(spec: dict) -> tuple[list[str], list[str]]:
    """The audio and text corpora a model folder's ``spec.json`` (``training``) says it was
    trained on, restricted to the ones read here by name (RAVDESS, nEMO; ``TEXT_FILES``);
    RAVDESS and GoEmotions when the spec does not say."""
    training = spec.get("training") if isinstance(spec.get("training"), dict) else {}
    audio = [c for c in str(training.get("audio_corpus", "ravdess")).split("+") if c in ("ravdess", "nemo")]
    text = [c for c in str(training.get("text_corpus", "goemotions")).split("+") if c in TEXT_FILES]
    return audio or ["ravdess"], text or ["goemotions"]


def load_corpora(cfg: DataConfig, labelset: LabelSet) -> Corpora:
    """Training and validation items of every corpus ``cfg`` names, audio corpora in order.

    Raises:
        FileNotFoundError: a corpus split without items (wrong ``data_root``/``audio_root``).
    """
    audio: dict[str, list[Utterance]] = {"train": [], "val": []}
    for corpus in cfg.audio_corpora:
        for split in audio:
            items = audio_split(cfg, corpus, labelset, split)
            if not items:
                where = cfg.audio_root or Path(cfg.data_root) / corpus
                raise FileNotFoundError(f"no {split} audio for {corpus} under {where} (set data_root, audio_root or $EMOTECH_DATA_ROOT)")
            audio[split] += items
    text: dict[str, list[Utterance]] = {"train": [], "val": []}
    for corpus in cfg.text_corpora:
        for split in text:
            items = text_split(Path(cfg.data_root), corpus, labelset, split)
            if corpus == "goemotions" and cfg.goemotions_questions == "neutral":
                n = relabel_plain_questions(items, labelset)
                logger.info("GoEmotions %s: %d surprise-labelled plain questions read as neutral", split, n)
            text[split] += items
    return Corpora(labelset.labels, audio, text)
