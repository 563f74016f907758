"""Corpus loaders and label sets.

Each loader returns a list of ``Utterance`` with labels already mapped onto a
``LabelSet`` (read from ``labelsets.json`` or a user's JSON of the same shape), so the
label set is data, not code. Corpus labels that the set does not map are dropped.

Layouts:
- RAVDESS: ``Actor_XX/03-01-EE-II-SS-RR-AA.(wav|flac)``; speaker = actor.
- GoEmotions (Ekman TSV): ``text<TAB>label ids<TAB>id`` with ``labels.txt``.
- MELD: ``*_sent_emo.csv`` with Utterance, Speaker, Emotion columns.
- Manifest CSV: ``path,label[,text][,speaker]`` (header row), paths relative to the CSV.
- IEMOCAP: ``Session*/dialog/EmoEvaluation/*.txt``, ``Session*/sentences/wav/<dialog>/<utt>.wav``,
  ``Session*/dialog/transcriptions/<dialog>.txt``; speaker = session + gender.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

LABELSETS_FILE = Path(__file__).with_name("labelsets.json")
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
# The speaker-independent split used everywhere (never mix actors across splits).
RAVDESS_SPLIT = {"train": range(1, 19), "val": range(19, 21), "test": range(21, 25)}
# For comparing training recipes only (``export.train --ravdess-split selection``): six
# validation speakers (360 clips) instead of two, so a recipe's score moves less by chance;
# the test actors stay untouched. Shipped models always use RAVDESS_SPLIT.
RAVDESS_SELECTION_SPLIT = {"train": range(1, 15), "val": range(15, 21), "test": range(21, 25)}
RAVDESS_SPLITS = {"standard": RAVDESS_SPLIT, "selection": RAVDESS_SELECTION_SPLIT}


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
        sets = json.loads(LABELSETS_FILE.read_text())
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
    """A user's CSV ``path,label[,text][,speaker]``; labels are names from the label set."""
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
            items.append(Utterance(label, str(audio) if audio else None, text, row.get("speaker") or None, "manifest"))
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
