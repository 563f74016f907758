"""The inference form of an ``EmoTechEnsemble``: its members merged into wider ops.

The members of an ensemble have one architecture and read the same MFCCs and the same
text embedding, so most of their layers can run side by side as single, wider ops that
compute exactly the same function:

- every 2-D conv after the first reads only its own member's channels: one grouped conv
  (``groups=M``); the first strided 1-D conv reads the shared MFCCs: one conv with the
  members' filters stacked; the second is grouped;
- BatchNorm (eval mode) is folded into the conv before it;
- masking, pooling, the BiLSTM's reversal gathers and the time pooling run once on the
  members' channels side by side;
- the members' projections and fusion layers are block-sparse matrices, and the mean of
  the members' last linear layers is one linear layer (weights ``/ M``).

Two things stay per member, because merging them is slower on ONNX Runtime's CPU
provider (docs/benchmarks.md, "Merged ensemble"): the first 2-D conv (its 1-channel input
makes a merged conv's output ``M`` times larger before the first pool) and the LSTMs (one
LSTM with block-diagonal weights does ``M`` times the multiply-adds).

Only float rounding differs (sums in another order): ``tests/test_merged.py`` checks the
merged model against the ensemble. ``export.onnx`` exports this form of an ensemble; the
research-code baseline in ``benchmarks`` runs the ensemble as trained.
"""

from __future__ import annotations

import torch
from torch import nn

from export.model import AudioBlock, EmoTechEnsemble, FusedModel, masked_mean_max, reverse_index, reverse_padded


def fold_bn(conv: nn.Conv1d | nn.Conv2d, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` followed by ``bn`` in eval mode, as one conv."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    return weight, (conv.bias - bn.running_mean) * scale + bn.bias


def merge_convs(layers: list[nn.Sequential], shared_input: bool) -> nn.Module:
    """The ``Conv -> BatchNorm`` pairs of ``layers`` (one per member) as one conv: stacked
    filters when every member reads the same input, else grouped by member."""
    conv = layers[0][0]
    members = len(layers)
    folded = [fold_bn(layer[0], layer[1]) for layer in layers]
    merged = type(conv)(
        conv.in_channels * (1 if shared_input else members),
        conv.out_channels * members,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        groups=1 if shared_input else members,
    )
    with torch.no_grad():
        merged.weight.copy_(torch.cat([w for w, _ in folded]))
        merged.bias.copy_(torch.cat([b for _, b in folded]))
    return merged


class MergedAudio(nn.Module):
    """``M`` members' audio blocks as one network: MFCC -> ``(B, M * fusion_dim)``, the
    members' embeddings side by side (what ``EmoTechEnsemble.audio`` returns)."""

    def __init__(self, blocks: list[AudioBlock]):
        super().__init__()
        first, self.members = blocks[0], len(blocks)
        self.masks = first.masks  # a function of the lengths, the pools and the stage count only
        pools = [nn.MaxPool2d((2, t)) for t in first.time_pools]
        # (module names keep benchmarks.profile's parts: cnn*, down*, lstm*)
        self.cnn_first = nn.ModuleList(nn.Sequential(merge_convs([b.cnn[0]], shared_input=True), nn.ReLU(), pools[0]) for b in blocks)
        self.cnn = nn.ModuleList(
            nn.Sequential(merge_convs([b.cnn[i] for b in blocks], shared_input=False), nn.ReLU(), pools[i]) for i in range(1, len(first.cnn))
        )
        self.down = nn.ModuleList(
            nn.Sequential(merge_convs([b.down[i] for b in blocks], shared_input=i == 0), nn.ReLU()) for i in range(len(first.down))
        )
        self.lstm_fwd = nn.ModuleList(b.lstm.fwd for b in blocks)
        self.lstm_bwd = nn.ModuleList(b.lstm.bwd for b in blocks)

        # Features here: [cnn mean | cnn max | rnn mean fwd | rnn mean bwd | rnn max fwd |
        # rnn max bwd], each part M members wide. Member k's projection reads its own
        # [cnn mean, cnn max, rnn mean (fwd, bwd), rnn max (fwd, bwd)].
        c3, hidden = first.cnn[-1][0].out_channels, first.lstm.fwd.hidden_size
        proj = [b.proj[1] for b in blocks]  # (Dropout, Linear, ReLU)
        out, m = proj[0].out_features, self.members
        widths = [c3, c3, hidden, hidden, hidden, hidden]
        starts = [m * sum(widths[:i]) for i in range(len(widths))]
        self.proj = nn.Linear(m * sum(widths), m * out)
        with torch.no_grad():
            self.proj.weight.zero_()
            for k, lin in enumerate(proj):
                cols = torch.cat([s + k * w + torch.arange(w) for s, w in zip(starts, widths)])
                self.proj.weight[k * out : (k + 1) * out, cols] = lin.weight
                self.proj.bias[k * out : (k + 1) * out] = lin.bias

    def forward(self, mfcc: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        masks = self.masks(lengths, mfcc.shape[1])
        x = mfcc.transpose(1, 2)[:, None]  # (B, 1, n_mfcc, T); masking as in AudioBlock.forward
        x = torch.cat([stage(x) for stage in self.cnn_first], dim=1) * masks.cnn[0]
        for stage, valid in zip(self.cnn, masks.cnn[1:]):
            x = stage(x) * valid
        cnn = masked_mean_max(x.mean(dim=2).transpose(1, 2), masks.cnn[-1][:, 0].transpose(1, 2))

        y = mfcc.transpose(1, 2)
        for stage, valid in zip(self.down, masks.down):
            y = stage(y) * valid
        y = y.transpose(1, 2)  # (B, T', M * ch)
        index = reverse_index(masks.lstm_lengths, y.shape[1])
        parts, reversed_parts = y.chunk(self.members, dim=2), reverse_padded(y, index).chunk(self.members, dim=2)
        out_f = torch.cat([lstm(p)[0] for lstm, p in zip(self.lstm_fwd, parts)], dim=2)
        out_b = torch.cat([lstm(p)[0] for lstm, p in zip(self.lstm_bwd, reversed_parts)], dim=2)
        seq = torch.cat([out_f, reverse_padded(out_b, index)], dim=2)
        rnn = masked_mean_max(seq, masks.down[-1].transpose(1, 2))
        return torch.relu(self.proj(torch.cat([cnn, rnn], dim=1)))


class MergedEnsemble(FusedModel):
    """An ``EmoTechEnsemble`` for inference: the same inputs and logits, members merged
    (module docstring). Built by ``merge_ensemble``; not for training."""

    def __init__(self, ensemble: EmoTechEnsemble):
        super().__init__()
        self.architecture = ensemble.architecture
        self.frontend_cfg = ensemble.frontend_cfg
        self.cfg = ensemble.cfg
        self.members = m = ensemble.members
        self.mfcc = ensemble.mfcc
        self.text = ensemble.text
        self.audio = MergedAudio(list(ensemble.audio_blocks))
        d = ensemble.cfg.fusion_dim
        first = [h[1] for h in ensemble.heads]  # (Dropout, Linear, ReLU, Dropout, Linear)
        last = [h[4] for h in ensemble.heads]
        with torch.no_grad():
            # Fusion layer k reads [audio_k, text]: block-diagonal on the audio part, stacked
            # on the shared text part. A missing text is member k's own learned vector, so its
            # contribution W_k missing_text_k is a constant per member.
            buffers = {
                "w_audio": torch.block_diag(*[lin.weight[:, :d] for lin in first]).T,
                "w_text": torch.cat([lin.weight[:, d:] for lin in first]).T,
                "missing_text_out": torch.cat([lin.weight[:, d:] @ ensemble.missing_text[k] for k, lin in enumerate(first)]),
                "missing_audio": ensemble.missing_audio.reshape(-1),
                "b_first": torch.cat([lin.bias for lin in first]),
                # the mean of the members' last layers: one layer over all their hidden units
                "w_last": (torch.cat([lin.weight for lin in last], dim=1) / m).T,
                "b_last": torch.stack([lin.bias for lin in last]).mean(dim=0),
            }
            for name, value in buffers.items():
                self.register_buffer(name, value.detach().contiguous().clone(), persistent=False)

    @property
    def audio_dim(self) -> int:
        return self.cfg.fusion_dim * self.members

    def fuse(self, a: torch.Tensor, t: torch.Tensor, has_audio: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        ha = has_audio[:, None].to(a.dtype)
        ht = has_text[:, None].to(t.dtype)
        a = ha * a + (1 - ha) * self.missing_audio[None]
        h = a @ self.w_audio + ht * (t @ self.w_text) + (1 - ht) * self.missing_text_out[None] + self.b_first
        return torch.relu(h) @ self.w_last + self.b_last


def merge_ensemble(ensemble: EmoTechEnsemble) -> MergedEnsemble:
    """The merged inference form of a trained ``ensemble`` (both in eval mode)."""
    return MergedEnsemble(ensemble.eval()).eval()


def inference_form(model: FusedModel) -> FusedModel:
    """What engines run for ``model``: the merged form of an ensemble, else the model itself."""
    return merge_ensemble(model) if isinstance(model, EmoTechEnsemble) else model
