"""Classification metrics, calibration error and temperature fitting (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """Per-class precision/recall/F1 and support, accuracy (WA), unweighted accuracy (UA =
    mean per-class recall over classes present) and macro-F1 (over classes present)."""
    k = len(labels)
    cm = confusion(y_true, y_pred, k)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    return {
        "n": int(len(y_true)),
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "unweighted_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            labels[i]: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i in range(k)
        },
        "confusion": cm.tolist(),
    }


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence over ``bins`` equal-width bins."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def coverage_curve(confidence: np.ndarray, correct: np.ndarray, thresholds: tuple[float, ...]) -> list[dict]:
    """Per threshold t: the share of items whose top score is at least t (coverage), their
    accuracy, and the accuracy of the rest (the items an ``uncertain`` flag at t would mark)."""
    rows = []
    for t in thresholds:
        keep = confidence >= t
        rows.append({
            "threshold": float(t),
            "coverage": float(keep.mean()),
            "accuracy": float(correct[keep].mean()) if keep.any() else None,
            "accuracy_below": float(correct[~keep].mean()) if (~keep).any() else None,
            "n": int(keep.sum()),
        })  # fmt: skip
    return rows


def uncertain_threshold(confidence: np.ndarray, correct: np.ndarray, step: float = 0.05, min_items: int = 10) -> float:
    """The top-score threshold of the ``uncertain`` flag: the upper edge of the highest
    ``step``-wide score bin (of at least ``min_items`` items) whose predictions are right
    less than half the time, so a flagged prediction is one that, judged by the items that
    scored like it, is more likely wrong than right. 0.0 when no bin is."""
    edges = np.round(np.arange(0.0, 1.0 + step / 2, step), 6)
    threshold = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (confidence >= lo) & ((confidence < hi) if hi < 1.0 else (confidence <= hi))
        if sel.sum() >= min_items and correct[sel].mean() < 0.5:
            threshold = float(hi)
    return threshold


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(p[np.arange(len(y_true)), y_true] + 1e-12)))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature minimising validation NLL (golden-section search on log T in [-3, 3])."""
    lo, hi = -3.0, 3.0
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, y_true, np.exp(a)), nll(logits, y_true, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, y_true, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, y_true, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def plot_confusion(cm: np.ndarray, labels: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix as a PNG, counts in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
