"""Evaluate a model folder through the runtime, as a user would run it.

    python -m export.evaluate --model-dir weights/emotech --out weights/emotech/eval

Modes on the test splits (speaker-independent for audio):
- ``audio``: RAVDESS test actors 21-24, no transcript;
- ``text``: GoEmotions (Ekman, single-label rows) test set, no audio;
- ``audio+own_text``: RAVDESS test clips with their real (neutral) sentence;
- ``audio+same_label_text``: RAVDESS test clips paired with a GoEmotions test text of the
  same label (the congruent pairing; seeded).
For each: per-class precision/recall/F1, accuracy, unweighted accuracy (mean per-class
recall), macro-F1, a confusion-matrix PNG, and expected calibration error before (T=1)
and after the spec's temperature. Everything goes to ``OUT/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from export import data
from export.metrics import classification_report, expected_calibration_error, plot_confusion
from runtime.postprocess import calibrated_probs, mode_of
from runtime.recognizer import EmotionRecognizer, Item

MODE_TITLES = {
    "audio": "RAVDESS test (actors 21-24), audio only",
    "text": "GoEmotions Ekman test, text only",
    "audio+own_text": "RAVDESS test + own neutral sentence",
    "audio+same_label_text": "RAVDESS test + same-label GoEmotions text",
}


def logits_for(rec: EmotionRecognizer, items: list[Item], batch: int = 32, desc: str = "") -> np.ndarray:
    """Raw logits (engine output, before calibration) in item order."""
    order = sorted(range(len(items)), key=lambda i: (0 if items[i].audio is None else items[i].audio.size, len(items[i].text or "")))
    out = np.zeros((len(items), len(rec.labels)), dtype=np.float32)
    for s in tqdm(range(0, len(order), batch), desc=desc, leave=False):
        idx = order[s : s + batch]
        out[idx] = rec.engine.infer(rec.build_feed([items[i] for i in idx]))
    return out


def score_mode(logits: np.ndarray, y: np.ndarray, mode_key: str, rec: EmotionRecognizer) -> dict:
    labels = list(rec.labels)
    t = rec.spec.temperature[mode_key]
    before = calibrated_probs(logits, np.ones(len(logits)))
    after = calibrated_probs(logits, np.full(len(logits), t))
    report = classification_report(y, logits.argmax(1), labels)
    report["temperature"] = t
    report["ece_before"] = expected_calibration_error(before, y)
    report["ece_after"] = expected_calibration_error(after, y)
    return report


def evaluate(args: argparse.Namespace) -> dict:
    rec = EmotionRecognizer.load(args.model_dir, engine=args.engine, precision=args.precision, device=args.device)
    labelset = data.LabelSet("spec", rec.labels, data.load_labelset(args.labelset).maps)
    root = Path(args.data_root)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    t0 = time.time()

    audio_items = data.ravdess_split(root / "ravdess", labelset, "test")
    text_items = data.load_goemotions(root / "text" / "goemotions_ekman" / "test.tsv", labelset)
    by_label: dict[int, list[str]] = {}
    for u in text_items:
        by_label.setdefault(u.label, []).append(u.text)
    if args.limit:
        audio_items = random.Random(0).sample(audio_items, min(args.limit, len(audio_items)))
        text_items = random.Random(0).sample(text_items, min(args.limit, len(text_items)))
    clips = [rec.prepare(audio=u.path).audio for u in tqdm(audio_items, desc="decode", leave=False)]
    y_audio = np.array([u.label for u in audio_items])
    rng = random.Random(args.seed)
    congruent = [rng.choice(by_label[u.label]) for u in audio_items]
    sets = {
        "audio": ([Item(c, None) for c in clips], y_audio),
        "text": ([Item(None, u.text) for u in text_items], np.array([u.label for u in text_items])),
        "audio+own_text": ([Item(c, u.text) for c, u in zip(clips, audio_items)], y_audio),
        "audio+same_label_text": ([Item(c, t) for c, t in zip(clips, congruent)], y_audio),
    }
    for name, (items, y) in sets.items():
        logits = logits_for(rec, items, desc=name)
        key = mode_of(items[0].audio is not None, items[0].text is not None)
        results[name] = score_mode(logits, y, key, rec)
        results[name]["title"] = MODE_TITLES[name]
        plot_confusion(np.array(results[name]["confusion"]), list(rec.labels), MODE_TITLES[name], out / f"confusion_{name.replace('+', '_')}.png")
        r = results[name]
        print(
            f"{name:>22}: n={r['n']:5d} UA={r['unweighted_accuracy']:.4f} WA={r['accuracy']:.4f} "
            f"macro-F1={r['macro_f1']:.4f} ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f} (T={r['temperature']:.3f})",
            flush=True,
        )
    metrics = {
        "model_dir": str(rec.spec.root),
        "engine": rec.engine.describe(),
        "command": args.command_line,
        "seconds": round(time.time() - t0, 1),
        "results": results,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rec.close()
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a model folder through the runtime.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-dir", default=None, help="model folder (default: the bundled weights)")
    p.add_argument("--data-root", default=str(data.DEFAULT_DATA_ROOT))
    p.add_argument("--labelset", default="emotech7", help="gives the corpus label maps")
    p.add_argument("--engine", default="ort", choices=["ort", "torch", "trt"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded subsample (smoke tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of the congruent text pairing")
    p.add_argument("--out", default="eval", help="folder for metrics.json and confusion PNGs")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.command_line = "python -m export.evaluate " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    evaluate(args)


if __name__ == "__main__":
    main()
