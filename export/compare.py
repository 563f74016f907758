"""Accuracy of reduced-precision variants against the FP32 graph on the real test splits.

RAVDESS test actors 21-24 (audio only), nEMO's test speakers when the model was trained on
nEMO (audio only) and GoEmotions test (text only), run with ONNX
Runtime on CPU for ONNX files, or through any engine with ``infer(feed) -> logits``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

MAX_UA_LOSS = 0.01  # largest unweighted-accuracy loss vs FP32 (1 point) a registered variant may have


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compare_with_fp32(rec, variants: dict[str, Any], data_root: Path, limit: int | None = None, batch: int = 32) -> dict:
    """Accuracy of the FP32 graph and of each variant on RAVDESS test actors 21-24 (audio
    only) and GoEmotions test (text only), with the label agreement and the largest
    calibrated-score and raw-logit differences against FP32 on the same feeds.

    ``variants`` maps a name to a fused ONNX file (run on ONNX Runtime CPU, like the FP32
    reference) or to an engine (anything with ``infer(feed) -> logits``, e.g. a
    ``TorchEngine`` or ``TrtEngine``)."""
    import onnxruntime as ort

    from export import data
    from export.metrics import classification_report
    from runtime.recognizer import Item

    labelset = data.LabelSet("spec", rec.labels, data.load_labelset("emotech7").maps)
    root = Path(data_root)
    audio = data.ravdess_split(root / "ravdess", labelset, "test")
    texts = data.load_goemotions(root / "text" / "goemotions_ekman" / "test.tsv", labelset)
    nemo = data.nemo_split(root / "nemo", labelset, "test") if "nemo" in data.trained_corpora(rec.spec.raw)[0] else []
    if limit:
        audio = random.Random(0).sample(audio, min(limit, len(audio)))
        texts = random.Random(0).sample(texts, min(limit, len(texts)))
        nemo = random.Random(0).sample(nemo, min(limit, len(nemo)))
    sets = {
        "audio": ([Item(rec.prepare(audio=u.path).audio, None) for u in audio], np.array([u.label for u in audio]), "RAVDESS test actors 21-24, audio only"),
        "text": ([Item(None, u.text) for u in texts], np.array([u.label for u in texts]), "GoEmotions Ekman test (single-label), text only"),
    }
    if nemo:  # a model trained on nEMO is checked on nEMO's held-out speakers too
        sets["nemo_audio"] = ([Item(rec.prepare(audio=u.path).audio, None) for u in nemo], np.array([u.label for u in nemo]), "nEMO test speakers, audio only")
    opts = ort.SessionOptions()
    opts.inter_op_num_threads = 1
    sessions = {"fp32": ort.InferenceSession(str(rec.spec.graph_file("fused", "fp32")), opts, providers=["CPUExecutionProvider"])}
    for p, v in variants.items():
        sessions[p] = v if hasattr(v, "infer") else ort.InferenceSession(str(v), opts, providers=["CPUExecutionProvider"])
    labels = list(rec.labels)
    out: dict = {"engine": f"onnxruntime {ort.__version__} CPUExecutionProvider", "modes": {}}
    for mode, (items, y, title) in sets.items():
        order = sorted(range(len(items)), key=lambda i: (0 if items[i].audio is None else items[i].audio.size, len(items[i].text or "")))
        y = y[order]
        logits = {p: [] for p in sessions}
        for s in range(0, len(order), batch):
            feed = rec.build_feed([items[i] for i in order[s : s + batch]])
            for p, sess in sessions.items():
                logits[p].append(sess.infer(feed) if hasattr(sess, "infer") else sess.run(["logits"], feed)[0])
        t = rec.spec.temperature["audio" if mode == "nemo_audio" else mode]
        raw = {p: np.concatenate(v) for p, v in logits.items()}
        probs = {p: _softmax(z / t) for p, z in raw.items()}
        res: dict = {"title": title, "n": len(y)}
        for p, pr in probs.items():
            rep = classification_report(y, pr.argmax(1), labels)
            row = {"unweighted_accuracy": rep["unweighted_accuracy"], "accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]}
            if p != "fp32":
                row["label_agreement_vs_fp32"] = float((pr.argmax(1) == probs["fp32"].argmax(1)).mean())
                row["max_score_diff_vs_fp32"] = float(np.abs(pr - probs["fp32"]).max())
                row["max_logit_diff_vs_fp32"] = float(np.abs(raw[p] - raw["fp32"]).max())
                row["ua_loss_vs_fp32"] = res["fp32"]["unweighted_accuracy"] - rep["unweighted_accuracy"]
            res[p] = row
        out["modes"][mode] = res
    return out
