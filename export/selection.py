"""A model's logits on prepared batches, per mode on a validation split, the
model-selection score and the per-mode temperature calibration (shared by
``export.train`` and ``export.ensemble``)."""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from export import data
from export.config import TrainConfig
from export.metrics import classification_report, fit_temperature, softmax, uncertain_threshold
from export.model import FusedModel
from runtime.audio import load_audio, pad_batch
from runtime.frontend import FrontendConfig
from runtime.postprocess import UNCERTAIN_BELOW
from runtime.text import TextEncoder


class AudioPool:
    """Decoded clips in memory, through the runtime's own loader."""

    def __init__(self, items: list[data.Utterance], frontend: FrontendConfig, desc: str):
        self.items = items
        self.clips = [load_audio(u.path, frontend) for u in tqdm(items, desc=f"decode {desc}", leave=False, disable=None)]


def encode_texts(encoder: TextEncoder, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, lengths and has_text flags; a missing text becomes [CLS][SEP] with flag 0."""
    present = [t if t is not None else "" for t in texts]
    ids, lengths = encoder.encode(present)
    has = torch.tensor([t is not None for t in texts], dtype=torch.float32)
    return torch.from_numpy(ids), torch.from_numpy(lengths), has


def time_mask(mfcc: torch.Tensor, lengths: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Zero (the CMVN mean) random spans of valid frames, SpecAugment style."""
    out = mfcc.clone()
    for i in range(mfcc.shape[0]):
        n = int(lengths[i])
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, min(cfg.max_mask_frames, max(n // 5, 1)) + 1, (1,), generator=gen))
            if w and n > w:
                s = int(torch.randint(0, n - w, (1,), generator=gen))
                out[i, s : s + w] = 0
    return out


def audio_logits(model: FusedModel, clips: list[np.ndarray], texts: list[str | None], encoder: TextEncoder, mask_cfg=None, gen=None, audio_only: bool = False):
    """Logits for clips paired with ``texts``; with ``audio_only`` also the same clips' logits without text."""
    audio, lengths = pad_batch(clips)
    mfcc, frames = model.mfcc(torch.from_numpy(audio), torch.from_numpy(lengths))
    if mask_cfg is not None:
        mfcc = time_mask(mfcc, frames, mask_cfg, gen)
    a = model.audio(mfcc, frames)
    ids, tl, has_text = encode_texts(encoder, texts)
    t = model.text(ids, tl)
    ones = torch.ones(len(clips))
    paired = model.fuse(a, t, ones, has_text)
    if not audio_only:
        return paired
    return paired, model.fuse(a, torch.zeros_like(t), ones, torch.zeros(len(clips)))


def text_logits(model: FusedModel, texts: list[str], encoder: TextEncoder) -> torch.Tensor:
    ids, tl, has_text = encode_texts(encoder, texts)
    t = model.text(ids, tl)
    return model.fuse(t.new_zeros(len(texts), model.audio_dim), t, torch.zeros(len(texts)), has_text)


@torch.no_grad()
def predict_logits(model: FusedModel, encoder: TextEncoder, clips=None, texts=None, batch: int = 32) -> np.ndarray:
    """Eval-mode logits for audio clips (optionally paired with ``texts``) or texts alone."""
    model.eval()
    out = []
    n = len(clips) if clips is not None else len(texts)
    order = np.argsort([c.size for c in clips]) if clips is not None else np.argsort([len(t) for t in texts])
    for s in range(0, n, batch):
        idx = order[s : s + batch]
        if clips is not None:
            tx = [texts[i] for i in idx] if texts is not None else [None] * len(idx)
            out.append((idx, audio_logits(model, [clips[i] for i in idx], tx, encoder).numpy()))
        else:
            out.append((idx, text_logits(model, [texts[i] for i in idx], encoder).numpy()))
    logits = np.zeros((n, model.cfg.num_classes), dtype=np.float32)
    for idx, lg in out:
        logits[idx] = lg
    return logits


def same_label_texts(audio_items, text_items, seed: int) -> list[str | None]:
    """For each audio item, a text of the same label (deterministic): the congruent pairing."""
    rng = random.Random(seed)
    by_label: dict[int, list[str]] = {}
    for u in text_items:
        by_label.setdefault(u.label, []).append(u.text)
    return [rng.choice(by_label[u.label]) if by_label.get(u.label) else None for u in audio_items]


def validation_logits(model, encoder, pool: AudioPool, text_items, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Logits and labels per evaluation mode on a validation (or test) split: the clips
    alone, the clips that have a transcript with it, every clip with a text of its label,
    and the text items alone."""
    y_audio = np.array([u.label for u in pool.items])
    res = {"audio": (predict_logits(model, encoder, pool.clips), y_audio)}
    with_text = [i for i, u in enumerate(pool.items) if u.text is not None]  # nEMO's clips carry none
    if with_text:
        own = predict_logits(model, encoder, [pool.clips[i] for i in with_text], [pool.items[i].text for i in with_text])
        res["audio+own_text"] = (own, y_audio[with_text])
    if text_items:
        congruent = same_label_texts(pool.items, text_items, seed)
        res["audio+same_label_text"] = (predict_logits(model, encoder, pool.clips, congruent), y_audio)
        res["text"] = (predict_logits(model, encoder, texts=[u.text for u in text_items]), np.array([u.label for u in text_items]))
    return res


def validation_score(model, encoder, pool: AudioPool, text_items, labels, seed: int) -> tuple[float, dict[str, float]]:
    """Model-selection score on the validation split and its per-mode summary (UA, text
    macro-F1; with several audio corpora also the audio UA of each, ``audio[corpus]``)."""
    val = validation_logits(model, encoder, pool, text_items, seed=seed)
    metrics = {k: classification_report(y, lg.argmax(1), list(labels)) for k, (lg, y) in val.items()}
    summary = {k: round(m["unweighted_accuracy"] if k != "text" else m["macro_f1"], 4) for k, m in metrics.items()}
    corpora = sorted({u.corpus for u in pool.items})
    if len(corpora) > 1:
        logits, y = val["audio"]
        for c in corpora:
            sel = np.array([u.corpus == c for u in pool.items])
            summary[f"audio[{c}]"] = round(classification_report(y[sel], logits[sel].argmax(1), list(labels))["unweighted_accuracy"], 4)
    return score(metrics), summary


def score(metrics: dict[str, dict]) -> float:
    """Model-selection score: mean of audio UA, paired UA and text macro-F1 (those present)."""
    parts = [metrics["audio"]["unweighted_accuracy"]]
    for key in ("audio+own_text", "audio+same_label_text"):
        if key in metrics:
            parts.append(metrics[key]["unweighted_accuracy"])
    if "text" in metrics:
        parts.append(metrics["text"]["macro_f1"])
    return float(np.mean(parts))


class Calibration(NamedTuple):
    """What ``spec.json`` records under ``calibration``, per mode (audio, text, audio+text)."""

    temperature: dict[str, float]  # logits are divided by it before the softmax
    uncertain_below: dict[str, float]  # calibrated top score under which a prediction is flagged uncertain


def calibrate(model: FusedModel, encoder: TextEncoder, pool: AudioPool, text_items, seed: int) -> Calibration:
    """Per-mode temperatures fitted on validation logits, and the ``uncertain`` thresholds
    the calibrated validation scores give (``metrics.uncertain_threshold``; a mode without
    validation items keeps the runtime's default)."""
    val = validation_logits(model, encoder, pool, text_items, seed)
    paired_keys = [k for k in ("audio+own_text", "audio+same_label_text") if k in val]
    by_mode = {"audio": val["audio"]}
    if paired_keys:
        by_mode["audio+text"] = (np.concatenate([val[k][0] for k in paired_keys]), np.concatenate([val[k][1] for k in paired_keys]))
    if "text" in val:
        by_mode["text"] = val["text"]
    temps = {"audio": fit_temperature(*val["audio"])}
    temps["audio+text"] = fit_temperature(*by_mode["audio+text"]) if "audio+text" in by_mode else temps["audio"]
    temps["text"] = fit_temperature(*val["text"]) if "text" in val else 1.0
    temps = {k: round(v, 4) for k, v in temps.items()}
    below = dict(UNCERTAIN_BELOW)
    for mode, (logits, y) in by_mode.items():
        probs = softmax(logits, temps[mode])
        below[mode] = uncertain_threshold(probs.max(axis=1), probs.argmax(axis=1) == y)
    return Calibration(temps, below)
