"""A model's logits on prepared batches, per mode on a validation split, the
model-selection score and the per-mode temperature calibration (shared by
``export.train`` and ``export.ensemble``)."""

from __future__ import annotations

import random

import numpy as np
import torch
from tqdm import tqdm

from export import data
from export.config import TrainConfig
from export.metrics import classification_report, fit_temperature
from export.model import FusedModel
from runtime.audio import load_audio, pad_batch
from runtime.frontend import FrontendConfig
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
    """Logits and labels per evaluation mode on a validation (or test) split."""
    y_audio = np.array([u.label for u in pool.items])
    res = {"audio": (predict_logits(model, encoder, pool.clips), y_audio)}
    own = [u.text for u in pool.items]
    if any(t is not None for t in own):
        res["audio+own_text"] = (predict_logits(model, encoder, pool.clips, own), y_audio)
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


def calibrate(model: FusedModel, encoder: TextEncoder, pool: AudioPool, text_items, seed: int) -> dict[str, float]:
    """Per-mode temperatures fitted on validation logits (audio, text, audio+text)."""
    val = validation_logits(model, encoder, pool, text_items, seed)
    temps = {"audio": fit_temperature(*val["audio"])}
    paired = [val[k] for k in ("audio+own_text", "audio+same_label_text") if k in val]
    temps["audio+text"] = fit_temperature(np.concatenate([p[0] for p in paired]), np.concatenate([p[1] for p in paired])) if paired else temps["audio"]
    temps["text"] = fit_temperature(*val["text"]) if "text" in val else 1.0
    return {k: round(v, 4) for k, v in temps.items()}
