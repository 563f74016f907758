"""EmoTech: MFCC -> (BiLSTM || 2-D CNN) audio block, BiLSTM-CNN text block, FC fusion.

Every layer that looks along time is told each item's length, so padding never changes a
result: convolutions see zeros beyond the valid frames (re-masked after every block,
exactly what they would see as the conv's own zero padding when the item is alone),
pooling is masked, and the backward LSTM direction runs on each item reversed within its
own length (not over the padded tail). Either modality may be absent: its embedding is
then replaced by a learned "missing" vector, selected by the ``has_audio`` / ``has_text``
flags, so one graph serves audio-only, text-only and paired requests.

``EmoTechEnsemble`` averages the logits of several such networks that share the
front-end and the text block (the shipped model: three members).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from export.frontend import MFCC, frame_mask
from runtime.frontend import FrontendConfig

NEG = -1.0e4  # "minus infinity" for masked max pooling that stays finite in FP16


# Fields added to ModelConfig after model folders were first written, with the value
# those folders were built with (a spec without the field describes that architecture).
SPEC_FIELDS_BEFORE_THEY_EXISTED: dict[str, Any] = {"audio_cnn_time_pools": (2, 2, 2)}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters. Written to ``spec.json`` under ``model``."""

    num_classes: int = 7
    vocab_size: int = 30522  # rows of the token-embedding table (MiniLM WordPiece vocab)
    embed_dim: int = 128  # token-embedding width (MiniLM's 384 projected by PCA at init)
    audio_cnn_channels: tuple[int, int, int] = (16, 32, 64)
    # Time pooling after each CNN block (frequency: always 2). Pooling time by 4 after the
    # first block halves the cost of the two larger convs.
    audio_cnn_time_pools: tuple[int, int, int] = (4, 2, 2)
    audio_lstm_hidden: int = 64  # per direction
    audio_conv_channels: int = 64  # strided convs before the audio LSTM (4x fewer steps)
    text_lstm_hidden: int = 128  # per direction
    text_conv_channels: int = 128
    fusion_dim: int = 256  # width of each branch embedding and of the fusion layer
    dropout: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_spec(cls, data: dict[str, Any]) -> "ModelConfig":
        """The config a model folder's ``spec.json`` ``model`` entry describes: fields it
        lacks (written before they existed) take the value that folder was built with."""
        return cls.from_dict({**SPEC_FIELDS_BEFORE_THEY_EXISTED, **data})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("audio_cnn_channels", "audio_cnn_time_pools"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def __post_init__(self) -> None:
        if len(self.audio_cnn_time_pools) != len(self.audio_cnn_channels) or min(self.audio_cnn_time_pools) < 1:
            raise ValueError(f"audio_cnn_time_pools needs one pool >= 1 per CNN block, got {self.audio_cnn_time_pools}")


# Masks are float 0/1 tensors built once per forward and derived stage by stage with one
# op each (a pool, a strided slice), not rebuilt from integer lengths at every stage: at
# batch 1 much of the graph's run time is per-op overhead, and each rebuild costs about ten
# small ops (Shape, Range, floor division, compare, cast) per stage and member. Where
# ``x * valid`` replaces ``where(mask, x, 0)`` the values are identical (x is finite).


def reverse_index(lengths: torch.Tensor, steps: int | torch.Tensor) -> torch.Tensor:
    """``(B, T)`` gather index that reverses each item within its own length (padding stays)."""
    t = torch.arange(steps, device=lengths.device)[None, :]
    last = lengths[:, None] - 1
    return torch.where(t <= last, last - t, t)


def reverse_padded(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` (B, T, C) reordered along time by ``reverse_index``."""
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))


def masked_mean_max(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Concatenated mean and max over the valid time steps of ``x`` (B, T, C) -> (B, 2C);
    ``valid`` is (B, T, 1), 1.0 on valid steps and 0.0 elsewhere."""
    mean = (x * valid).sum(dim=1) / valid.sum(dim=1)
    peak = torch.where(valid > 0, x, NEG).amax(dim=1)
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
        index = reverse_index(lengths, x.shape[1])
        out_b, _ = self.bwd(reverse_padded(x, index))
        return torch.cat([out_f, reverse_padded(out_b, index)], dim=2)


class AudioMasks(NamedTuple):
    """Validity (1.0 / 0.0) of each stage's frames, shared by every audio block of a model."""

    cnn: tuple[torch.Tensor, ...]  # (B, 1, 1, T_k) after each CNN pool
    down: tuple[torch.Tensor, ...]  # (B, 1, T_j) after each strided conv
    lstm_lengths: torch.Tensor  # (B,) int64 valid steps of the BiLSTM


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

    def masks(self, lengths: torch.Tensor, frames: int | torch.Tensor) -> AudioMasks:
        """Stage masks for items of ``lengths`` valid frames out of ``frames``.

        A pooled frame j is valid iff every frame it pools is (``t j + t - 1 < n``, i.e.
        ``j < n // t``): min-pooling the mask, as max-pooling its complement. The strided
        convs (kernel 5, stride 2, padding 2) give ``(n - 1) // 2 + 1`` valid outputs out of
        ``(T - 1) // 2 + 1``: output j is valid iff input frame 2j is, a stride-2 slice.
        """
        valid = frame_mask(lengths, frames).to(torch.float32)
        cnn, v = [], valid[:, None, None, :]
        for t in self.time_pools:
            v = 1.0 - nn.functional.max_pool2d(1.0 - v, (1, t))
            cnn.append(v)
        down, d = [], valid[:, None, :]
        for _ in self.down:
            d = d[:, :, ::2]
            down.append(d)
        return AudioMasks(tuple(cnn), tuple(down), d[:, 0].sum(dim=1).to(torch.int64))

    def forward(self, mfcc: torch.Tensor, lengths: torch.Tensor, masks: AudioMasks | None = None) -> torch.Tensor:
        masks = masks if masks is not None else self.masks(lengths, mfcc.shape[1])
        # 2-D CNN over (coefficient, time); a time pool of t divides time, and the valid
        # length, by t (floor).
        x = mfcc.transpose(1, 2)[:, None]  # (B, 1, n_mfcc, T)
        # Only the pooled map is masked: a valid pooled frame j < n // t reads frames
        # t j .. t j + t - 1 < n, so the conv's garbage beyond n is never pooled into a valid
        # frame as long as n >= t at every pool, i.e. n >= prod(time pools) frames at the
        # input (8 or 16 here), which the front-end's minimum duration guarantees (0.25 s =
        # 26 frames; tested in tests/test_model.py). Masking before the pool as well
        # gave identical results and cost ONNX Runtime ~20 % in layout reorders.
        for block, pool, valid in zip(self.cnn, self.pools, masks.cnn):
            x = pool(block(x)) * valid
        cnn = masked_mean_max(x.mean(dim=2).transpose(1, 2), masks.cnn[-1][:, 0].transpose(1, 2))

        # Strided convs cut the LSTM's steps by 4, then a length-aware BiLSTM.
        y = mfcc.transpose(1, 2)  # (B, n_mfcc, T)
        for block, valid in zip(self.down, masks.down):
            y = block(y) * valid
        seq = self.lstm(y.transpose(1, 2), masks.lstm_lengths)
        rnn = masked_mean_max(seq, masks.down[-1].transpose(1, 2))
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
        valid = frame_mask(lengths, tokens.shape[1]).to(torch.float32)[:, :, None]
        x = self.drop(self.embed(tokens)) * valid
        seq = self.lstm(x, lengths) * valid
        y = self.conv(seq.transpose(1, 2)).transpose(1, 2)
        return self.proj(masked_mean_max(y, valid))


def fusion_head(cfg: ModelConfig) -> nn.Sequential:
    """Concatenated (audio, text) embeddings -> class logits."""
    return nn.Sequential(
        nn.Dropout(cfg.dropout),
        nn.Linear(2 * cfg.fusion_dim, cfg.fusion_dim),
        nn.ReLU(),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.fusion_dim, cfg.num_classes),
    )


def fuse(
    a: torch.Tensor,
    t: torch.Tensor,
    has_audio: torch.Tensor,
    has_text: torch.Tensor,
    missing_audio: torch.Tensor,
    missing_text: torch.Tensor,
    head: nn.Module,
) -> torch.Tensor:
    """``head`` on the two embeddings, an absent one replaced by its learned "missing" vector."""
    ha = has_audio[:, None].to(a.dtype)
    ht = has_text[:, None].to(t.dtype)
    a = ha * a + (1 - ha) * missing_audio[None]
    t = ht * t + (1 - ht) * missing_text[None]
    return head(torch.cat([a, t], dim=1))


class FusedModel(nn.Module):
    """What every EmoTech variant offers: ``mfcc``, ``audio`` (embedding of ``audio_dim``
    values), ``text``, ``fuse``; ``forward`` from samples and ``forward_features`` from MFCCs."""

    architecture = ""
    frontend_cfg: FrontendConfig
    cfg: ModelConfig
    mfcc: MFCC
    text: TextBlock

    @property
    def audio_dim(self) -> int:
        raise NotImplementedError

    # Subclasses provide ``audio(mfcc, frame_lengths) -> (B, audio_dim)`` (a submodule in
    # EmoTech, a method in the ensemble: no placeholder here, it would shadow the submodule)
    # and ``fuse(a, t, has_audio, has_text) -> logits``.

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


class EmoTech(FusedModel):
    """Front-end + audio block + text block + fusion classifier -> class logits."""

    architecture = "EmoTech"

    def __init__(self, frontend: FrontendConfig, cfg: ModelConfig):
        super().__init__()
        self.frontend_cfg = frontend
        self.cfg = cfg
        self.mfcc = MFCC(frontend)
        self.audio = AudioBlock(frontend, cfg)
        self.text = TextBlock(cfg)
        self.missing_audio = nn.Parameter(torch.zeros(cfg.fusion_dim))
        self.missing_text = nn.Parameter(torch.zeros(cfg.fusion_dim))
        self.head = fusion_head(cfg)

    @property
    def audio_dim(self) -> int:
        return self.cfg.fusion_dim

    def fuse(self, a: torch.Tensor, t: torch.Tensor, has_audio: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        return fuse(a, t, has_audio, has_text, self.missing_audio, self.missing_text, self.head)


class EmoTechEnsemble(FusedModel):
    """``members`` EmoTech networks that share the MFCC front-end and the text block: each
    member has its own audio block, "missing" vectors and fusion head, and the logits are
    the members' mean. The front-end and the text block run once per request.

    Built from separately trained members (``from_members``; members after the first are
    trained with the first one's text block frozen, ``export.train --text-from``).
    """

    architecture = "EmoTechEnsemble"

    def __init__(self, frontend: FrontendConfig, cfg: ModelConfig, members: int):
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        self.frontend_cfg = frontend
        self.cfg = cfg
        self.members = members
        self.mfcc = MFCC(frontend)
        self.text = TextBlock(cfg)
        self.audio_blocks = nn.ModuleList(AudioBlock(frontend, cfg) for _ in range(members))
        self.missing_audio = nn.Parameter(torch.zeros(members, cfg.fusion_dim))
        self.missing_text = nn.Parameter(torch.zeros(members, cfg.fusion_dim))
        self.heads = nn.ModuleList(fusion_head(cfg) for _ in range(members))

    @classmethod
    def from_members(cls, models: list[EmoTech]) -> "EmoTechEnsemble":
        """The ensemble of trained ``models``, which must share one text block (equal weights).

        Raises:
            ValueError: no models, or models that differ in front-end, config or text block.
        """
        if not models:
            raise ValueError("an ensemble needs at least one member")
        first = models[0]
        text = first.text.state_dict()
        for i, m in enumerate(models[1:], start=1):
            if m.frontend_cfg != first.frontend_cfg or m.cfg != first.cfg:
                raise ValueError(f"member {i} has a different front-end or model config than member 0")
            other = m.text.state_dict()
            if any(not torch.equal(v, other[k]) for k, v in text.items()):
                raise ValueError(f"member {i} has a different text block than member 0 (train it with --text-from member 0)")
        ens = cls(first.frontend_cfg, first.cfg, len(models))
        ens.text.load_state_dict(text)
        with torch.no_grad():
            for k, m in enumerate(models):
                ens.audio_blocks[k].load_state_dict(m.audio.state_dict())
                ens.heads[k].load_state_dict(m.head.state_dict())
                ens.missing_audio[k].copy_(m.missing_audio)
                ens.missing_text[k].copy_(m.missing_text)
        return ens

    @property
    def audio_dim(self) -> int:
        return self.cfg.fusion_dim * self.members

    def audio(self, mfcc: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """The members' audio embeddings side by side, ``(B, members * fusion_dim)``; the
        members' blocks have one shape, so their stage masks are built once."""
        masks = self.audio_blocks[0].masks(frame_lengths, mfcc.shape[1])
        return torch.cat([block(mfcc, frame_lengths, masks) for block in self.audio_blocks], dim=1)

    def fuse(self, a: torch.Tensor, t: torch.Tensor, has_audio: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        parts = a.chunk(self.members, dim=1)
        logits = [
            fuse(parts[k], t, has_audio, has_text, self.missing_audio[k], self.missing_text[k], self.heads[k])
            for k in range(self.members)
        ]
        return torch.stack(logits).mean(dim=0)
