"""How a late-fusion folder's audio weight trades its two kinds of paired items.

    python -m export.zoo.weight_sweep --model-dir weights/seed003-cnn1d --data-root ../shared/data

For each RAVDESS split clip (validation actors 19-20 and test 21-24), paired once with its
own (neutral) sentence and once with a GoEmotions text of its label (dev for validation,
test for test; ``export.zoo.compare``'s congruent pairing), the unweighted accuracy of
``w * p_audio + (1 - w) * p_text`` over a grid of ``w``, from the per-modality scores the
runtime returns (``Prediction.modality_scores``): one engine pass per pairing, every
weight re-fused from it, as ``EmotionRecognizer.load(audio_weight=w)`` would. Prints a
Markdown table per split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from export import data
from export.zoo import corpora
from export.zoo.compare import congruent_texts
from export.zoo.train_sklearn import unweighted_accuracy
from runtime import cli
from runtime.recognizer import EmotionRecognizer, Item

logger = logging.getLogger(__name__)

WEIGHTS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def sweep(rec: EmotionRecognizer, clips: list[np.ndarray], texts: list[str], labels: np.ndarray, weights=WEIGHTS) -> list[float]:
    """UA of the re-fused scores of ``clips`` paired with ``texts``, per weight."""
    preds = rec.run([Item(c, t) for c, t in zip(clips, texts)])
    if any(p.modality_scores is None or set(p.modality_scores) != {"audio", "text"} for p in preds):
        raise ValueError(f"{rec.spec.root}: the engine returned no per-modality scores (spec.json outputs); use --engine ort")
    pa = np.array([list(p.modality_scores["audio"].values()) for p in preds])
    pt = np.array([list(p.modality_scores["text"].values()) for p in preds])
    return [unweighted_accuracy(labels, (w * pa + (1 - w) * pt).argmax(1)) for w in weights]


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("python -m export.zoo.weight_sweep", "Paired-item accuracy of a late-fusion folder over its audio weight.")
    p.add_argument("--model-dir", type=Path, required=True, help="a folder whose graph has per-modality outputs")
    p.add_argument("--data-root", type=Path, default=data.DEFAULT_DATA_ROOT, help="folder with ravdess/ and text/goemotions_ekman/")
    cli.add_logging_args(p)
    args = p.parse_args(argv)
    cli.configure_logging(args, default=logging.INFO)
    labelset = data.load_labelset("emotech7")
    rec = EmotionRecognizer.load(args.model_dir, engine="ort", device="cpu")
    try:
        audio = corpora.ravdess(args.data_root, labelset, rec.spec.frontend)
        text = corpora.goemotions(args.data_root, labelset)
        for split in ("val", "test"):
            clips, y = audio[split].clips, audio[split].labels
            rows = {
                "audio + same-label text": sweep(rec, clips, congruent_texts(y, text[split]), y),
                "audio + its own sentence": sweep(rec, clips, [u.text or "" for u in audio[split].items], y),
            }
            print(f"\nRAVDESS {split} ({len(y)} clips), UA\n")
            print("| audio weight w | " + " | ".join(f"{w:g}" for w in WEIGHTS) + " |")
            print("|---|" + "---:|" * len(WEIGHTS))
            for name, uas in rows.items():
                print(f"| {name} | " + " | ".join(f"{u:.3f}" for u in uas) + " |")
    finally:
        rec.close()


if __name__ == "__main__":
    main()
