"""The zoo's training and evaluation data: the shipped model's corpora and splits
(``export.data``), decoded through the runtime's own loader, with cached features.

- audio: RAVDESS, speaker-independent (train actors 01-18, validation 19-20, test 21-24);
- text: GoEmotions Ekman, single-label rows (train / dev / test);
- cross-corpus audio: nEMO (``nemo/manifest.csv``, all nine speakers; never trained on).

Clips are decoded, resampled and silence-trimmed by ``runtime.audio.load_audio``, exactly as
``EmotionRecognizer.prepare`` does at inference. Utterance features of a clip set are cached
in ``cache_dir`` as ``.npz``, keyed by the files, the front-end and the feature settings, so
the three scikit-learn systems share one pass over the audio.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from export import data
from runtime.audio import load_audio, pad_batch
from runtime.frontend import FrontendConfig
from runtime.text import TextEncoder

logger = logging.getLogger(__name__)

TEXT_FILES = {"train": "train.tsv", "val": "dev.tsv", "test": "test.tsv"}
NEMO_MANIFEST = ("nemo", "manifest.csv")


@dataclass
class AudioSet:
    """Labelled clips of one split, decoded on first use of ``clips``."""

    items: list[data.Utterance]
    frontend: FrontendConfig

    @cached_property
    def clips(self) -> list[np.ndarray]:
        """float32 mono at the front-end's rate, silence-trimmed."""
        return [load_audio(u.path, self.frontend) for u in self.items]

    @property
    def labels(self) -> np.ndarray:
        return np.array([u.label for u in self.items], dtype=np.int64)

    @property
    def speakers(self) -> list[str]:
        return [u.speaker or "" for u in self.items]


@dataclass(frozen=True)
class TextSet:
    """Labelled texts of one split."""

    texts: list[str]
    labels: np.ndarray


def ravdess(root: Path, labelset: data.LabelSet, frontend: FrontendConfig) -> dict[str, AudioSet]:
    """The standard speaker-independent RAVDESS split, decoded."""
    out = {}
    for split in ("train", "val", "test"):
        items = data.ravdess_split(Path(root) / "ravdess", labelset, split)
        if not items:
            raise FileNotFoundError(f"no RAVDESS {split} clips under {Path(root) / 'ravdess'} (pass --data-root)")
        out[split] = AudioSet(items, frontend)
        logger.info("RAVDESS %s: %d clips", split, len(items))
    return out


def nemo(root: Path, labelset: data.LabelSet, frontend: FrontendConfig) -> AudioSet:
    """All of nEMO (Polish; its sentences are not used: the tokenizer is English)."""
    items = data.load_manifest(Path(root).joinpath(*NEMO_MANIFEST), labelset)
    return AudioSet(items, frontend)


def goemotions(root: Path, labelset: data.LabelSet) -> dict[str, TextSet]:
    """GoEmotions Ekman single-label rows; ``val`` is the dev set."""
    folder = Path(root) / "text" / "goemotions_ekman"
    out = {}
    for split, name in TEXT_FILES.items():
        items = data.load_goemotions(folder / name, labelset)
        out[split] = TextSet([u.text or "" for u in items], np.array([u.label for u in items], dtype=np.int64))
    return out


def token_docs(encoder: TextEncoder, texts: Sequence[str], batch: int = 4096) -> list[np.ndarray]:
    """Each text's WordPiece ids ([CLS] ... [SEP], truncated as at inference)."""
    docs: list[np.ndarray] = []
    for s in range(0, len(texts), batch):
        ids, lengths = encoder.encode(list(texts[s : s + batch]))
        docs += [row[:n].copy() for row, n in zip(ids, lengths)]
    return docs


def batched_features(module: torch.nn.Module, clips: Sequence[np.ndarray], batch: int = 16) -> np.ndarray:
    """``module(audio, lengths)`` over ``clips`` in length-sorted padded batches, in clip order."""
    order = sorted(range(len(clips)), key=lambda i: clips[i].size)
    out: np.ndarray | None = None
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            audio, lengths = pad_batch([clips[i] for i in idx])
            feats = module(torch.from_numpy(audio), torch.from_numpy(lengths)).numpy()
            if out is None:
                out = np.zeros((len(clips), feats.shape[1]), dtype=np.float32)
            out[idx] = feats
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def cached(cache_dir: Path | None, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, stored in / read from ``cache_dir`` under a hash of ``key``."""
    return cached_arrays(cache_dir, key, lambda: {"x": compute()})["x"]


def cached_arrays(cache_dir: Path | None, key: dict, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()`` (named arrays), stored in / read from ``cache_dir`` as one ``.npz`` under a
    hash of ``key``."""
    if cache_dir is None:
        return compute()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"features-{digest}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {k: stored[k] for k in stored.files}
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays


def audio_features(module: torch.nn.Module, audio: AudioSet, key: dict, cache_dir: Path | None) -> np.ndarray:
    """Utterance features of ``audio`` (cached under ``key`` + the clip files)."""
    full = {**key, "files": [u.path for u in audio.items], "trim": audio.frontend.to_dict()}
    return cached(cache_dir, full, lambda: batched_features(module, audio.clips))
