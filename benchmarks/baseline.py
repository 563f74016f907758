"""The research-code baseline: the same trained model, run the usual way.

Per clip, in Python: ``librosa.load`` (libsndfile decode + soxr resampling, as
``runtime.audio`` does), ``librosa.feature.mfcc`` with the model's front-end parameters,
per-utterance CMVN in numpy, the tokenizer on one sentence, and a PyTorch eager forward
of the trained weights on that one item (``EmoTech.forward_features``, which takes the
MFCCs), then a softmax. The engine under test computes the same function, so the
baseline's logits are checked against the engine's in every run.

Threads: PyTorch keeps its default (one OpenMP thread per core), but librosa's BLAS
(OpenBLAS, used for the mel matmul) is limited to one thread with ``threadpoolctl``. With
both libraries at their defaults on a 2-core machine, OpenBLAS and OpenMP threads spin
against each other between the per-clip calls: the same loop measured 14 ms p50 with BLAS
limited and 24-160 ms p50 (p90 up to 1.9 s) without. The limited configuration is the
conservative baseline; ``blas_threads=None`` keeps the defaults.

Needs the ``[export]`` extra (torch, librosa).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from runtime.frontend import FrontendConfig
from runtime.spec import load_spec
from runtime.text import TextEncoder

CMVN_EPS = 1e-5  # as export.frontend.masked_cmvn


def librosa_mfcc(y: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """``librosa.feature.mfcc`` at the front-end's parameters, ``(n_mfcc, T)``."""
    import librosa

    mel = {
        "sr": cfg.sample_rate, "n_fft": cfg.n_fft, "hop_length": cfg.hop_length, "n_mels": cfg.n_mels, "fmin": cfg.fmin, "fmax": cfg.fmax,
        "htk": False, "center": True, "pad_mode": "constant", "power": 2.0,
    }  # fmt: skip
    if cfg.amin == 1e-10 and cfg.top_db == 80.0:  # librosa's power_to_db defaults: the one-call form
        return librosa.feature.mfcc(y=y, n_mfcc=cfg.n_mfcc, dct_type=2, norm="ortho", **mel)
    db = librosa.power_to_db(librosa.feature.melspectrogram(y=y, **mel), ref=1.0, amin=cfg.amin, top_db=cfg.top_db)
    return librosa.feature.mfcc(S=db, n_mfcc=cfg.n_mfcc, dct_type=2, norm="ortho")


def cmvn(mfcc: np.ndarray) -> np.ndarray:
    """Per-utterance mean/variance normalisation of ``(T, C)`` features."""
    centred = mfcc - mfcc.mean(axis=0, keepdims=True)
    return centred / np.sqrt((centred * centred).mean(axis=0, keepdims=True) + CMVN_EPS)


class Baseline:
    """The trained model of ``model_dir`` in PyTorch eager mode, one clip at a time."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", blas_threads: int | None = 1):
        import torch
        from threadpoolctl import threadpool_limits

        from export.bundle import load_torch_model

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the baseline on cuda needs a CUDA build of PyTorch and a GPU")
        self.torch = torch
        self.device = device
        self.spec = load_spec(model_dir)
        self.spec.require(self.spec.raw.get("weights", "model.safetensors"), "the PyTorch baseline")
        model, _ = load_torch_model(Path(model_dir))
        self.model = model.to(device).eval()
        self.cfg = model.frontend_cfg
        self.encoder = TextEncoder(self.spec.path(self.spec.tokenizer_file), self.spec.max_tokens, self.spec.max_text_chars)
        self.temperature = self.spec.temperature["audio+text"]
        self.blas_threads = blas_threads
        # process-wide until close(); the runtime under test does not use BLAS
        self._blas_limit = threadpool_limits(limits=blas_threads, user_api="blas") if blas_threads else None

    def close(self) -> None:
        """Restore the BLAS thread settings."""
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    # ------------------------------------------------------------- stages, one item

    def load(self, data: bytes) -> np.ndarray:
        import librosa

        y, _ = librosa.load(io.BytesIO(data), sr=self.cfg.sample_rate, mono=True)
        return y

    def features(self, y: np.ndarray) -> np.ndarray:
        return cmvn(librosa_mfcc(y, self.cfg).T).astype(np.float32)

    def tokenise(self, text: str) -> np.ndarray:
        ids, _ = self.encoder.encode([text])
        return ids

    def forward(self, mfcc: np.ndarray, ids: np.ndarray) -> np.ndarray:
        torch, dev = self.torch, self.device
        with torch.inference_mode():
            logits = self.model.forward_features(
                torch.from_numpy(mfcc)[None].to(dev),
                torch.tensor([mfcc.shape[0]], device=dev),
                torch.from_numpy(ids).to(dev),
                torch.tensor([ids.shape[1]], device=dev),
                torch.ones(1, device=dev),
                torch.ones(1, device=dev),
            )
            return logits.cpu().numpy()

    def postprocess(self, logits: np.ndarray) -> tuple[str, np.ndarray]:
        z = logits[0].astype(np.float64) / self.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        return self.spec.labels[int(p.argmax())], p

    # ------------------------------------------------------------- whole requests

    def predict(self, clips: list[bytes], texts: list[str]) -> list[tuple[str, np.ndarray]]:
        """Every stage, clip by clip: the end-to-end baseline."""
        out = []
        for data, text in zip(clips, texts):
            logits = self.forward(self.features(self.load(data)), self.tokenise(text))
            out.append(self.postprocess(logits))
        return out

    def logits(self, clips: list[bytes], texts: list[str]) -> np.ndarray:
        """``(B, C)`` logits, for the agreement check against an engine."""
        return np.concatenate([self.forward(self.features(self.load(d)), self.tokenise(t)) for d, t in zip(clips, texts)])
