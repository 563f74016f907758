"""The dynamic batcher with a fake engine: batch bounds, delay, isolation of failures,
queue limit, and skipping requests that gave up."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from runtime.postprocess import Prediction
from runtime.recognizer import Item
from runtime.server.batcher import Batcher, BatcherClosedError, QueueFullError


class FakeRunner:
    """Records batches; answers each item with its own text as the label."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.delay, self.fail_on = delay, fail_on
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()

    def run(self, items):
        self.threads.add(threading.current_thread().name)
        texts = [it.text for it in items]
        self.batches.append(texts)
        time.sleep(self.delay)
        if self.fail_on in texts:
            raise RuntimeError("engine exploded")
        return [Prediction(label=t, scores={t: 1.0}, modalities=("text",)) for t in texts]


def item(name: str) -> Item:
    return Item(None, name)


def run(coro):
    return asyncio.run(coro)


def test_each_request_gets_its_own_result_in_bounded_batches():
    async def main():
        runner = FakeRunner(delay=0.02)
        b = Batcher(runner, max_batch=4, max_delay_ms=20, max_queue=100)
        b.start()
        futs = [b.submit(item(f"r{i}")) for i in range(10)]
        results = await asyncio.gather(*futs)
        await b.close()
        return runner, results

    runner, results = run(main())
    assert [r.prediction.label for r in results] == [f"r{i}" for i in range(10)]
    assert max(len(x) for x in runner.batches) == 4
    assert sum(len(x) for x in runner.batches) == 10
    assert all(r.batch_size == len(next(x for x in runner.batches if r.prediction.label in x)) for r in results)
    assert runner.threads == {"emotech-infer_0"}  # off the event loop, on the one worker


def test_a_lone_request_waits_about_max_delay():
    async def main():
        b = Batcher(FakeRunner(), max_batch=8, max_delay_ms=50, max_queue=10)
        b.start()
        start = time.perf_counter()
        res = await b.submit(item("a"))
        elapsed = time.perf_counter() - start
        await b.close()
        return res, elapsed

    res, elapsed = run(main())
    assert res.batch_size == 1
    assert 0.045 <= elapsed < 3.0  # upper bound loose: a loaded CI box schedules late
    assert res.queue_s >= 0.045


def test_full_batch_does_not_wait_for_the_delay():
    async def main():
        b = Batcher(FakeRunner(), max_batch=3, max_delay_ms=5000, max_queue=10)
        b.start()
        start = time.perf_counter()
        res = await asyncio.gather(*(b.submit(item(str(i))) for i in range(3)))
        elapsed = time.perf_counter() - start
        await b.close()
        return res, elapsed

    res, elapsed = run(main())
    assert {r.batch_size for r in res} == {3}
    assert elapsed < 2.5  # far below the 5 s max delay


def test_a_failing_batch_fails_only_its_own_requests():
    async def main():
        runner = FakeRunner(fail_on="boom")
        b = Batcher(runner, max_batch=2, max_delay_ms=10, max_queue=10)
        b.start()
        first = [b.submit(item("boom")), b.submit(item("ok1"))]
        out1 = await asyncio.gather(*first, return_exceptions=True)
        out2 = await asyncio.gather(b.submit(item("ok2")), b.submit(item("ok3")))
        await b.close()
        return runner, out1, out2

    runner, out1, out2 = run(main())
    assert runner.batches[0] == ["boom", "ok1"]
    assert all(isinstance(e, RuntimeError) for e in out1)
    assert [r.prediction.label for r in out2] == ["ok2", "ok3"]


def test_queue_full_raises_with_retry_after():
    async def main():
        b = Batcher(FakeRunner(delay=0.2), max_batch=1, max_delay_ms=0, max_queue=2)
        b.start()
        running = b.submit(item("0"))
        await asyncio.sleep(0.05)  # the collector takes "0" into the engine
        queued = [b.submit(item("1")), b.submit(item("2"))]
        with pytest.raises(QueueFullError) as info:
            b.submit(item("3"))
        assert b.depth == 2 and b.pending == 3
        await asyncio.gather(running, *queued)
        await b.close()
        return info.value

    err = run(main())
    assert err.retry_after_s >= 1 and "capacity" in str(err)


def test_requests_that_gave_up_are_not_run():
    async def main():
        runner = FakeRunner(delay=0.1)
        b = Batcher(runner, max_batch=1, max_delay_ms=0, max_queue=10)
        b.start()
        first = b.submit(item("first"))
        await asyncio.sleep(0.02)
        gone = b.submit(item("gone"))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(gone, 0.01)  # cancels the future, as a timed-out request does
        last = await b.submit(item("last"))
        await first
        await b.close()
        return runner, last

    runner, last = run(main())
    assert ["gone"] not in runner.batches
    assert last.prediction.label == "last"


def test_close_fails_queued_requests():
    async def main():
        b = Batcher(FakeRunner(delay=0.2), max_batch=1, max_delay_ms=0, max_queue=10)
        b.start()
        b.submit(item("running"))
        await asyncio.sleep(0.05)
        queued = b.submit(item("queued"))
        await b.close()
        return queued

    fut = run(main())
    assert isinstance(fut.exception(), BatcherClosedError)


def test_drain_waits_for_pending_work():
    async def main():
        b = Batcher(FakeRunner(delay=0.1), max_batch=2, max_delay_ms=0, max_queue=10)
        b.start()
        futs = [b.submit(item(str(i))) for i in range(4)]
        drained = await b.drain(5.0)
        done = all(f.done() for f in futs)
        await b.close()
        return drained, done

    assert run(main()) == (True, True)


def test_submit_before_start_is_an_error():
    b = Batcher(FakeRunner(), max_batch=1, max_delay_ms=0, max_queue=1)
    with pytest.raises(RuntimeError, match="start"):
        b.submit(item("x"))


def test_background_items_wait_behind_every_request():
    """A stream's utterances (background) never queue ahead of a request: with 8 of them
    waiting, a request submitted later is in the very next batch."""
    async def main():
        runner = FakeRunner(delay=0.05)
        b = Batcher(runner, max_batch=2, max_delay_ms=0, max_queue=100)
        b.start()
        first = b.submit(item("busy"))
        await asyncio.sleep(0.01)  # "busy" is in the engine
        stream = [b.submit(item(f"s{i}"), background=True) for i in range(8)]
        request = b.submit(item("request"))
        await asyncio.gather(first, request, *stream)
        await b.close()
        return runner.batches

    batches = run(main())
    assert batches[0] == ["busy"] and batches[1][0] == "request", batches
    assert [t for batch in batches[1:] for t in batch if t != "request"] == [f"s{i}" for i in range(8)]
