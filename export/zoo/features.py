"""Utterance-level features computed inside the ONNX graph, for the scikit-learn systems.

Audio (``AudioStatistics``): on the MFCC front-end's frames (``n_fft``-sample Hann windows
every ``hop_length`` samples, centre-padded: 32 ms every 10 ms at 16 kHz), 8 + ``n_mfcc``
short-term features per frame (``frame_feature_names``) and their deltas, each summarised over the
item's valid frames only by the 10 ``STATISTICS``: 42 x 10 = 420 values with the defaults. The
power spectrum comes from the front-end's factored DFT (``PowerSpectrum``), so train and serve
share one implementation and the graph needs no STFT op.

Text (``TextBag``): the L2-normalised TF-IDF vector of an item's WordPiece ids (unigrams over
the ids seen in at least ``min_df`` training texts; [CLS], [SEP] and padding excluded), as
scikit-learn's ``TfidfTransformer`` (raw counts, smooth idf) computes it, either whole (one
feature per kept id, built with a ScatterElements-add) or projected by a TruncatedSVD (a
Gather of ``idf * component`` rows per token and their sum, with the TF-IDF norm from the
pairwise equality of the token ids: no vector over the vocabulary at all).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from export.frontend import MFCC, frame_mask
from runtime.frontend import FrontendConfig, dct_matrix, factored_dft, mel_filterbank

EPS = 1e-10  # added to sums before a division or a log (silent frames, empty texts)
MOMENT_EPS = 1e-20  # added to the variance powers under the skewness and kurtosis
BEYOND = 3.0e38  # sorts invalid (padding) frames after every valid value
STATISTICS = ("mean", "std", "skewness", "kurtosis", "min", "p01", "median", "p99", "max", "range")
SPECTRAL = (
    "zcr",  # zero crossings per sample pair in the frame
    "energy_db",  # 10 log10 of the mean square of the (unwindowed) frame
    "energy_entropy",  # entropy (bits) of the frame's energy split over energy_blocks sub-frames
    "spectral_centroid",  # magnitude-weighted mean frequency, as a fraction of Nyquist
    "spectral_spread",  # magnitude-weighted standard deviation of frequency, fraction of Nyquist
    "spectral_entropy",  # entropy (bits) of the power split over spectral_bands equal bands
    "spectral_flux",  # squared change of the sum-normalised magnitude spectrum from the previous frame
    "spectral_rolloff",  # frequency below which `rolloff` of the magnitude sum lies, fraction of Nyquist
)


@dataclass(frozen=True)
class AudioFeatureConfig:
    """Parameters of ``AudioStatistics`` beyond the front-end's. Written to ``spec.json``."""

    n_mfcc: int = 13  # MFCCs c0..c12 of the front-end's log-mel bands (no CMVN)
    energy_blocks: int = 8  # sub-frames per frame for the entropy of energy (64 samples = 4 ms each)
    spectral_bands: int = 16  # equal-width sub-bands for the spectral entropy (500 Hz each at 16 kHz)
    rolloff: float = 0.9  # fraction of the magnitude sum below the roll-off frequency
    percentiles: tuple[float, float] = (0.01, 0.99)  # the low and high percentile statistics

    def validate(self, frontend: FrontendConfig) -> None:
        """Raise ``ValueError`` naming the field that does not fit ``frontend``."""
        if not 0 < self.n_mfcc <= frontend.n_mels:
            raise ValueError(f"n_mfcc must be in (0, n_mels={frontend.n_mels}], got {self.n_mfcc}")
        if self.energy_blocks < 2 or frontend.n_fft % self.energy_blocks:
            raise ValueError(f"energy_blocks must be >= 2 and divide n_fft={frontend.n_fft}, got {self.energy_blocks}")
        if self.spectral_bands < 2 or (frontend.n_freqs - 1) % self.spectral_bands:
            raise ValueError(f"spectral_bands must be >= 2 and divide n_fft / 2 = {frontend.n_freqs - 1}, got {self.spectral_bands}")
        if not 0 < self.rolloff < 1:
            raise ValueError(f"rolloff must be in (0, 1), got {self.rolloff}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"percentiles must be two fractions 0 <= low < high <= 1, got {self.percentiles}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioFeatureConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        if "percentiles" in kw:
            kw["percentiles"] = tuple(kw["percentiles"])
        return cls(**kw)


def frame_feature_names(cfg: AudioFeatureConfig) -> list[str]:
    """The per-frame features in column order: the spectral ones, MFCCs, then all their deltas."""
    base = [*SPECTRAL, *(f"mfcc{i}" for i in range(cfg.n_mfcc))]
    return base + [f"delta_{name}" for name in base]


def feature_names(cfg: AudioFeatureConfig) -> list[str]:
    """``statistic:frame_feature`` for each of ``AudioStatistics``' output columns."""
    lo, hi = (f"p{round(100 * p):02d}" for p in cfg.percentiles)
    stats = [{"p01": lo, "p99": hi}.get(s, s) for s in STATISTICS]
    return [f"{s}:{f}" for s in stats for f in frame_feature_names(cfg)]


class PowerSpectrum(MFCC):
    """``|STFT|^2`` ``(B, T, n_freqs)`` on the MFCC front-end's frames and factored DFT.

    ``MFCC.mel_power`` ends with a matmul from the DFT's stage-2 outputs to mel bands; with a
    one-hot map from those outputs to their DFT bin in place of the mel filterbank, it sums each
    bin's squared real and imaginary parts instead: the power spectrum, with no second copy of
    the framing and DFT code. (The module's own config therefore has ``n_mels = n_freqs``.)
    """

    def __init__(self, cfg: FrontendConfig):
        super().__init__(dataclasses.replace(cfg, n_mels=cfg.n_freqs, n_mfcc=1, cmvn=False))
        _, _, _, bins = factored_dft(cfg)
        self.mel = torch.from_numpy(np.eye(cfg.n_freqs, dtype=np.float32)[bins])  # (G, 2 * n2, n_freqs)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Power spectrum ``(B, T, n_freqs)`` and each item's valid frame count ``(B,)``."""
        frame_lengths = torch.div(lengths, self.cfg.hop_length, rounding_mode="trunc") + 1
        return self.mel_power(audio), frame_lengths


def entropy_bits(parts: torch.Tensor, dim: int) -> torch.Tensor:
    """Entropy in bits of ``parts`` normalised to sum 1 along ``dim`` (0 for all-zero parts)."""
    p = parts / (parts.sum(dim, keepdim=True) + EPS)
    return -(p * torch.log2(p + EPS)).sum(dim)


class AudioStatistics(nn.Module):
    """Audio ``(B, N)`` with lengths ``(B,)`` -> utterance features ``(B, len(feature_names))``.

    Each item's features equal those of the item computed alone: batch padding is zeros, as
    the front-end's centre padding is, and every statistic is taken over valid frames only.
    """

    def __init__(self, frontend: FrontendConfig, cfg: AudioFeatureConfig | None = None):
        super().__init__()
        cfg = cfg or AudioFeatureConfig()
        cfg.validate(frontend)
        self.frontend_cfg = frontend
        self.cfg = cfg
        self.spectrum = PowerSpectrum(frontend)
        n_fft, n_freqs = frontend.n_fft, frontend.n_freqs
        block = n_fft // cfg.energy_blocks
        blocks = np.zeros((cfg.energy_blocks, 1, n_fft), dtype=np.float32)
        for j in range(cfg.energy_blocks):
            blocks[j, 0, j * block : (j + 1) * block] = 1.0
        width = (n_freqs - 1) // cfg.spectral_bands
        bands = np.zeros((n_freqs, cfg.spectral_bands), dtype=np.float32)
        bands[np.arange(n_freqs), np.minimum(np.arange(n_freqs) // width, cfg.spectral_bands - 1)] = 1.0  # Nyquist bin -> top band
        buffers = {
            "block_kernel": blocks,  # (energy_blocks, 1, n_fft): one sub-frame's samples each
            "pair_kernel": np.ones((1, 1, n_fft - 1), dtype=np.float32),  # the n_fft - 1 adjacent pairs of a frame
            "mel_t": mel_filterbank(frontend).T.copy(),  # (n_freqs, n_mels)
            "dct_db": (dct_matrix(dataclasses.replace(frontend, n_mfcc=cfg.n_mfcc)).T * (10.0 / math.log(10.0))).astype(np.float32),
            "freqs": (np.arange(n_freqs) / (n_freqs - 1)).astype(np.float32),  # bin frequency / Nyquist
            "bands": bands,
        }
        for name, value in buffers.items():
            self.register_buffer(name, torch.from_numpy(value), persistent=False)

    @property
    def num_features(self) -> int:
        return len(STATISTICS) * len(frame_feature_names(self.cfg))

    def frame_features(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame features ``(B, T, 2 * (8 + n_mfcc))`` (``frame_feature_names``) and the valid
        frame count per item; values on invalid frames are arbitrary (finite)."""
        power, frame_lengths = self.spectrum(audio, lengths)  # (B, T, n_freqs)
        zcr, energy_db, energy_entropy = self.waveform_features(audio)
        centroid, spread, spectral_entropy, flux, rolloff = self.spectral_features(power)
        mfcc = self.mfcc(power, frame_lengths)
        base = torch.cat([torch.stack([zcr, energy_db, energy_entropy, centroid, spread, spectral_entropy, flux, rolloff], -1), mfcc], -1)
        return torch.cat([base, deltas(base, frame_lengths)], -1), frame_lengths

    def waveform_features(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``zcr``, ``energy_db`` and ``energy_entropy`` of each frame, each ``(B, T)``."""
        fe = self.frontend_cfg
        half = fe.n_fft // 2
        padded = F.pad(audio, (half, half))  # the front-end's centre padding: frame t starts at t * hop
        sub = F.conv1d((padded * padded)[:, None, :], self.block_kernel, stride=fe.hop_length)  # (B, blocks, T)
        crossings = (padded[:, 1:] * padded[:, :-1] < 0).to(audio.dtype)[:, None, :]
        zcr = F.conv1d(crossings, self.pair_kernel, stride=fe.hop_length)[:, 0] / (fe.n_fft - 1)  # (B, T)
        energy = sub.sum(1) / fe.n_fft
        energy_db = torch.log(energy + EPS) * (10.0 / math.log(10.0))
        return zcr, energy_db, entropy_bits(sub, 1)

    def spectral_features(self, power: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``spectral_centroid``, ``spectral_spread``, ``spectral_entropy``, ``spectral_flux`` and
        ``spectral_rolloff`` of each frame of the power spectrum ``power`` ``(B, T, n_freqs)``,
        each ``(B, T)``."""
        mag = torch.sqrt(power)
        total = mag.sum(-1) + EPS
        centroid = torch.matmul(mag, self.freqs) / total
        spread = torch.sqrt(((self.freqs - centroid[..., None]) ** 2 * mag).sum(-1) / total)
        spectral_entropy = entropy_bits(torch.matmul(power, self.bands), -1)
        share = mag / total[..., None]
        previous = torch.cat([share[:, :1], share[:, :-1]], dim=1)  # frame 0 is its own predecessor: flux 0
        flux = ((share - previous) ** 2).sum(-1)
        cum = torch.cumsum(mag, dim=-1)
        below = (cum < self.cfg.rolloff * cum[..., -1:]).to(power.dtype).sum(-1)  # bins before the roll-off bin
        rolloff = below / (self.frontend_cfg.n_freqs - 1)
        return centroid, spread, spectral_entropy, flux, rolloff

    def mfcc(self, power: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """MFCCs ``(B, T, n_mfcc)`` of the power spectrum: the front-end's log-mel, no CMVN."""
        fe = self.frontend_cfg
        valid = frame_mask(frame_lengths, power.shape[1])[:, :, None].to(power.dtype)
        mel = torch.matmul(power, self.mel_t)
        # power_to_db(ref=1, amin, top_db) as in the front-end: a floor at the clip's valid peak - top_db
        peak = (mel * valid).amax(dim=(1, 2), keepdim=True)
        floor = torch.clamp(peak * (10.0 ** (-fe.top_db / 10.0)), min=fe.amin)
        return torch.matmul(torch.log(torch.maximum(mel, floor)), self.dct_db)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        frames, frame_lengths = self.frame_features(audio, lengths)
        return summarise(frames, frame_lengths, self.cfg.percentiles)


def deltas(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Central differences ``(x[t+1] - x[t-1]) / 2`` along time, the first and last valid
    frames repeated beyond the ends (so padding never enters an item's deltas)."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    last = (lengths - 1)[:, None]
    nxt = torch.minimum(steps + 1, last)
    prv = torch.clamp(torch.minimum(steps - 1, last), min=0)
    idx = lambda i: i[:, :, None].expand(-1, -1, x.shape[2])
    return (torch.gather(x, 1, idx(nxt)) - torch.gather(x, 1, idx(prv))) * 0.5


def summarise(x: torch.Tensor, lengths: torch.Tensor, percentiles: Sequence[float] = (0.01, 0.99)) -> torch.Tensor:
    """``STATISTICS`` of ``x`` ``(B, T, F)`` over each item's first ``lengths`` frames, as
    ``(B, 10 * F)`` statistic-major. Moments are population moments (``scipy.stats`` defaults:
    biased skewness, Fisher kurtosis); percentiles interpolate linearly between order
    statistics (``numpy.percentile``'s default)."""
    valid_b = frame_mask(lengths, x.shape[1])[:, :, None]
    valid = valid_b.to(x.dtype)
    n = lengths.to(x.dtype)[:, None]
    mean = (x * valid).sum(1) / n
    c = (x - mean[:, None]) * valid
    c2 = c * c
    m2 = c2.sum(1) / n
    m3 = (c2 * c).sum(1) / n
    m4 = (c2 * c2).sum(1) / n
    std = torch.sqrt(m2)
    skew = m3 / (m2 * std + MOMENT_EPS)
    kurt = m4 / (m2 * m2 + MOMENT_EPS) - 3.0
    # Sorted along the last axis ((B, F, T)), which ONNX Runtime's TopK runs several times
    # faster than along the middle one; invalid frames sort after every valid value.
    ordered, _ = torch.sort(torch.where(valid_b, x, torch.full_like(x, BEYOND)).transpose(1, 2), dim=2)

    def quantile(q: float) -> torch.Tensor:
        pos = (lengths - 1).to(x.dtype) * q
        lo = torch.floor(pos)
        frac = (pos - lo)[:, None]
        lo_i = lo.long()
        hi_i = torch.minimum(lo_i + 1, lengths - 1)
        take = lambda i: torch.gather(ordered, 2, i[:, None, None].expand(-1, x.shape[2], 1))[:, :, 0]
        a = take(lo_i)
        return a + frac * (take(hi_i) - a)

    low, high = percentiles
    smallest, largest = ordered[:, :, 0], quantile(1.0)
    return torch.cat([mean, std, skew, kurt, smallest, quantile(low), quantile(0.5), quantile(high), largest, largest - smallest], dim=1)


# ---------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextTables:
    """A fitted bag-of-WordPiece featurizer (``fit_text_features``)."""

    row_of: np.ndarray  # (vocab,) int64: the row of each token id, 0 for ids not kept
    idf: np.ndarray  # (rows,) float32: the idf of each row's id; row 0 (ids not kept) is 0
    components: np.ndarray | None  # (rows, dim) float32: idf * SVD component of each row's id (row 0: 0); None: no projection
    min_df: int  # ids kept: seen in at least this many training texts

    @property
    def kept(self) -> int:
        return int(self.idf.shape[0] - 1)

    @property
    def dim(self) -> int:
        """Features per text: the SVD components, or one per kept id."""
        return self.kept if self.components is None else int(self.components.shape[1])


def count_matrix(docs: Sequence[np.ndarray], row_of: np.ndarray):
    """``(len(docs), kept)`` CSR counts of the kept ids of each document."""
    from scipy import sparse

    rows = [row_of[d] for d in docs]
    indptr = np.cumsum([0] + [int((r > 0).sum()) for r in rows])
    cols = np.concatenate([r[r > 0] - 1 for r in rows]) if rows else np.zeros(0, np.int64)
    m = sparse.csr_matrix((np.ones(len(cols), np.float64), cols, indptr), shape=(len(docs), int(row_of.max())))
    m.sum_duplicates()
    return m


def fit_text_features(docs: Sequence[np.ndarray], vocab_size: int, dim: int | None, min_df: int, exclude: Sequence[int], seed: int) -> TextTables:
    """Fit TF-IDF (raw counts, smooth idf, L2 norm) and, when ``dim`` is given, a TruncatedSVD
    on token-id documents.

    Args:
        docs: token ids of each training text (int arrays; [CLS]/[SEP] may be included).
        vocab_size: the tokenizer's vocabulary size (ids are < it).
        dim: SVD components kept; None: the TF-IDF vector itself (one feature per kept id).
        min_df: keep ids present in at least this many documents.
        exclude: ids never kept ([PAD], [CLS], [SEP]).
        seed: the SVD's random state.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    df = np.zeros(vocab_size, dtype=np.int64)
    for d in docs:
        df[np.unique(d)] += 1
    df[list(exclude)] = 0
    kept = np.flatnonzero(df >= min_df)
    if kept.size < 2 or (dim is not None and kept.size <= dim):
        raise ValueError(f"only {kept.size} token ids occur in >= {min_df} texts; need more than {dim or 1}")
    row_of = np.zeros(vocab_size, dtype=np.int64)
    row_of[kept] = np.arange(1, kept.size + 1)
    tfidf = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=False)
    x = tfidf.fit_transform(count_matrix(docs, row_of))
    idf = np.concatenate([[0.0], tfidf.idf_]).astype(np.float32)
    components = None
    if dim is not None:
        svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=7, random_state=seed).fit(x)
        components = np.zeros((kept.size + 1, dim), dtype=np.float32)
        components[1:] = svd.components_.T * tfidf.idf_[:, None]
    return TextTables(row_of=row_of, idf=idf, components=components, min_df=min_df)


def tfidf_matrix(docs: Sequence[np.ndarray], tables: TextTables):
    """The L2-normalised TF-IDF vectors of ``docs`` over the kept ids, CSR float64 (scikit-learn's
    ``TfidfTransformer`` output)."""
    from sklearn.preprocessing import normalize

    idf = tables.idf[1:].astype(np.float64)
    return normalize(count_matrix(docs, tables.row_of).multiply(idf[None, :]).tocsr(), norm="l2")


def text_features_reference(docs: Sequence[np.ndarray], tables: TextTables, dense: bool = True):
    """``TextBag``'s output computed the scikit-learn way (sparse TF-IDF, L2 norm, projection),
    in float64: the training features and the parity reference. Without a projection and
    with ``dense=False``, the sparse CSR matrix."""
    x = tfidf_matrix(docs, tables)
    if tables.components is None:
        return x.toarray() if dense else x
    idf = tables.idf[1:].astype(np.float64)
    return x @ (tables.components[1:].astype(np.float64) / np.maximum(idf[:, None], EPS))


class TextBag(nn.Module):
    """Tokens ``(B, L)`` with lengths ``(B,)`` -> TF-IDF features ``(B, tables.dim)``, SVD-projected
    when the tables have components; an item without kept ids (no text, or only unseen
    words) gets zeros."""

    def __init__(self, tables: TextTables):
        super().__init__()
        self.dim = tables.dim
        self.project = tables.components is not None
        self.register_buffer("row_of", torch.from_numpy(tables.row_of.astype(np.int64)), persistent=False)
        self.register_buffer("idf", torch.from_numpy(tables.idf.astype(np.float32)), persistent=False)
        if self.project:
            self.register_buffer("components", torch.from_numpy(tables.components.astype(np.float32)), persistent=False)

    def forward(self, tokens: torch.Tensor, token_lengths: torch.Tensor) -> torch.Tensor:
        inside = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < token_lengths[:, None]
        rows = self.row_of[tokens] * inside.long()  # (B, L): padding -> row 0
        w = self.idf[rows]  # (B, L): each position's idf, 0 for ids not kept
        if not self.project:
            # the TF-IDF vector: each position adds its idf to its id's column (ScatterElements, add)
            x = w.new_zeros((tokens.shape[0], self.idf.shape[0])).scatter_add(1, rows, w)[:, 1:]
            return x * torch.rsqrt((x * x).sum(1, keepdim=True) + EPS)
        # ||tf * idf||^2 = sum over position pairs holding the same id of idf_i * idf_j
        same = (rows[:, :, None] == rows[:, None, :]).to(w.dtype)  # (B, L, L)
        norm2 = (torch.matmul(same, w[:, :, None])[:, :, 0] * w).sum(1, keepdim=True)
        return self.components[rows].sum(1) * torch.rsqrt(norm2 + EPS)
