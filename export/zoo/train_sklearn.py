"""Train a scikit-learn system of the model zoo and write its model folder.

    python -m export.zoo.train_sklearn --system lr  --out weights/seed001-lr
    python -m export.zoo.train_sklearn --system rf  --out weights/seed001-rf
    python -m export.zoo.train_sklearn --system svm --out weights/seed004-svm

Recipe (the same data and splits as the shipped EmoTech model, ``export.zoo.corpora``):

1. audio features (``export.zoo.features.AudioStatistics``: 420 frame statistics) of every
   RAVDESS clip; text features (TF-IDF of WordPiece ids -> TruncatedSVD, fitted on the
   GoEmotions training texts) of every text, both computed by the modules the graph runs;
2. an audio classifier on RAVDESS actors 01-18, its hyper-parameters chosen by 6-fold
   actor-grouped cross-validation on those actors (unweighted accuracy); a text classifier
   on GoEmotions train, chosen by macro-F1 on GoEmotions dev;
3. calibration on the validation data (RAVDESS actors 19-20, GoEmotions dev): a temperature
   per modality, then the late-fusion text weight and the ``audio+text`` temperature on
   validation pairs (each clip with its own neutral sentence, and with a GoEmotions dev text
   of its label, as ``export.train`` calibrates EmoTech);
4. the fused graph (``export.zoo.graph``), checked against scikit-learn, and the folder:
   ``spec.json``, ``model.onnx``, ``tokenizer.json``.

Classes are weighted inversely to their frequency in every classifier (RAVDESS has twice as
many neutral clips, as calm is mapped to neutral; GoEmotions is very unbalanced).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import random
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export import data
from export.metrics import classification_report, fit_temperature, softmax
from export.zoo import corpora, features
from export.zoo.graph import (
    EXTRA_OUTPUTS,
    Featurizer,
    FusionParams,
    ScoreKind,
    classifier_parity,
    compose_graph,
    fuse_reference,
    save,
    scores,
)
from runtime import cli
from runtime.frontend import FrontendConfig
from runtime.spec import FORMAT, SPEC_FILE, package_versions, sha256_file, weights_path
from runtime.text import TextEncoder

logger = logging.getLogger(__name__)

GRAPH_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MAX_TOKENS = 128  # as the shipped model: [CLS] + 126 ids + [SEP]
MAX_CHARS = 2000
CV_FOLDS = 6  # actor-grouped folds of RAVDESS actors 01-18 (3 actors each)
TEXT_WEIGHTS = tuple(np.round(np.arange(0.0, 2.01, 0.1), 2))  # late-fusion text weights tried on validation pairs
PARITY_LABEL_AGREEMENT = 0.99  # end to end, graph vs scikit-learn on the same inputs, per mode
PARITY_CLASSIFIER_ATOL = 1e-3  # classifier scores, skl2onnx graph vs scikit-learn, identical float32 features


@dataclass(frozen=True)
class System:
    """One scikit-learn system: its classifiers and their hyper-parameter candidates."""

    architecture: str  # spec.json model.architecture
    description: str
    make: Callable[[str, dict, int], Any]  # (modality, hyper-parameters, seed) -> unfitted estimator
    audio_grid: tuple[dict, ...]
    text_grid: tuple[dict, ...]
    text_svd_dim: int | None  # text features: TF-IDF projected to this many SVD components; None: the TF-IDF vector
    text_train_max: int | None  # subsample of GoEmotions train for the text classifier (None: all)
    score: Callable[[dict], ScoreKind]  # hyper-parameters -> how the classifier's output becomes scores


def _lr(modality: str, hp: dict, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lr = LogisticRegression(C=hp["C"], class_weight="balanced", max_iter=5000, random_state=seed)
    # the sparse TF-IDF vector is used as it is: L2-normalised already, and scaling would densify it
    return lr if modality == "text" else make_pipeline(StandardScaler(), lr)


def _rf(modality: str, hp: dict, seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(class_weight="balanced_subsample", random_state=seed, n_jobs=2, **hp)


def _svm(modality: str, hp: dict, seed: int) -> Any:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), SVC(kernel="rbf", gamma="scale", class_weight="balanced", decision_function_shape="ovr", **hp))


SYSTEMS = {
    "lr": System(
        "SklearnLogisticRegression",
        "Light-weight ML on audio + text features (the RF/LR study): logistic regression",
        _lr,
        audio_grid=tuple({"C": c} for c in (0.003, 0.01, 0.03, 0.1)),
        text_grid=tuple({"C": c} for c in (1.0, 3.0, 10.0)),
        text_svd_dim=None,
        text_train_max=None,
        score=lambda hp: ScoreKind("proba", 1e-6),
    ),
    "rf": System(
        "SklearnRandomForest",
        "Light-weight ML on audio + text features (the RF/LR study): random forest",
        _rf,
        # 100 trees and (text) at most 512 leaves each: skl2onnx stores about 75 bytes per tree
        # node, so the graph stays near 10 MB (docs/model-zoo.md, "Size")
        audio_grid=tuple({"n_estimators": 100, "min_samples_leaf": leaf} for leaf in (1, 3)),
        text_grid=tuple({"n_estimators": 100, "max_leaf_nodes": n} for n in (256, 512)),
        text_svd_dim=None,
        text_train_max=None,
        score=lambda hp: ScoreKind("proba", 0.5 / hp["n_estimators"]),  # half a tree's vote for a class no tree chose
    ),
    "svm": System(
        "SklearnSVM",
        "SVM on global statistics (the RAVDESS study): RBF SVM, decision function -> softmax",
        _svm,
        audio_grid=tuple({"C": c} for c in (1.0, 3.0, 10.0)),
        text_grid=tuple({"C": c} for c in (1.0, 3.0)),
        text_svd_dim=128,  # support vectors are stored dense: a low-dimensional text representation
        text_train_max=12000,  # kernel SVM training is quadratic in the samples
        score=lambda hp: ScoreKind("decision"),
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    """What ``train`` needs beyond the system."""

    system: str
    out: Path
    data_root: Path
    tokenizer: Path
    seed: int = 0
    text_dim: int | None = None  # SVD components of the text features (None: the system's; 0: no projection)
    text_min_df: int = 2  # token ids kept: in at least this many training texts
    cache_dir: Path | None = None  # audio-feature cache shared by the systems
    labelset: str = "emotech7"
    command: str = ""

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"system must be one of {', '.join(SYSTEMS)}, got {self.system!r}")
        if (self.text_dim is not None and self.text_dim not in (0,) and self.text_dim < 2) or self.text_min_df < 1:
            raise ValueError("text_dim must be 0 (no projection) or >= 2, and text_min_df >= 1")


def unweighted_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    present = np.unique(y)
    return float(np.mean([np.mean(pred[y == c] == c) for c in present]))


def macro_f1(y: np.ndarray, pred: np.ndarray, labels: tuple[str, ...]) -> float:
    return classification_report(y, pred, list(labels))["macro_f1"]


def select_audio(system: System, x: np.ndarray, y: np.ndarray, groups: list[str], seed: int) -> tuple[dict, list[dict]]:
    """The audio candidate with the best actor-grouped cross-validated UA, and every score."""
    from sklearn.model_selection import GroupKFold, cross_val_predict

    results = []
    for hp in system.audio_grid:
        pred = cross_val_predict(system.make("audio", hp, seed), x, y, groups=groups, cv=GroupKFold(CV_FOLDS))
        results.append({"params": hp, "cv_unweighted_accuracy": round(unweighted_accuracy(y, pred), 4)})
        logger.info("audio %s: CV UA %.4f", hp, results[-1]["cv_unweighted_accuracy"])
    best = max(results, key=lambda r: r["cv_unweighted_accuracy"])
    return best["params"], results


def select_text(system: System, x: np.ndarray, y: np.ndarray, x_dev: np.ndarray, y_dev: np.ndarray, labels, seed: int) -> tuple[Any, dict, list[dict]]:
    """The text classifier (fitted) with the best dev macro-F1, its parameters, and every score."""
    results, best = [], None
    for hp in system.text_grid:
        clf = system.make("text", hp, seed).fit(x, y)
        f1 = round(macro_f1(y_dev, clf.predict(x_dev), labels), 4)
        results.append({"params": hp, "dev_macro_f1": f1})
        logger.info("text %s: dev macro-F1 %.4f", hp, f1)
        if best is None or f1 > best[2]:
            best = (clf, hp, f1)
    return best[0], best[1], results


def same_label_texts(labels: np.ndarray, texts: corpora.TextSet, seed: int) -> list[str]:
    """For each label, a text of that label (seeded): the congruent pairing of ``export.evaluate``."""
    rng = random.Random(seed)
    by_label: dict[int, list[str]] = {}
    for t, y in zip(texts.texts, texts.labels):
        by_label.setdefault(int(y), []).append(t)
    return [rng.choice(by_label[int(y)]) for y in labels]


def nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    p = softmax(logits.astype(np.float64), t)
    return float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))


def fit_fusion(za: np.ndarray, zt: np.ndarray, y: np.ndarray, audio_kind: ScoreKind, text_kind: ScoreKind, ta: float, tt: float) -> tuple[FusionParams, float, list[dict]]:
    """The text weight (``TEXT_WEIGHTS``) and ``audio+text`` temperature that minimise the
    validation pairs' NLL."""
    ones = np.ones(len(y))
    tried = []
    for w in TEXT_WEIGHTS:
        p = FusionParams(audio_kind, text_kind, ta, tt, float(w))
        fused = fuse_reference(za, zt, ones, ones, p)
        t = fit_temperature(fused, y)
        tried.append({"text_weight": float(w), "temperature": round(t, 4), "nll": round(nll(fused, y, t), 4)})
    best = min(tried, key=lambda r: r["nll"])
    return FusionParams(audio_kind, text_kind, ta, tt, best["text_weight"]), best["temperature"], tried


def as_float32(x: Any) -> Any:
    """float32 features (dense or CSR), as the ONNX graph computes them."""
    return x.astype(np.float32)


def dense(x: Any) -> np.ndarray:
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


def text_matrix(encoder: TextEncoder, tables: features.TextTables, texts: list[str]) -> Any:
    """Text features of ``texts`` (``TextBag``'s, computed by the scikit-learn reference)."""
    return as_float32(features.text_features_reference(corpora.token_docs(encoder, texts), tables, dense=False))


def graph_logits(sess, encoder: TextEncoder, frontend: FrontendConfig, clips: list | None, texts: list | None, batch: int = 32) -> dict[str, np.ndarray]:
    """The composed graph's three outputs over items (None entries: absent modality)."""
    from runtime.audio import pad_batch

    n = len(clips if clips is not None else texts)
    clips = clips if clips is not None else [None] * n
    texts = texts if texts is not None else [None] * n
    placeholder = np.zeros(frontend.min_samples, np.float32)
    outs: dict[str, list] = {}
    for s in range(0, n, batch):
        c, t = clips[s : s + batch], texts[s : s + batch]
        audio, audio_lengths = pad_batch([x if x is not None else placeholder for x in c], min_len=frontend.min_samples)
        tokens, token_lengths = encoder.encode([x if x is not None else "" for x in t])
        feed = {
            "audio": audio, "audio_lengths": audio_lengths, "tokens": tokens, "token_lengths": token_lengths,
            "has_audio": np.array([x is not None for x in c], np.float32), "has_text": np.array([x is not None for x in t], np.float32),
        }  # fmt: skip
        for name, value in zip([o.name for o in sess.get_outputs()], sess.run(None, feed)):
            outs.setdefault(name, []).append(value)
    return {k: np.concatenate(v) for k, v in outs.items()}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Fit the system, write the model folder ``cfg.out``; returns its spec."""

    t0 = time.time()
    system = SYSTEMS[cfg.system]
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    labelset = data.load_labelset(cfg.labelset)
    labels = labelset.labels
    frontend = FrontendConfig()
    audio_cfg = features.AudioFeatureConfig()
    stats = features.AudioStatistics(frontend, audio_cfg).eval()
    key = {"frontend": frontend.to_dict(), "features": audio_cfg.to_dict(), "code": hashlib.sha256(inspect.getsource(features).encode()).hexdigest()}
    audio = corpora.ravdess(cfg.data_root, labelset, frontend)
    xa = {s: corpora.audio_features(stats, a, key, cfg.cache_dir) for s, a in audio.items()}
    ya = {s: a.labels for s, a in audio.items()}
    text = corpora.goemotions(cfg.data_root, labelset)
    encoder = TextEncoder(cfg.tokenizer, MAX_TOKENS, MAX_CHARS)
    vocab = encoder.tokenizer.get_vocab_size()
    special = [encoder.tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")]
    dim = system.text_svd_dim if cfg.text_dim is None else (cfg.text_dim or None)
    docs = {s: corpora.token_docs(encoder, t.texts) for s, t in text.items()}
    tables = features.fit_text_features(docs["train"], vocab, dim, cfg.text_min_df, [i for i in special if i is not None], cfg.seed)
    xt = {s: as_float32(features.text_features_reference(d, tables, dense=False)) for s, d in docs.items()}
    yt = {s: t.labels for s, t in text.items()}
    logger.info("features: audio %s, text %s (%d ids kept)", xa["train"].shape, xt["train"].shape, tables.kept)

    audio_hp, audio_cv = select_audio(system, xa["train"], ya["train"], audio["train"].speakers, cfg.seed)
    audio_clf = system.make("audio", audio_hp, cfg.seed).fit(xa["train"], ya["train"])
    rows = np.arange(len(yt["train"]))
    if system.text_train_max and len(rows) > system.text_train_max:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(len(rows), system.text_train_max, replace=False))
    text_clf, text_hp, text_dev = select_text(system, xt["train"][rows], yt["train"][rows], xt["val"], yt["val"], labels, cfg.seed)
    for name, clf in (("audio", audio_clf), ("text", text_clf)):
        if list(clf.classes_) != list(range(len(labels))):
            raise ValueError(f"the {name} classifier saw classes {list(clf.classes_)}, not all of 0..{len(labels) - 1}")
    audio_kind, text_kind = system.score(audio_hp), system.score(text_hp)

    # calibration and fusion on validation data
    za_val, zt_dev = scores(audio_clf, xa["val"], audio_kind), scores(text_clf, xt["val"], text_kind)
    # rounded as written to spec.json, so that the graph's fusion and the runtime use the same values
    ta, tt = round(fit_temperature(za_val, ya["val"]), 4), round(fit_temperature(zt_dev, yt["val"]), 4)
    own = [u.text or "" for u in audio["val"].items]
    congruent = same_label_texts(ya["val"], text["val"], cfg.seed)
    zt_pairs = scores(text_clf, text_matrix(encoder, tables, own + congruent), text_kind)
    params, tb, fusion_tried = fit_fusion(np.concatenate([za_val, za_val]), zt_pairs, np.concatenate([ya["val"], ya["val"]]), audio_kind, text_kind, ta, tt)
    temperature = {"audio": ta, "text": tt, "audio+text": tb}
    ones = np.ones(len(ya["val"]))
    val_metrics = {
        "audio_unweighted_accuracy": unweighted_accuracy(ya["val"], za_val.argmax(1)),
        "text_macro_f1": macro_f1(yt["val"], zt_dev.argmax(1), labels),
        "audio+own_text_unweighted_accuracy": unweighted_accuracy(ya["val"], fuse_reference(za_val, zt_pairs[: len(own)], ones, ones, params).argmax(1)),
        "audio+same_label_text_unweighted_accuracy": unweighted_accuracy(ya["val"], fuse_reference(za_val, zt_pairs[len(own) :], ones, ones, params).argmax(1)),
    }
    logger.info("validation: %s; temperatures %s; text weight %.2f", {k: round(v, 4) for k, v in val_metrics.items()}, temperature, params.text_weight)

    # the graph and its parity with scikit-learn
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    featurizer = Featurizer(frontend, audio_cfg, tables).eval()
    metadata = {"architecture": system.architecture, "labels": ",".join(labels)}
    save(compose_graph(featurizer, audio_clf, text_clf, params, len(labels), metadata), out / GRAPH_FILE)
    parity = check_parity(out / GRAPH_FILE, audio_clf, text_clf, params, xa["val"], xt["val"], audio["test"], text["test"], encoder, featurizer, tables, cfg.seed)

    (out / TOKENIZER_FILE).write_bytes(Path(cfg.tokenizer).read_bytes())
    spec = {
        "format": FORMAT,
        "name": out.name,
        "labels": list(labels),
        "frontend": frontend.to_dict(),
        "text": {"tokenizer": TOKENIZER_FILE, "max_tokens": MAX_TOKENS, "max_chars": MAX_CHARS},
        "model": {
            "architecture": system.architecture,
            "description": system.description,
            "num_classes": len(labels),
            "audio_features": {
                **audio_cfg.to_dict(), "count": stats.num_features, "statistics": list(features.STATISTICS),
                "frame_features": features.frame_feature_names(audio_cfg),
            },
            "text_features": {
                "method": "TF-IDF of WordPiece ids (raw counts, smooth idf, L2)" + (" -> TruncatedSVD" if tables.components is not None else ""),
                "dim": tables.dim, "min_df": tables.min_df, "ids_kept": tables.kept,
            },
            "audio_classifier": describe(audio_clf, audio_hp),
            "text_classifier": describe(text_clf, text_hp),
            "fusion": params.to_dict(),
            "parameters": parameter_count(audio_clf, text_clf, tables),
        },
        "graphs": {"fused": {"fp32": GRAPH_FILE}},
        "outputs": EXTRA_OUTPUTS,
        "calibration": {
            "method": "temperature",
            "fit_on": "validation split: audio on held-out speakers (RAVDESS 19-20), text on GoEmotions dev, audio+text on "
            "those clips paired with their own sentence and with a dev text of their label",
            "temperature": temperature,
        },
        "training": {
            "command": cfg.command,
            "seed": cfg.seed,
            "labelset": cfg.labelset,
            "audio_corpus": "ravdess (train actors 01-18, validation 19-20, test 21-24)",
            "text_corpus": "goemotions ekman, single-label rows",
            "audio_train_items": len(ya["train"]),
            "text_train_items": len(rows),
            "audio_selection": {"method": f"{CV_FOLDS}-fold actor-grouped CV on the training actors, UA", "candidates": audio_cv, "chosen": audio_hp},
            "text_selection": {"method": "macro-F1 on GoEmotions dev", "candidates": text_dev, "chosen": text_hp},
            "fusion_selection": {"method": "validation-pair NLL at the best temperature", "candidates": fusion_tried},
            "validation": {k: round(v, 4) for k, v in val_metrics.items()},
            "parity": parity,
            "train_seconds": round(time.time() - t0),
        },
        "versions": package_versions(("torch", "onnx", "onnxruntime", "numpy", "scikit-learn", "skl2onnx", "scipy", "tokenizers", "soxr", "soundfile")),
    }
    spec["files"] = {name: sha256_file(out / name) for name in (GRAPH_FILE, TOKENIZER_FILE)}
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(spec))
    logger.info("wrote %s in %.0f s", out, time.time() - t0)
    return spec


def model_card(spec: dict[str, Any]) -> str:
    """A short model card: what the folder is, its data and licence, its validation results."""
    m, t = spec["model"], spec["training"]
    val = "\n".join(f"| {k} | {v:.4f} |" for k, v in t["validation"].items())
    return f"""# Model card: {spec["name"]}

{m["description"]} (`{m["architecture"]}`), one of the model zoo's systems on the runtime's
fused-graph contract; see `docs/model-zoo.md` for the recipe, the test results beside the
other systems, and what the graph runs.

- Audio: {m["audio_features"]["count"]} utterance statistics of frame features computed in the graph
  -> `{m["audio_classifier"]["class"].rsplit(".", 1)[-1]}` {m["audio_classifier"]["params"]}.
- Text: {m["text_features"]["method"]}, {m["text_features"]["dim"]} features
  -> `{m["text_classifier"]["class"].rsplit(".", 1)[-1]}` {m["text_classifier"]["params"]}.
- Both: late fusion, `log_softmax(audio / {m["fusion"]["audio_temperature"]}) + {m["fusion"]["text_weight"]} * log_softmax(text / {m["fusion"]["text_temperature"]})`.
- Labels ({len(spec["labels"])}): {", ".join(spec["labels"])}.

## Data and licence

Audio: RAVDESS speech, actors 01-18 ({t["audio_train_items"]} clips; 19-20 validation, 21-24 test).
Text: GoEmotions Ekman single-label rows ({t["text_train_items"]} training texts).
Trained on RAVDESS (CC BY-NC-SA 4.0), these weights inherit its terms: **non-commercial,
share-alike** (CC BY-NC-SA 4.0).

## Validation (RAVDESS 19-20, GoEmotions dev)

| metric | value |
|---|---:|
{val}

Command: `{t["command"]}`
"""


def describe(clf: Any, hp: dict) -> dict[str, Any]:
    final = clf.steps[-1][1] if hasattr(clf, "steps") else clf
    out: dict[str, Any] = {"class": f"{type(final).__module__}.{type(final).__name__}", "params": hp}
    if hasattr(clf, "steps"):
        out["pipeline"] = [type(s).__name__ for _, s in clf.steps]
    if hasattr(final, "support_vectors_"):
        out["support_vectors"] = int(final.support_vectors_.shape[0])
    if hasattr(final, "estimators_"):
        out["nodes"] = int(sum(e.tree_.node_count for e in final.estimators_))
    return out


def parameter_count(audio_clf: Any, text_clf: Any, tables: features.TextTables) -> dict[str, int]:
    """Numbers fitted from data: scaler statistics, coefficients, support vectors and dual
    coefficients, tree split thresholds and leaf class distributions, the text tables. The
    front-end's constant matrices (DFT, mel, DCT) are not counted."""

    def count(clf: Any) -> int:
        n = 0
        for step in [s for _, s in clf.steps] if hasattr(clf, "steps") else [clf]:
            for attr in ("mean_", "scale_", "coef_", "intercept_", "support_vectors_", "dual_coef_"):
                value = getattr(step, attr, None)
                if isinstance(value, np.ndarray):
                    n += value.size
            for tree in getattr(step, "estimators_", []):
                t = tree.tree_
                leaves = t.children_left == -1
                n += int((~leaves).sum()) + int(leaves.sum()) * int(t.n_classes[0])
        return n

    text = tables.kept + (0 if tables.components is None else int(tables.components[1:].size))  # idf, SVD components
    return {"audio_classifier": count(audio_clf), "text_classifier": count(text_clf), "text_features": text,
            "total": count(audio_clf) + count(text_clf) + text}  # fmt: skip


def check_parity(graph_path: Path, audio_clf, text_clf, params: FusionParams, xa_val, xt_val, audio_test: corpora.AudioSet,
                 text_test: corpora.TextSet, encoder: TextEncoder, featurizer: Featurizer, tables: features.TextTables, seed: int) -> dict:  # fmt: skip
    """The composed graph against scikit-learn. Classifier alone on identical float32 features
    (the validation clips, 1000 dev texts): max |score| difference <= ``PARITY_CLASSIFIER_ATOL``. End to end on RAVDESS test clips and
    1000 GoEmotions test texts (audio, text, and same-label pairs), the graph vs the torch
    features -> scikit-learn -> ``fuse_reference`` path: label agreement >=
    ``PARITY_LABEL_AGREEMENT`` per mode. Raises ``AssertionError`` otherwise."""
    import onnxruntime as ort

    result: dict[str, Any] = {
        "classifier_max_abs": {
            "audio": classifier_parity(audio_clf, params.audio, xa_val),
            "text": classifier_parity(text_clf, params.text, dense(xt_val[:1000])),
        }
    }
    frontend = featurizer.audio.frontend_cfg
    sess = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    texts = random.Random(seed).sample(text_test.texts, min(1000, len(text_test.texts)))
    clips = audio_test.clips
    congruent = same_label_texts(audio_test.labels, text_test, seed)
    modes = {"audio": (clips, None), "text": (None, texts), "audio+text": (clips, congruent)}
    result["end_to_end"] = {}
    for mode, (c, t) in modes.items():
        got = graph_logits(sess, encoder, frontend, c, t)["logits"]
        n = len(got)
        fa = corpora.batched_features(featurizer.audio, c if c is not None else [np.zeros(frontend.min_samples, np.float32)] * n)
        ft = text_matrix(encoder, tables, t if t is not None else [""] * n)
        ref = fuse_reference(scores(audio_clf, fa, params.audio), scores(text_clf, ft, params.text),
                             np.full(n, c is not None, float), np.full(n, t is not None, float), params)  # fmt: skip
        result["end_to_end"][mode] = {
            "n": n,
            "max_abs_logit_diff": float(np.abs(got - ref).max()),
            "label_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
        }
    result["tolerances"] = {"classifier_max_abs": PARITY_CLASSIFIER_ATOL, "label_agreement_min": PARITY_LABEL_AGREEMENT}
    bad = [f"{m} classifier differs by {d:.2e}" for m, d in result["classifier_max_abs"].items() if d > PARITY_CLASSIFIER_ATOL]
    bad += [f"{m}: label agreement {r['label_agreement']:.4f}" for m, r in result["end_to_end"].items() if r["label_agreement"] < PARITY_LABEL_AGREEMENT]
    logger.info("parity: %s", result)
    if bad:
        raise AssertionError(f"{graph_path}: the graph departs from scikit-learn: {'; '.join(bad)}")
    return result


def default_tokenizer() -> Path | None:
    """The shipped model's ``tokenizer.json`` (all-MiniLM-L6-v2's WordPiece vocabulary)."""
    path = weights_path("emotech", TOKENIZER_FILE)
    return path if path is not None and path.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m export.zoo.train_sklearn", "Train a scikit-learn system of the model zoo and write its model folder.")
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS), help="lr: logistic regression, rf: random forest, svm: RBF SVM")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (e.g. weights/seed004-svm)")
    p.add_argument("--data-root", type=Path, default=data.DEFAULT_DATA_ROOT, help="folder with ravdess/ and text/goemotions_ekman/")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (default: the shipped model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-dim", type=int, default=None, help="SVD components of the text features; 0: the TF-IDF vector (default: the system's)")
    p.add_argument("--text-min-df", type=int, default=TrainConfig.text_min_df, help="keep token ids seen in at least this many training texts")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache the audio features here (shared by the systems)")
    p.add_argument("--labelset", default="emotech7", help="name in export/labelsets.json or a JSON file")
    cli.add_logging_args(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args, default=logging.INFO)
    tokenizer = args.tokenizer or default_tokenizer()
    if tokenizer is None:
        raise SystemExit(cli.fail("no tokenizer.json: pass --tokenizer FILE (the shipped weights/emotech/tokenizer.json)"))
    command = "python -m export.zoo.train_sklearn " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    cfg = TrainConfig(args.system, args.out, args.data_root, tokenizer, args.seed, args.text_dim, args.text_min_df, args.cache_dir, args.labelset, command)
    train(cfg)


if __name__ == "__main__":
    main()
