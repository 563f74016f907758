"""Timing loop and statistics: warm-up, synchronise, repeat, percentiles.

``measure`` runs a callable until it has both ``min_iters`` samples and ``min_time``
seconds of them (capped by ``max_time``), after a warm-up, calling ``sync`` after
each call so that asynchronous device work is inside the timed region. A background
sampler records the peak resident memory of the process while the loop runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Budget:
    """How long to measure one (engine, batch, stage) row."""

    warmup_iters: int = 3  # untimed calls first (lazy allocation, thread-pool start, caches)
    warmup_time: float = 0.5  # ... and at least this many seconds of them
    min_iters: int = 50  # timed calls, at least
    min_time: float = 2.0  # seconds of timed calls, at least
    max_time: float = 20.0  # stop after this many seconds even below min_iters (slow rows)
    max_iters: int = 2000  # and never more calls than this
    max_other_pct: float = 100.0  # re-measure while other processes used more CPU (% of all cores) ...
    retries: int = 0  # ... up to this many times, after waiting for a quiet machine

    def __post_init__(self) -> None:
        if self.warmup_iters < 0 or self.min_iters < 1 or self.max_iters < self.min_iters:
            raise ValueError("need warmup_iters >= 0 and 1 <= min_iters <= max_iters")
        if self.min_time < 0 or self.max_time < self.min_time:
            raise ValueError("need 0 <= min_time <= max_time")


FULL = Budget()
QUICK = Budget(warmup_iters=1, warmup_time=0.0, min_iters=3, min_time=0.0, max_time=2.0, max_iters=10)


@dataclass(frozen=True)
class Stats:
    """Latency statistics of one measured row, milliseconds."""

    n: int  # timed calls
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    mean_ms: float
    std_ms: float
    peak_rss_mb: float  # peak resident memory of the whole process while this row ran
    other_cpu_pct: float = 0.0  # CPU used by other processes while this row ran, % of all cores

    @classmethod
    def from_samples(cls, seconds: list[float], peak_rss_mb: float, other_cpu_pct: float = 0.0) -> Stats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(
            len(ms),
            float(p50),
            float(p90),
            float(p99),
            float(ms.min()),
            float(ms.mean()),
            float(ms.std()),
            peak_rss_mb,
            other_cpu_pct,
        )


class OtherLoad:
    """CPU time other processes used while the context was open, as % of all cores: a
    measurement taken while it is well above 0 shared the machine and is suspect."""

    def __enter__(self) -> OtherLoad:
        import psutil

        self._psutil, self._proc = psutil, psutil.Process()
        self._t0, self._sys0, self._own0 = time.perf_counter(), self._busy(), self._own()
        return self

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _own(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    def __exit__(self, *exc: object) -> None:
        wall = (time.perf_counter() - self._t0) * (self._psutil.cpu_count() or 1)
        other = (self._busy() - self._sys0) - (self._own() - self._own0)
        # The kernel counts CPU time in 10-ms ticks, so a window of w core-seconds reads to
        # about +-1 / w % (a full row: >= 2 s on each core, within 0.25 % on 2 cores); a
        # --quick row of a few ms can read far off, so the share is clamped to what exists.
        self.pct = min(100.0, max(0.0, 100.0 * other / wall)) if wall > 0 else 0.0


class RssSampler:
    """Peak resident set size of this process, sampled every ``interval`` seconds in a
    daemon thread while the context is open (the last sample is taken on exit)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.interval = interval
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.peak = 0

    def _sample(self) -> None:
        self.peak = max(self.peak, self._proc.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def no_sync() -> None:
    """The default ``sync``: host-side results are already complete when a call returns."""


def measure(fn: Callable[[], object], budget: Budget = FULL, sync: Callable[[], None] = no_sync) -> Stats:
    """Time ``fn`` (synchronised by ``sync``) under ``budget``; returns its statistics."""
    start = time.perf_counter()
    done = 0
    while done < budget.warmup_iters or time.perf_counter() - start < budget.warmup_time:
        fn()
        sync()
        done += 1
    samples: list[float] = []
    with RssSampler() as rss, OtherLoad() as load:
        begin = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            fn()
            sync()
            samples.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - begin
            if len(samples) >= budget.max_iters or elapsed >= budget.max_time:
                break
            if len(samples) >= budget.min_iters and elapsed >= budget.min_time:
                break
    return Stats.from_samples(samples, rss.peak_mb, load.pct)


def wait_for_quiet(max_other_pct: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until other processes use at most ``max_other_pct`` % of
    the CPU over one second; returns the last reading."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        busy = psutil.cpu_percent(interval=1.0)  # this process is idle while it waits
        if busy <= max_other_pct or time.monotonic() >= deadline:
            return busy


def measure_quiet(
    fn: Callable[[], object], budget: Budget = FULL, sync: Callable[[], None] = no_sync, wait: float = 120.0
) -> tuple[Stats, int]:
    """``measure``, repeated (up to ``budget.retries`` times, each after waiting up to
    ``wait`` s for a quiet machine) while other processes used more than
    ``budget.max_other_pct`` % of the CPU during it. Returns the last statistics and how
    many measurements were taken."""
    for attempt in range(budget.retries + 1):
        stats = measure(fn, budget, sync)
        if stats.other_cpu_pct <= budget.max_other_pct or attempt == budget.retries:
            return stats, attempt + 1
        wait_for_quiet(budget.max_other_pct, wait)
    raise AssertionError("unreachable")  # pragma: no cover
