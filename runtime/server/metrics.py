"""Prometheus metrics in the text exposition format (0.0.4), written by hand: a few
counters, gauges and fixed-bucket histograms need no client library.

Every metric has a fixed set of label values or a small one (HTTP status codes), so
memory stays flat however long the server runs.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Callable

# Seconds: from sub-millisecond decode to multi-second overload.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{v}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if x == float("inf"):
        return "+Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Counter:
    """A monotonically increasing count per label tuple."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Gauge:
    """A value read at scrape time from a callable, or set directly."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float] | None = None):
        self.name, self.help, self._read = name, help, read
        self._value = 0.0

    def set(self, value: float) -> None:
        self._value = value

    def value(self) -> float:
        return float(self._read()) if self._read else self._value

    def render(self) -> list[str]:
        return [f"{self.name} {_num(self.value())}"]


class Histogram:
    """Cumulative-bucket histogram per label tuple."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self.buckets = tuple(sorted(buckets)) + (float("inf"),)
        self._data: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            counts, total = self._data.setdefault(labels, ([0] * len(self.buckets), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            total[0] += value

    def count(self, *labels: str) -> int:
        data = self._data.get(labels)
        return sum(data[0]) if data else 0

    def counts(self, *labels: str) -> dict[float, int]:
        """Non-cumulative count per bucket upper bound."""
        data = self._data.get(labels)
        return dict(zip(self.buckets, data[0] if data else [0] * len(self.buckets)))

    def render(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._data.items())
        for key, (counts, total) in items:
            running = 0
            for bound, c in zip(self.buckets, counts):
                running += c
                le = 'le="' + _num(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(total)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return out


def resident_memory_bytes() -> float:
    """This process's resident set size (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0


class Metrics:
    """The server's metrics; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self, queue_depth: Callable[[], float], in_flight: Callable[[], float],
                 open_connections: Callable[[], float] = lambda: 0.0):
        self.requests = Counter("emotech_requests_total", "HTTP and stream requests by endpoint and status code", ("endpoint", "status"))
        self.stage = Histogram(
            "emotech_stage_seconds", "Latency per stage: decode, queue, infer, total (seconds)", LATENCY_BUCKETS, ("stage",)
        )
        self.batch_size = Histogram("emotech_batch_size", "Items per engine call", BATCH_BUCKETS)
        self.batch_failures = Counter("emotech_batch_failures_total", "Engine calls that raised (their requests get 500)")
        self.segments = Counter("emotech_stream_segments_total", "Utterances found by the VAD on /v1/stream")
        self.queue_depth = Gauge("emotech_queue_depth", "Items waiting for a batch", queue_depth)
        self.in_flight = Gauge("emotech_in_flight_requests", "Requests being handled", in_flight)
        self.streams = Gauge("emotech_open_streams", "Open /v1/stream connections")
        self.connections = Gauge("emotech_open_connections", "Open HTTP and WebSocket connections", open_connections)
        self.connections_closed = Counter("emotech_connections_closed_total", "Connections the server closed or refused: "
                                          "header_timeout, idle, evicted (at max_connections), refused (all busy)", ("reason",))
        self.rss = Gauge("process_resident_memory_bytes", "Resident memory size in bytes", resident_memory_bytes)
        self._all = (self.requests, self.stage, self.batch_size, self.batch_failures, self.segments, self.queue_depth,
                     self.in_flight, self.streams, self.connections, self.connections_closed, self.rss)

    def render(self) -> str:
        lines = []
        for m in self._all:
            lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}", *m.render()]
        return "\n".join(lines) + "\n"
