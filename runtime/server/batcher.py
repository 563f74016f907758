"""Dynamic batching: requests from every connection share the engine calls of a batch.

``submit(item)`` puts a prepared item on a bounded queue and returns a future. One
collector task takes the first waiting item, waits at most ``max_delay_ms`` for up to
``max_batch - 1`` more, and runs ``recognizer.run(batch)`` on a worker thread (one engine
call, or several for long clips: ``EmotionRecognizer.calls``), so the
event loop keeps accepting and decoding requests while the engine works. Each future
gets its own prediction; an exception from the engine fails only that batch's futures.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runtime.postprocess import Prediction
from runtime.recognizer import Item
from runtime.server.metrics import Metrics

logger = logging.getLogger(__name__)


class Runner(Protocol):
    """What the batcher needs from ``EmotionRecognizer``."""

    def run(self, items: Sequence[Item]) -> list[Prediction]: ...


class BatcherClosedError(Exception):
    """The batcher shut down before the item ran."""


class QueueFullError(Exception):
    """The batch queue is full; the client should retry after ``retry_after_s``."""

    def __init__(self, depth: int, retry_after_s: int):
        super().__init__(f"the server is at capacity ({depth} items queued); retry in {retry_after_s} s")
        self.depth, self.retry_after_s = depth, retry_after_s


@dataclass
class Job:
    """One queued item and where its answer goes."""

    item: Item
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchResult:
    """A prediction with the batch facts the response reports."""

    prediction: Prediction
    queue_s: float  # from submit to the start of its engine call
    infer_s: float  # the engine call (whole batch)
    batch_size: int


class Batcher:
    """Collects jobs into batches and runs them on one worker thread."""

    def __init__(self, runner: Runner, max_batch: int, max_delay_ms: float, max_queue: int, metrics: Metrics | None = None):
        self.runner = runner
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: collections.deque[Job] = collections.deque()  # requests: batched first
        self._later: collections.deque[Job] = collections.deque()  # background work (stream utterances)
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="emotech-infer")
        self._forming: list[Job] = []  # the batch being collected
        self._busy = 0  # items in the engine call now
        self._mean_batch_s = 0.05  # running mean of a batch's duration, for Retry-After

    @property
    def depth(self) -> int:
        """Items waiting for an engine call (queued or in the batch being formed)."""
        return len(self._queue) + len(self._later) + len(self._forming)

    @property
    def pending(self) -> int:
        """Items queued or being inferred."""
        return self.depth + self._busy

    def start(self) -> None:
        """Start the collector on the running event loop."""
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="emotech-batcher")

    def submit(self, item: Item, background: bool = False) -> asyncio.Future:
        """Queue ``item``; the future resolves to a ``BatchResult``. ``background`` items
        (a stream's utterances) join a batch only after every waiting foreground one, so a
        busy stream never queues ahead of a request.

        Raises:
            QueueFullError: ``max_queue`` items are already waiting.
        """
        if self._arrived is None:
            raise RuntimeError("Batcher.start() has not been called")
        if self.depth >= self.max_queue:
            batches_ahead = self.depth / self.max_batch + 1
            raise QueueFullError(self.depth, max(1, round(batches_ahead * self._mean_batch_s + 0.5)))
        fut = asyncio.get_running_loop().create_future()
        (self._later if background else self._queue).append(Job(item, fut))
        self._arrived.set()
        return fut

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or running (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return not self.pending

    async def run_now(self, items: Sequence[Item]) -> list[Prediction]:
        """Run ``items`` on the worker thread outside any batch (warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.runner.run, items)

    async def close(self) -> None:
        """Stop the collector; jobs still queued fail with ``BatcherClosedError``."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        leftover = self._forming + list(self._queue) + list(self._later)
        self._forming = []
        self._queue.clear()
        self._later.clear()
        for job in leftover:
            if not job.future.done():
                job.future.set_exception(BatcherClosedError("the server shut down before this item ran"))
        self._pool.shutdown(wait=True)

    async def _collect(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        queue, later, arrived = self._queue, self._later, self._arrived

        def take() -> Job:
            return queue.popleft() if queue else later.popleft()

        while True:
            while not queue and not later:
                arrived.clear()
                await arrived.wait()
            jobs = self._forming = [take()]
            deadline = loop.time() + self.max_delay
            while len(jobs) < self.max_batch:
                if queue or later:
                    jobs.append(take())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            self._forming = []
            # A request that timed out or disconnected while queued is not run.
            jobs = [j for j in jobs if not j.future.done()]
            if jobs:
                await self._run(jobs)

    async def _run(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        self._busy = len(jobs)  # set before the first await: the job is never uncounted
        try:
            preds = await asyncio.get_running_loop().run_in_executor(self._pool, self.runner.run, [j.item for j in jobs])
            if len(preds) != len(jobs):
                raise RuntimeError(f"engine returned {len(preds)} predictions for {len(jobs)} items")
        except Exception as e:
            logger.exception("batch of %d failed", len(jobs))
            if self.metrics:
                self.metrics.batch_failures.inc()
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        finally:
            self._busy = 0
        infer_s = time.perf_counter() - start
        self._mean_batch_s = 0.9 * self._mean_batch_s + 0.1 * infer_s
        if self.metrics:
            self.metrics.batch_size.observe(len(jobs))
            self.metrics.stage.observe(infer_s, "infer")
        for j, p in zip(jobs, preds):
            if not j.future.done():
                j.future.set_result(BatchResult(p, start - j.enqueued, infer_s, len(jobs)))
