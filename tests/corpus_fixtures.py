"""Tiny corpus trees in the layouts of ../shared/data (RAVDESS, nEMO, GoEmotions), made of
synthetic clips, so loaders and the training pipeline run offline in seconds."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import encode, speechlike

# RAVDESS emotion codes used by the fixtures: 01 neutral, 03 happy, 05 angry, 07 disgust
RAVDESS_CODES = ("01", "03", "05", "07")
NEMO_LABELS = ("neutral", "happy", "angry")
GOEMOTIONS = [
    ("Where is the station?", "neutral"), ("Please close the door.", "neutral"), ("What time is it?", "neutral"),
    ("I love it, this is great!", "joy"), ("Best day ever!", "joy"), ("So happy for you!", "joy"),
    ("I hate you, get out!", "anger"), ("This makes me furious.", "anger"), ("Stop it right now!", "anger"),
    ("That is disgusting.", "disgust"), ("Gross, it smells rotten.", "disgust"), ("Yuck.", "disgust"),
]  # fmt: skip
GOEMOTIONS_LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def clip_bytes(label_index: int, seed: int) -> bytes:
    """A short synthetic clip whose pitch and level depend on its label."""
    clip = speechlike(0.5 + 0.05 * (seed % 4), seed=seed, f0=110.0 + 50.0 * label_index) * (0.4 + 0.15 * label_index)
    return encode(clip, 16000, "WAV")


def make_ravdess(root: Path, actors: tuple[int, ...] = (1, 2, 19, 21), codes: tuple[str, ...] = RAVDESS_CODES) -> Path:
    """``Actor_XX/03-01-EE-01-SS-01-XX.wav`` for each actor, emotion code and statement."""
    for actor in actors:
        folder = root / "ravdess" / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, code in enumerate(codes):
            for statement in ("01", "02"):
                name = f"03-01-{code}-01-{statement}-01-{actor:02d}.wav"
                (folder / name).write_bytes(clip_bytes(i, actor * 10 + i + int(statement)))
    return root / "ravdess"


def make_nemo(root: Path, speakers: tuple[str, ...] = ("EB0", "KS0", "KD0", "IC0"), labels: tuple[str, ...] = NEMO_LABELS, per_label: int = 2) -> Path:
    """nEMO's layout: ``<speaker>/<speaker>_<emotion>_<n>.wav`` and ``manifest.csv``
    (``path,label,text,speaker,gender``; the fixture's clips are WAV, nEMO's OGG)."""
    base = root / "nemo"
    rows = ["path,label,text,speaker,gender"]
    for s_i, speaker in enumerate(speakers):
        (base / speaker).mkdir(parents=True, exist_ok=True)
        for l_i, label in enumerate(labels):
            for n in range(per_label):
                rel = f"{speaker}/{speaker}_{label}_{n}.wav"
                (base / rel).write_bytes(clip_bytes(l_i, 1000 + s_i * 100 + l_i * 10 + n))
                rows.append(f'{rel},{label},"Zdanie numer {n}, po polsku.",{speaker},{"female" if s_i % 2 else "male"}')
    (base / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return base


def make_goemotions(root: Path) -> Path:
    """``text/goemotions_ekman/{train,dev,test}.tsv`` and ``labels.txt``."""
    base = root / "text" / "goemotions_ekman"
    base.mkdir(parents=True, exist_ok=True)
    (base / "labels.txt").write_text("\n".join(GOEMOTIONS_LABELS) + "\n")
    lines = [f"{text}\t{GOEMOTIONS_LABELS.index(label)}\tid{i}" for i, (text, label) in enumerate(GOEMOTIONS)]
    for split in ("train", "dev", "test"):
        (base / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return base
