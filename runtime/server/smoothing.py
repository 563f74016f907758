"""Per-stream smoothing of emotion scores over recent utterances.

One utterance's label can flip from the next one's on little evidence; a kiosk's display
and a robot's behaviour want something steadier. After utterances 1..k, ending at stream
times t_1..t_k (seconds), the smoothed scores are the decaying mean

    S_k = sum_i w_i p_i / sum_i w_i,    w_i = 2 ** (-(t_k - t_i) / half_life_s)

of their calibrated scores p_i: the newest utterance weighs 1, one ``half_life_s`` older
1/2, two 1/4. Weighting by time rather than by count lets old evidence fade across a
long pause. Computed online: N_k = d N_{k-1} + p_k, D_k = d D_{k-1} + 1 with
d = 2 ** (-(t_k - t_{k-1}) / half_life_s), S_k = N_k / D_k. ``half_life_s = 0`` turns
smoothing off (S_k = p_k).
"""

from __future__ import annotations

import math

DEFAULT_HALF_LIFE_S = 5.0  # the last utterance or two dominate; a minute-old one weighs 2**-12
MAX_HALF_LIFE_S = 3600.0


def check_half_life(half_life_s: object, name: str = "smoothing_half_life_s") -> float:
    """``half_life_s`` as a float, or ``ValueError`` naming ``name``: a number in [0, 3600] (seconds)."""
    if isinstance(half_life_s, bool) or not isinstance(half_life_s, (int, float)) or not 0 <= half_life_s <= MAX_HALF_LIFE_S:
        raise ValueError(f"{name} must be a number of seconds in [0, {MAX_HALF_LIFE_S:g}] (0: no smoothing), got {half_life_s!r}")
    return float(half_life_s)


class ScoreSmoother:
    """The decaying mean of one stream's scores (feed utterances in stream order)."""

    def __init__(self, half_life_s: float = DEFAULT_HALF_LIFE_S):
        self.half_life_s = check_half_life(half_life_s)
        self._num: dict[str, float] = {}
        self._den = 0.0
        self._time: float | None = None

    def update(self, scores: dict[str, float], time_s: float) -> dict:
        """Add one utterance's ``scores`` (ending at stream time ``time_s``); returns
        ``{"label", "scores", "half_life_s"}`` of the smoothed scores."""
        if self.half_life_s == 0 or self._time is None:
            decay = 0.0
        else:
            decay = math.pow(2.0, -max(time_s - self._time, 0.0) / self.half_life_s)
        self._time = time_s if self._time is None else max(time_s, self._time)
        self._num = {k: decay * self._num.get(k, 0.0) + v for k, v in scores.items()}
        self._den = decay * self._den + 1.0
        smoothed = {k: v / self._den for k, v in self._num.items()}
        return {"label": max(smoothed, key=smoothed.__getitem__), "scores": smoothed, "half_life_s": self.half_life_s}
