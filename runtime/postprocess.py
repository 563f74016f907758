"""Logits -> calibrated per-class scores, labels and the uncertain flag, the same for every engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Calibrated top score below which a prediction is flagged ``uncertain``, per mode: the
# bundled model's, from its validation data (RAVDESS actors 19-20 alone and with texts,
# GoEmotions dev) by the rule of ``export.metrics.uncertain_threshold`` (predictions that
# score below it were right less than half the time). docs/training.md has the command
# and the coverage/accuracy table. A model folder carries its own in spec.json
# (``calibration.uncertain_below``, written by ``export.train``); this is the fallback.
UNCERTAIN_BELOW = {"audio": 0.55, "text": 0.55, "audio+text": 0.40}
PROB_FLOOR = 1e-30  # floor of a re-fused probability before its log (a class both modalities rule out)


@dataclass(frozen=True)
class Prediction:
    """The answer for one item."""

    label: str  # the top-scoring class
    scores: dict[str, float]  # calibrated probability per class; sums to 1
    modalities: tuple[str, ...]  # which inputs the item carried: ("audio",), ("text",) or both
    duration_s: float | None = None  # seconds of audio scored (after silence trimming), None for text-only
    timings_ms: dict[str, float] = field(default_factory=dict, compare=False)  # filled by callers that time stages
    transcript: str | None = None  # the text the model read (the caller's or a recogniser's); None: none
    transcript_source: str | None = None  # "caller", "asr:<name>" (runtime.asr), or None without text
    uncertain: bool = False  # the top score is below the mode's threshold: the label is more likely wrong than right
    # Calibrated probability per class from each modality the item carried, on its own
    # ({"audio": {...}, "text": {...}}), for a model whose graph has per-modality outputs
    # (spec.json ``outputs``; the model zoo's late-fusion folders); None for other models.
    modality_scores: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict:
        out = {
            "label": self.label,
            "scores": self.scores,
            "modalities": list(self.modalities),
            "duration_s": self.duration_s,
            "transcript": self.transcript,
            "transcript_source": self.transcript_source,
            "uncertain": self.uncertain,
        }
        if self.modality_scores is not None:
            out["modality_scores"] = self.modality_scores
        return out


def mode_of(has_audio: bool, has_text: bool) -> str:
    """The calibration mode key of an item (see ``runtime.spec.MODES``)."""
    if has_audio and has_text:
        return "audio+text"
    return "audio" if has_audio else "text"


def calibrated_probs(logits: np.ndarray, temperatures: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature + offset`` in float64 (``offsets``: one
    row of per-class log-prior offsets per logit row, or None)."""
    z = logits.astype(np.float64) / temperatures[:, None]
    if offsets is not None:
        z = z + offsets
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def postprocess(
    logits: np.ndarray,
    labels: tuple[str, ...],
    has_audio: np.ndarray,
    has_text: np.ndarray,
    temperature: dict[str, float],
    durations: list[float | None] | None = None,
    uncertain_below: dict[str, float] | None = None,
    prior_log_odds: dict[str, dict[str, float]] | None = None,
    modality_logits: dict[str, np.ndarray] | None = None,
    audio_weight: float | None = None,
) -> list[Prediction]:
    """One ``Prediction`` per row, each scaled by the temperature of its modality mode,
    shifted by the mode's ``prior_log_odds`` (label -> offset added to that label's
    log-score: a deployment prior; none by default), and flagged ``uncertain`` when its top
    score is below the mode's ``uncertain_below`` (default ``UNCERTAIN_BELOW``).

    Args:
        modality_logits: each modality's own scores for every row (``{"audio": (B, K),
            "text": (B, K)}``: a graph's ``MODALITY_OUTPUTS``). Each prediction then carries
            ``modality_scores``: the scores of the modalities its item has, each calibrated by
            that modality's temperature.
        audio_weight: re-fuse the rows that have both modalities as ``log(w * p_audio + (1 - w)
            * p_text)`` of those calibrated scores (then scaled by the "audio+text" temperature
            as usual), in place of the graph's own fusion. Needs both ``modality_logits``.

    Raises:
        ValueError: ``logits`` (or a modality's scores) do not have one column per label (a
            graph and a spec from two different models: the scores would be silently wrong),
            or ``audio_weight`` is outside [0, 1] or lacks a modality's scores.
    """
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        raise ValueError(f"the engine returned logits of shape {logits.shape} for {len(labels)} labels: "
                         "the graph and spec.json come from different models")
    per_modality = {}
    for modality, z in (modality_logits or {}).items():
        if z.shape != logits.shape:
            raise ValueError(f"the engine returned {modality} scores of shape {z.shape} beside logits of shape {logits.shape}")
        per_modality[modality] = calibrated_probs(z, np.full(len(z), temperature.get(modality, 1.0)))
    if audio_weight is not None:
        logits = refuse(logits, per_modality, has_audio, has_text, audio_weight)
    thresholds = UNCERTAIN_BELOW if uncertain_below is None else uncertain_below
    modes = [mode_of(bool(a), bool(t)) for a, t in zip(has_audio, has_text)]
    offsets = None
    if prior_log_odds:
        per_mode = {m: np.array([float(d.get(k, 0.0)) for k in labels]) for m, d in prior_log_odds.items()}
        offsets = np.stack([per_mode.get(m, np.zeros(len(labels))) for m in modes]) if modes else None
    probs = calibrated_probs(logits, np.array([temperature.get(m, 1.0) for m in modes]), offsets)
    out = []
    for i, row in enumerate(probs):
        mods = tuple(m for m, present in (("audio", has_audio[i]), ("text", has_text[i])) if present)
        top = int(row.argmax())
        own = {m: {name: float(p) for name, p in zip(labels, per_modality[m][i])} for m in mods if m in per_modality}
        out.append(
            Prediction(
                label=labels[top],
                scores={name: float(p) for name, p in zip(labels, row)},
                modalities=mods,
                duration_s=None if durations is None else durations[i],
                uncertain=bool(row[top] < thresholds.get(modes[i], 0.0)),
                modality_scores=own if per_modality else None,
            )
        )
    return out


def refuse(logits: np.ndarray, per_modality: dict[str, np.ndarray], has_audio: np.ndarray, has_text: np.ndarray, audio_weight: float) -> np.ndarray:
    """``logits`` with each row that has both modalities replaced by ``log(w * p_audio + (1 - w) * p_text)``."""
    if isinstance(audio_weight, bool) or not isinstance(audio_weight, (int, float)) or not 0.0 <= audio_weight <= 1.0:
        raise ValueError(f"audio_weight must be a number in [0, 1], got {audio_weight!r}")
    if not {"audio", "text"} <= set(per_modality):
        raise ValueError(f"audio_weight needs both modalities' own scores; the engine returned {sorted(per_modality) or 'none'}")
    both = (np.asarray(has_audio) > 0.5) & (np.asarray(has_text) > 0.5)
    out = logits.astype(np.float64, copy=True)
    mixed = audio_weight * per_modality["audio"][both] + (1.0 - audio_weight) * per_modality["text"][both]
    out[both] = np.log(np.maximum(mixed, PROB_FLOOR))
    return out
