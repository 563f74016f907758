"""What the stream's score smoothing does to accuracy, on simulated conversations.

    python -m export.smoothing_eval --data ../shared/data --out benchmarks/results/intel-xeon-2c/smoothing.json

No corpus here has real conversations with emotion labels per utterance, so conversations
are simulated from RAVDESS validation clips (actors 19-20, which the recipe was allowed
to look at): a conversation is one actor's 20 utterances, one every ``--spacing-s``
seconds; the emotion of the next utterance stays the same with probability 1 - q and is
drawn anew (uniformly from the 7 classes, so possibly the same) with probability q, and
each utterance is a random clip of that actor with that emotion, scored audio-only by
the model. For each half-life the smoothed label (``runtime.server.smoothing``) is
compared with the truth, as is the raw per-utterance label (half-life 0). q = 1 is the
worst case for smoothing: every utterance independent of the previous one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from export.asr_eval import unweighted_accuracy
from export.data import RAVDESS_SPLIT, load_labelset, load_ravdess
from runtime.recognizer import EmotionRecognizer
from runtime.server.smoothing import ScoreSmoother

HALF_LIVES_S = (0.0, 2.0, 5.0, 10.0, 20.0)
SWITCH_PROBABILITIES = (0.1, 0.25, 0.5, 1.0)


def simulate(scores: np.ndarray, labels: np.ndarray, actors: np.ndarray, q: float, half_lives: tuple[float, ...],
             conversations: int, length: int, spacing_s: float, seed: int) -> dict[float, tuple[float, float]]:
    """(accuracy, UA) of the smoothed labels per half-life, over simulated conversations."""
    rng = np.random.default_rng(seed)
    k = scores.shape[1]
    truth: list[int] = []
    predicted: dict[float, list[int]] = {h: [] for h in half_lives}
    names = [str(i) for i in range(k)]
    for _ in range(conversations):
        actor = rng.choice(np.unique(actors))
        emotion = int(rng.integers(k))
        smoothers = {h: ScoreSmoother(h) for h in half_lives}
        for step in range(length):
            if step and rng.random() < q:
                emotion = int(rng.integers(k))
            pool = np.flatnonzero((actors == actor) & (labels == emotion))
            clip = int(rng.choice(pool))
            truth.append(emotion)
            for h, smoother in smoothers.items():
                out = smoother.update(dict(zip(names, scores[clip])), step * spacing_s)
                predicted[h].append(int(out["label"]))
    y = np.array(truth)
    return {h: (float((np.array(p) == y).mean()), unweighted_accuracy(list(y), p, k)) for h, p in predicted.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.smoothing_eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding ravdess/")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the table")
    p.add_argument("--model-dir", default=None, help="model folder (default: the bundled weights)")
    p.add_argument("--conversations", type=int, default=2000, help="simulated conversations per switch probability")
    p.add_argument("--length", type=int, default=20, help="utterances per conversation")
    p.add_argument("--spacing-s", type=float, default=4.0, help="seconds from one utterance's end to the next one's")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    labelset = load_labelset("emotech7")
    clips = load_ravdess(args.data / "ravdess", labelset, RAVDESS_SPLIT["val"])
    if not clips:
        p.error(f"no RAVDESS validation clips under {args.data / 'ravdess'}")
    rec = EmotionRecognizer.load(args.model_dir)
    preds = rec.predict(audio=[c.path for c in clips])
    rec.close()
    scores = np.array([[pr.scores[name] for name in rec.labels] for pr in preds])
    labels = np.array([c.label for c in clips])
    actors = np.array([c.speaker for c in clips])
    table = {}
    for q in SWITCH_PROBABILITIES:
        result = simulate(scores, labels, actors, q, HALF_LIVES_S, args.conversations, args.length, args.spacing_s, args.seed)
        table[str(q)] = {str(h): {"accuracy": acc, "ua": ua} for h, (acc, ua) in result.items()}
    body = {"command": "python -m export.smoothing_eval " + " ".join(sys.argv[1:] if argv is None else argv),
            "clips": len(clips), "spacing_s": args.spacing_s, "length": args.length, "conversations": args.conversations,
            "by_switch_probability": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    print("| switch probability q | " + " | ".join(f"half-life {h:g} s" for h in HALF_LIVES_S) + " |")
    print("|---|" + "---:|" * len(HALF_LIVES_S))
    for q, row in table.items():
        print(f"| {q} | " + " | ".join(f"{row[str(h)]['ua']:.3f}" for h in HALF_LIVES_S) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
