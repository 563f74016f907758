"""EmoTech: MFCC -> (BiLSTM || 2-D CNN) audio block, BiLSTM-CNN text block, FC fusion.

Every layer that looks along time is told each item's length, so padding never changes a
result: convolutions see zeros beyond the valid frames (re-masked after every block,
exactly what they would see as the conv's own zero padding when the item is alone),
pooling is masked, and the backward LSTM direction runs on each item reversed within its
own length (not over the padded tail). Either modality may be absent: its embedding is
then replaced by a learned "missing" vector, selected by the ``has_audio`` / ``has_text``
flags, so one graph serves audio-only, text-only and paired requests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from export.frontend import MFCC, frame_mask
from runtime.frontend import FrontendConfig, dct_matrix

NEG = -1.0e4  # "minus infinity" for masked max pooling that stays finite in FP16


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters. Written to ``spec.json`` under ``model``."""

    num_classes: int = 7
    vocab_size: int = 30522  # rows of the token-embedding table (MiniLM WordPiece vocab)
    embed_dim: int = 128  # token-embedding width (MiniLM's 384 projected by PCA at init)
    audio_cnn_channels: tuple[int, int, int] = (32, 64, 128)
    # What the 2-D CNN looks at: "mfcc" (coefficient x time), or "cepstral_mel": the MFCCs
    # mapped back through the transposed DCT (n_mfcc -> n_mels), a cepstrally smoothed
    # log-mel image whose axis is frequency, where neighbouring rows are related as 3x3
    # kernels assume (neighbouring cepstral coefficients are not). A fixed linear map of
    # the same MFCCs: the front-end is unchanged.
    audio_cnn_input: str = "mfcc"
    audio_cnn_time_pools: tuple[int, int, int] = (2, 2, 2)  # time pooling after each CNN block (frequency: always 2)
    audio_lstm_hidden: int = 128  # per direction
    audio_conv_channels: int = 128  # strided convs before the audio LSTM (4x fewer steps)
    text_lstm_hidden: int = 128  # per direction
    text_conv_channels: int = 128
    fusion_dim: int = 256  # width of each branch embedding and of the fusion layer
    dropout: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("audio_cnn_channels", "audio_cnn_time_pools"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def __post_init__(self) -> None:
        if self.audio_cnn_input not in ("mfcc", "cepstral_mel"):
            raise ValueError(f"audio_cnn_input must be 'mfcc' or 'cepstral_mel', got {self.audio_cnn_input!r}")
        if len(self.audio_cnn_time_pools) != len(self.audio_cnn_channels) or min(self.audio_cnn_time_pools) < 1:
            raise ValueError(f"audio_cnn_time_pools needs one pool >= 1 per CNN block, got {self.audio_cnn_time_pools}")


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each item of ``x`` (B, T, C) within its own length; padding stays at the end."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    last = lengths[:, None] - 1
    idx = torch.where(steps <= last, last - steps, steps)
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[2]))


def masked_mean_max(x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenated mean and max over valid time steps of ``x`` (B, T, C) -> (B, 2C)."""
    m = mask[:, :, None]
    mean = torch.where(m, x, torch.zeros_like(x)).sum(dim=1) / lengths.to(x.dtype)[:, None]
    peak = torch.where(m, x, torch.full_like(x, NEG)).amax(dim=1)
    return torch.cat([mean, peak], dim=1)


class BiLSTM(nn.Module):
    """Bidirectional LSTM whose backward direction starts at each item's last valid step."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.fwd = nn.LSTM(input_size, hidden, batch_first=True)
        self.bwd = nn.LSTM(input_size, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # A forward LSTM's outputs at valid steps never depend on later (padded) steps.
        out_f, _ = self.fwd(x)
        out_b, _ = self.bwd(reverse_padded(x, lengths))
        return torch.cat([out_f, reverse_padded(out_b, lengths)], dim=2)


def _conv_len(lengths: torch.Tensor, stride: int) -> torch.Tensor:
    # Output length of a 'same'-padded odd-kernel conv or a stride-sized pool.
    return torch.div(lengths - 1, stride, rounding_mode="floor") + 1


class AudioBlock(nn.Module):
    """MFCC (B, T, n_mfcc) -> audio embedding (B, fusion_dim)."""

    def __init__(self, frontend: FrontendConfig, cfg: ModelConfig):
        super().__init__()
        n_mfcc = frontend.n_mfcc
        c1, c2, c3 = cfg.audio_cnn_channels
        self.cnn = nn.ModuleList()
        for cin, cout in ((1, c1), (c1, c2), (c2, c3)):
            self.cnn.append(nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()))
        self.time_pools = cfg.audio_cnn_time_pools
        self.pools = nn.ModuleList(nn.MaxPool2d((2, t)) for t in self.time_pools)
        if cfg.audio_cnn_input == "cepstral_mel":
            # (n_mfcc, n_mels): mfcc (B, T, n_mfcc) @ it -> a smoothed log-mel image (B, T, n_mels).
            self.register_buffer("to_image", torch.from_numpy(dct_matrix(frontend)), persistent=False)
        else:
            self.to_image = None
        ch = cfg.audio_conv_channels
        self.down = nn.ModuleList(
            [
                nn.Sequential(nn.Conv1d(n_mfcc, ch, 5, stride=2, padding=2), nn.BatchNorm1d(ch), nn.ReLU()),
                nn.Sequential(nn.Conv1d(ch, ch, 5, stride=2, padding=2), nn.BatchNorm1d(ch), nn.ReLU()),
            ]
        )
        self.lstm = BiLSTM(ch, cfg.audio_lstm_hidden)
        width = 2 * c3 + 4 * cfg.audio_lstm_hidden
        self.proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(width, cfg.fusion_dim), nn.ReLU())

    def forward(self, mfcc: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # 2-D CNN over (coefficient or mel band, time); a time pool of t divides time, and
        # the valid length, by t (floor).
        image = mfcc if self.to_image is None else torch.matmul(mfcc, self.to_image)
        x = image.transpose(1, 2)[:, None]  # (B, 1, rows, T)
        n = lengths
        # Only the pooled map is masked: a valid pooled frame j < n // t reads frames
        # t j .. t j + t - 1 < n, so the conv's garbage beyond n is never pooled into a valid
        # frame as long as n >= t at every pool, i.e. n >= prod(time pools) frames at the
        # input (8 or 16 here), which the front-end's minimum duration guarantees (0.25 s =
        # 26 frames; tested in tests/test_model.py). Masking before the pool as well
        # gave identical results and cost ONNX Runtime ~20 % in layout reorders.
        for block, pool, t in zip(self.cnn, self.pools, self.time_pools):
            x = pool(block(x))
            n = torch.div(n, t, rounding_mode="floor").clamp(min=1)
            x = x * frame_mask(n, x.shape[3])[:, None, None, :].to(x.dtype)
        cnn = masked_mean_max(x.mean(dim=2).transpose(1, 2), frame_mask(n, x.shape[3]), n)

        # Strided convs cut the LSTM's steps by 4, then a length-aware BiLSTM.
        y = mfcc.transpose(1, 2)  # (B, n_mfcc, T)
        m = lengths
        for block in self.down:
            y = block(y)
            m = _conv_len(m, 2)
            y = y * frame_mask(m, y.shape[2])[:, None, :].to(y.dtype)
        seq = self.lstm(y.transpose(1, 2), m)
        rnn = masked_mean_max(seq, frame_mask(m, seq.shape[1]), m)
        return self.proj(torch.cat([cnn, rnn], dim=1))


class TextBlock(nn.Module):
    """Token ids (B, L) -> text embedding (B, fusion_dim): embeddings -> BiLSTM -> CNN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = BiLSTM(cfg.embed_dim, cfg.text_lstm_hidden)
        self.conv = nn.Sequential(nn.Conv1d(2 * cfg.text_lstm_hidden, cfg.text_conv_channels, 3, padding=1), nn.ReLU())
        self.proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(2 * cfg.text_conv_channels, cfg.fusion_dim), nn.ReLU())

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = frame_mask(lengths, tokens.shape[1])
        x = self.drop(self.embed(tokens)) * mask[:, :, None].to(torch.float32)
        seq = self.lstm(x, lengths) * mask[:, :, None].to(torch.float32)
        y = self.conv(seq.transpose(1, 2)).transpose(1, 2)
        return self.proj(masked_mean_max(y, mask, lengths))


class EmoTech(nn.Module):
    """Front-end + audio block + text block + fusion classifier -> class logits."""

    def __init__(self, frontend: FrontendConfig, cfg: ModelConfig):
        super().__init__()
        self.frontend_cfg = frontend
        self.cfg = cfg
        self.mfcc = MFCC(frontend)
        self.audio = AudioBlock(frontend, cfg)
        self.text = TextBlock(cfg)
        self.missing_audio = nn.Parameter(torch.zeros(cfg.fusion_dim))
        self.missing_text = nn.Parameter(torch.zeros(cfg.fusion_dim))
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * cfg.fusion_dim, cfg.fusion_dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.fusion_dim, cfg.num_classes),
        )

    def fuse(self, a: torch.Tensor, t: torch.Tensor, has_audio: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        ha = has_audio[:, None].to(a.dtype)
        ht = has_text[:, None].to(t.dtype)
        a = ha * a + (1 - ha) * self.missing_audio[None]
        t = ht * t + (1 - ht) * self.missing_text[None]
        return self.head(torch.cat([a, t], dim=1))

    def forward_features(
        self,
        mfcc: torch.Tensor,
        frame_lengths: torch.Tensor,
        tokens: torch.Tensor,
        token_lengths: torch.Tensor,
        has_audio: torch.Tensor,
        has_text: torch.Tensor,
    ) -> torch.Tensor:
        """Logits from precomputed MFCCs (training feeds augmented features here)."""
        return self.fuse(self.audio(mfcc, frame_lengths), self.text(tokens, token_lengths), has_audio, has_text)

    def forward(
        self,
        audio: torch.Tensor,
        audio_lengths: torch.Tensor,
        tokens: torch.Tensor,
        token_lengths: torch.Tensor,
        has_audio: torch.Tensor,
        has_text: torch.Tensor,
    ) -> torch.Tensor:
        mfcc, frame_lengths = self.mfcc(audio, audio_lengths)
        return self.forward_features(mfcc, frame_lengths, tokens, token_lengths, has_audio, has_text)
