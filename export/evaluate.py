"""Evaluate a model folder through the public runtime API, as a user would run it.

    python -m export.evaluate --model-dir weights/emotech --out eval/shipped         # the model card's sets
    python -m export.evaluate --model-dir DIR --test-manifest test.csv --out eval/mine
    python -m export.evaluate --model-dir DIR --sets nemo_all --robustness --out eval/loco

Items go through ``EmotionRecognizer.predict`` (decoding, resampling, silence trimming,
the engine, calibration and the ``uncertain`` flag), in batches. Sets: the named sets of
``export.evalsets`` (``--sets``; the model card's by default) or a manifest
``path,label[,text][,speaker]`` with paths relative to its folder (``--test-manifest``:
one set per mode its rows allow). For each: per-class precision/recall/F1, accuracy,
unweighted accuracy (mean per-class recall), macro-F1, the share of each predicted class,
a confusion-matrix PNG, expected calibration error before (T = 1) and after the spec's
temperature, and the coverage/accuracy of the ``uncertain`` flag and of a range of
thresholds on the calibrated top score.

``--robustness`` adds, for every set with audio, the same items through fixed channel
conditions (``export.augment``): an 8 kHz telephone line (300-3400 Hz, 8-bit mu-law) and
white noise at 20 and 10 dB SNR (seeded per item).

Writes ``OUT/metrics.json`` and ``OUT/report.md`` (and ``OUT/confusion_*.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from export import augment, data
from export.cli import HelpFormatter, add_logging_arguments, command_line, configure_logging
from export.evalsets import CARD_SETS, MODES, NAMED, EvalSet, manifest_sets, named_sets
from export.metrics import classification_report, coverage_curve, expected_calibration_error, plot_confusion, uncertain_threshold
from runtime import cli
from runtime.audio import read_audio, to_model_rate
from runtime.errors import EmotionError
from runtime.recognizer import EmotionRecognizer

logger = logging.getLogger(__name__)

CONDITIONS = {  # name -> (title, transform of a 16 kHz clip given a per-item seed)
    "telephone": ("8 kHz telephone (300-3400 Hz, mu-law)", lambda y, seed: augment.telephone(y)),
    "noise20": ("white noise, 20 dB SNR", lambda y, seed: augment.within_range(augment.white_noise(y, 20.0, seed))),
    "noise10": ("white noise, 10 dB SNR", lambda y, seed: augment.within_range(augment.white_noise(y, 10.0, seed))),
}
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))  # the coverage curve's top-score thresholds
CHUNK = 256  # items per predict call: progress is logged per chunk


class Scored(NamedTuple):
    """A set's answers through the runtime."""

    probs: np.ndarray  # (n, classes) calibrated scores in the model's label order
    uncertain: np.ndarray  # (n,) bool: the ``uncertain`` flag of each prediction


def predict_set(rec: EmotionRecognizer, s: EvalSet, condition: str | None = None, seed: int = 0) -> Scored:
    """Calibrated scores and uncertain flags of ``s``'s items through ``rec.predict``; with
    ``condition``, the decoded clips pass through that channel first (item i's noise drawn
    from ``seed + i``)."""
    probs = np.zeros((len(s), len(rec.labels)))
    flags = np.zeros(len(s), dtype=bool)
    for first in range(0, len(s), CHUNK):
        idx = range(first, min(first + CHUNK, len(s)))
        audio = [s.audio[i] for i in idx]
        if condition is not None:
            audio = [CONDITIONS[condition][1](decoded(a, rec), seed + i) for a, i in zip(audio, idx)]
        preds = rec.predict(audio=audio if s.audio[0] is not None else None, text=[s.text[i] for i in idx] if s.text[0] is not None else None, sample_rate=rec.sample_rate)
        for i, p in zip(idx, preds):
            probs[i] = [p.scores[k] for k in rec.labels]
            flags[i] = p.uncertain
        logger.debug("%s%s: %d/%d", s.name, f"@{condition}" if condition else "", idx[-1] + 1, len(s))
    return Scored(probs, flags)


def decoded(path: str, rec: EmotionRecognizer) -> np.ndarray:
    """A file as the model's float32 mono at its rate, before silence trimming."""
    samples, rate, label = read_audio(path)
    return to_model_rate(samples, rate, rec.spec.frontend, label)


def score_set(scored: Scored, y: np.ndarray, mode: str, rec: EmotionRecognizer) -> dict:
    """Metrics of one set from ``predict_set``'s output."""
    labels = list(rec.labels)
    probs, flags = scored
    t = rec.spec.temperature[mode]
    offset = np.array([rec.spec.prior_log_odds.get(mode, {}).get(k, 0.0) for k in labels])
    # The engine's logits are T * (log p - prior offset) up to a per-row constant, so the
    # raw (T = 1, no prior) scores follow exactly.
    with np.errstate(divide="ignore"):
        z = t * (np.log(probs) - offset)
    before = np.exp(z - z.max(axis=1, keepdims=True))
    before /= before.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    report = classification_report(y, pred, labels)
    correct = pred == y
    threshold = rec.spec.uncertain_below[mode]
    report.update(
        mode=mode,
        temperature=t,
        prior_log_odds=rec.spec.prior_log_odds.get(mode, {}),
        ece_before=expected_calibration_error(before, y),
        ece_after=expected_calibration_error(probs, y),
        predicted_share={k: float(np.mean(pred == i)) for i, k in enumerate(labels)},
        uncertain={
            "threshold": threshold,
            "coverage": float(np.mean(~flags)),
            "accuracy_certain": float(correct[~flags].mean()) if (~flags).any() else None,
            "accuracy_uncertain": float(correct[flags].mean()) if flags.any() else None,
            "curve": coverage_curve(probs.max(axis=1), correct, THRESHOLDS),
            "rule_threshold": uncertain_threshold(probs.max(axis=1), correct),
        },
    )
    return report


def evaluate(
    rec: EmotionRecognizer,
    sets: list[EvalSet],
    out: Path,
    *,
    robustness: bool = False,
    seed: int = 0,
    command: str | None = None,
) -> dict:
    """Metrics of ``rec`` on ``sets`` (and, with ``robustness``, their audio under each of
    ``CONDITIONS``), written to ``out/metrics.json``, ``out/report.md`` and confusion PNGs.

    Returns:
        The metrics as written: ``results`` (set name -> metrics), ``robustness``
        (``set@condition`` -> metrics), and the model, engine, command and seconds.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results: dict[str, dict] = {}
    robust: dict[str, dict] = {}
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # mode -> (top score, correct) per set
    for s in sets:
        scored = predict_set(rec, s, seed=seed)
        pooled.setdefault(s.mode, []).append((scored.probs.max(axis=1), scored.probs.argmax(axis=1) == s.labels))
        r = score_set(scored, s.labels, s.mode, rec)
        r["title"] = s.title
        results[s.name] = r
        plot_confusion(np.array(r["confusion"]), list(rec.labels), s.title, out / f"confusion_{safe_name(s.name)}.png")
        logger.info(
            "%s: n=%d UA=%.4f WA=%.4f macro-F1=%.4f ECE %.4f -> %.4f (T=%.3f) coverage %.3f",
            s.name, r["n"], r["unweighted_accuracy"], r["accuracy"], r["macro_f1"], r["ece_before"], r["ece_after"], r["temperature"], r["uncertain"]["coverage"],
        )  # fmt: skip
        if robustness and s.audio[0] is not None:
            for cond, (title, _) in CONDITIONS.items():
                rr = score_set(predict_set(rec, s, cond, seed), s.labels, s.mode, rec)
                rr.update(title=f"{s.title}; {title}", set=s.name, condition=cond)
                robust[f"{s.name}@{cond}"] = rr
                logger.info("%s@%s: UA=%.4f WA=%.4f", s.name, cond, rr["unweighted_accuracy"], rr["accuracy"])
    metrics = {
        "model_dir": str(rec.spec.root),
        "engine": rec.engine.describe(),
        "command": command,
        "seconds": round(time.time() - t0, 1),
        "labels": list(rec.labels),
        "results": results,
        "robustness": robust,
        # the uncertain-flag rule on all of this run's sets of each mode together
        "uncertain_rule": {m: uncertain_threshold(np.concatenate([c for c, _ in v]), np.concatenate([k for _, k in v])) for m, v in pooled.items()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from export.report import render

    (out / "report.md").write_text(render(metrics))
    return metrics


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.evaluate", description="Evaluate a model folder through the runtime API.", formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="folder for metrics.json, report.md and the confusion PNGs")
    p.add_argument("--test-manifest", default=None, help="CSV path,label[,text][,speaker] with paths relative to its folder: evaluate on it (and on --sets only if given)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="with --test-manifest: which modes to evaluate (rows with audio, with text, with both)")
    p.add_argument(
        "--sets", nargs="+", choices=list(NAMED), default=None, metavar="SET",
        help=f"named sets (export/evalsets.py): {', '.join(NAMED)}; without it (and without --test-manifest): the model card's ({', '.join(CARD_SETS)})",
    )  # fmt: skip
    p.add_argument("--robustness", action="store_true", help="also evaluate every audio set through the telephone channel and white noise at 20 and 10 dB SNR")
    p.add_argument("--data-root", default=str(data.default_data_root()), help="folder with ravdess/, nemo/ and text/ (named sets)")
    p.add_argument("--labelset", default="emotech7", help="gives the corpus label maps for the named sets")
    cli.add_model_args(p)
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded subsample of at most N items per set (smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the text pairings and the noise")
    add_logging_arguments(p)
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    try:
        rec = EmotionRecognizer.load(args.model_dir, engine=args.engine, precision=args.precision, device=args.device)
    except (EmotionError, ValueError) as e:
        parser.error(str(e))
    try:
        labelset = data.LabelSet("spec", rec.labels, data.load_labelset(args.labelset).maps)
        if args.test_manifest:
            sets = manifest_sets(Path(args.test_manifest), labelset, tuple(args.modes))
            sets += named_sets(args.sets, Path(args.data_root), labelset, args.seed) if args.sets else []
        else:
            sets = named_sets(args.sets or list(CARD_SETS), Path(args.data_root), labelset, args.seed)
    except (ValueError, FileNotFoundError) as e:
        rec.close()
        parser.error(str(e))
    sets = [s.subsample(args.limit, args.seed) for s in sets]
    try:
        return evaluate(rec, sets, Path(args.out), robustness=args.robustness, seed=args.seed, command=command_line("python -m export.evaluate", argv))
    except EmotionError as e:  # an item the runtime refuses (unreadable, silent, too short or long)
        parser.exit(1, f"{parser.prog}: cannot evaluate: {e}\n")
    finally:
        rec.close()


if __name__ == "__main__":
    main()
