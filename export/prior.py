"""Fit a deployment prior for neutral on validation data and record it in a model folder.

    python -m export.prior --model-dir weights/emotech --neutral-share 0.5

The training corpora are acted, nearly balanced sets: a model trained on them assumes a
clip is neutral about one time in seven, and a kiosk, robot or call centre hears mostly
plain speech. Out of the training corpora that prior makes the model over-emotional: it
calls plain speech and plain requests happy, sad or surprised. This tool gives the model the
deployment's prior instead (a label-shift correction): one offset ``b`` per mode, added to
neutral's calibrated log-score by the runtime (``spec.json``: ``calibration.prior_log_odds``),
which multiplies neutral's odds by ``e^b``.

``b`` is fitted per mode (audio, text, audio+text) on that mode's validation sets, the ones
the model was selected and calibrated on (RAVDESS actors 19-20, alone and with texts; nEMO's
validation speakers when it was trained on nEMO; GoEmotions dev, and MELD dev when it was
trained on MELD), never on test data: it is the offset in ``[0, --max-offset]`` (steps of
0.05) that maximises the accuracy expected when a share ``--neutral-share`` of the items are
neutral and the rest are spread evenly over the other classes::

    neutral_share * recall(neutral) + (1 - neutral_share) * mean recall(other classes)

(ties: the smallest offset). At ``--neutral-share`` 1/K (K classes) this is unweighted
accuracy, and the offset is near 0 for a calibrated model. The ``uncertain`` thresholds are
fitted again on the shifted validation scores, by the rule ``export.train`` uses. Scores stay
probabilities that sum to 1; they are calibrated for the deployment's prior, not for a
balanced test set. ``--clear`` removes the prior (and restores the thresholds recorded
before it).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from export import data
from export.bundle import read_spec, write_spec
from export.cli import add_logging_arguments, command_line, configure_logging
from export.metrics import uncertain_threshold
from runtime import cli
from runtime.spec import MODES

logger = logging.getLogger(__name__)

NEUTRAL = "neutral"
STEP = 0.05  # grid step of the offset, log-odds


def validation_sets(spec: dict) -> dict[str, list[str]]:
    """Per mode, the named validation sets (``export.evalsets``) of the corpora the model was trained on."""
    audio, text = data.trained_corpora(spec)
    sets = {
        "audio": [*(["ravdess_val"] if "ravdess" in audio else []), *(["nemo_val"] if "nemo" in audio else [])],
        "text": [{"goemotions": "goemotions_dev", "meld": "meld_dev"}[c] for c in text],
        "audio+text": ["ravdess_val+own_text", "ravdess_val+same_label_text"] if "ravdess" in audio else [],
    }
    return {mode: names for mode, names in sets.items() if names}  # a mode without its own validation data gets no prior


def objective(probs: np.ndarray, y: np.ndarray, neutral: int, share: float) -> float:
    """``share * recall(neutral) + (1 - share) * mean recall(other classes present)``."""
    pred = probs.argmax(axis=1)
    others = [np.mean(pred[y == c] == c) for c in np.unique(y) if c != neutral]
    r_neutral = float(np.mean(pred[y == neutral] == neutral)) if (y == neutral).any() else 0.0
    return share * r_neutral + (1 - share) * (float(np.mean(others)) if others else 0.0)


def shifted(probs: np.ndarray, neutral: int, offset: float) -> np.ndarray:
    """``probs`` with ``offset`` added to neutral's log-score, renormalised."""
    z = np.log(np.clip(probs, 1e-300, None))
    z[:, neutral] += offset
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_offset(probs: np.ndarray, y: np.ndarray, neutral: int, share: float, max_offset: float) -> tuple[float, float, float]:
    """The offset maximising ``objective`` on a grid; returns (offset, objective at 0, at the offset)."""
    grid = np.round(np.arange(0.0, max_offset + STEP / 2, STEP), 6)
    values = [objective(shifted(probs, neutral, b), y, neutral, share) for b in grid]
    best = int(np.argmax(values))  # the first maximum: the smallest offset
    return float(grid[best]), float(values[0]), float(values[best])


def unshifted_scores(rec, sets) -> tuple[np.ndarray, np.ndarray]:
    """The validation sets' calibrated scores without any prior already in the spec, and their labels."""
    from export.evaluate import predict_set

    probs, ys = [], []
    for s in sets:
        p = predict_set(rec, s).probs
        offset = np.array([rec.spec.prior_log_odds.get(s.mode, {}).get(k, 0.0) for k in rec.labels])
        z = np.log(np.clip(p, 1e-300, None)) - offset
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        probs.append(e / e.sum(axis=1, keepdims=True))
        ys.append(np.asarray(s.labels))
    return np.concatenate(probs), np.concatenate(ys)


def fit(model_dir: Path, data_root: Path, share: float, max_offset: float, command: str, limit: int | None = None) -> dict:
    """Fit the prior of every mode and write it into ``model_dir/spec.json``; returns the record
    (``limit``: a seeded subsample of at most that many items per validation set, for smoke runs)."""
    from export.evalsets import named_sets
    from runtime.recognizer import EmotionRecognizer

    spec = read_spec(model_dir)
    labels = list(spec["labels"])
    if NEUTRAL not in labels:
        raise ValueError(f"{model_dir} has no {NEUTRAL!r} label ({labels}): there is no neutral prior to fit")
    neutral = labels.index(NEUTRAL)
    rec = EmotionRecognizer.load(model_dir, engine="ort", precision="fp32", device="cpu")
    try:
        labelset = data.LabelSet("spec", rec.labels, data.load_labelset("emotech7").maps)
        offsets, thresholds, record = {}, {}, {}
        for mode, names in validation_sets(spec).items():
            sets = [s.subsample(limit) for s in named_sets(names, data_root, labelset)] if limit else named_sets(names, data_root, labelset)
            probs, y = unshifted_scores(rec, sets)
            b, before, after = fit_offset(probs, y, neutral, share, max_offset)
            p = shifted(probs, neutral, b)
            pred = p.argmax(axis=1)
            offsets[mode] = {NEUTRAL: b}
            thresholds[mode] = uncertain_threshold(p.max(axis=1), pred == y)
            record[mode] = {
                "sets": names, "n": len(y), "offset": b, "objective_without": round(before, 4), "objective_with": round(after, 4),
                "neutral_recall_without": round(float(np.mean(probs.argmax(1)[y == neutral] == neutral)), 4) if (y == neutral).any() else None,
                "neutral_recall_with": round(float(np.mean(pred[y == neutral] == neutral)), 4) if (y == neutral).any() else None,
                "predicted_neutral_without": round(float(np.mean(probs.argmax(1) == neutral)), 4),
                "predicted_neutral_with": round(float(np.mean(pred == neutral)), 4),
            }  # fmt: skip
            logger.info("%s: offset %.2f on %s (%d items): objective %.4f -> %.4f", mode, b, "+".join(names), len(y), before, after)
    finally:
        rec.close()
    cal = spec.setdefault("calibration", {})
    prior = cal.get("prior", {})
    cal["prior"] = {
        "neutral_share": share, "max_offset": max_offset, "command": command, "limit": limit, "modes": record,
        # the thresholds before any prior (None: the spec had none, the runtime's defaults applied)
        "uncertain_below_without": prior["uncertain_below_without"] if "uncertain_below_without" in prior else cal.get("uncertain_below"),
    }  # fmt: skip
    cal["prior_log_odds"] = offsets
    cal["uncertain_below"] = {**cal.get("uncertain_below", {}), **thresholds}
    write_spec(model_dir, spec)
    return cal["prior"]


def clear(model_dir: Path) -> bool:
    """Remove the prior from ``model_dir/spec.json`` (restoring the thresholds it replaced); False if it had none."""
    spec = read_spec(model_dir)
    cal = spec.get("calibration", {})
    if "prior_log_odds" not in cal:
        return False
    prior = cal.pop("prior", {})
    cal.pop("prior_log_odds")
    if prior.get("uncertain_below_without") is not None:
        cal["uncertain_below"] = prior["uncertain_below_without"]
    else:
        cal.pop("uncertain_below", None)
    write_spec(model_dir, spec)
    return True


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m export.prior", __doc__)
    p.add_argument("--model-dir", type=Path, required=True, help="model folder whose spec.json gets the prior")
    p.add_argument("--neutral-share", type=float, default=0.5, help="share of neutral items the deployment expects, in (0, 1)")
    p.add_argument("--max-offset", type=float, default=4.0, help="largest offset tried, log-odds")
    p.add_argument("--data-root", type=Path, default=data.DEFAULT_DATA_ROOT, help="folder with ravdess/, nemo/ and text/ (the validation sets)")
    p.add_argument("--limit", type=int, default=None, help="fit on a seeded subsample of at most N items per validation set (smoke runs)")
    p.add_argument("--clear", action="store_true", help="remove the prior instead of fitting one")
    add_logging_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    if not (args.model_dir / "spec.json").is_file():
        parser.error(f"{args.model_dir} is not a model folder (no spec.json)")
    if args.clear:
        print(f"{args.model_dir}: prior removed" if clear(args.model_dir) else f"{args.model_dir}: no prior to remove")
        return 0
    if not 0.0 < args.neutral_share < 1.0:
        parser.error(f"--neutral-share must be in (0, 1), got {args.neutral_share}")
    if not 0.0 < args.max_offset <= 20.0:
        parser.error(f"--max-offset must be in (0, 20], got {args.max_offset}")
    record = fit(args.model_dir, args.data_root, args.neutral_share, args.max_offset, command_line("python -m export.prior", argv), args.limit)
    for mode in MODES:
        if mode not in record["modes"]:
            print(f"{mode:>10}: no validation set of the training corpora: no prior")
            continue
        r = record["modes"][mode]
        print(
            f"{mode:>10}: neutral offset {r['offset']:.2f} ({'+'.join(r['sets'])}, n={r['n']}): objective {r['objective_without']:.4f} -> "
            f"{r['objective_with']:.4f}, predicted neutral {r['predicted_neutral_without']:.3f} -> {r['predicted_neutral_with']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
