"""Natural batching for the scorer: concurrent calls are scored together, and nothing waits.

While the model runs one forward pass, the calls that arrive queue up; when it is done, the next
pass takes everything queued (whole calls, up to `max_size` products). An idle model starts on a
call at once, so a lone request is never held, and a busy one never idles while work is queued.

Why not BentoML's adaptive batching (`@bentoml.api(batchable=True)`). Its dispatcher (1.4.40)
holds a request while `n * (wait of the newest + a) <= 0.95 * mean wait of recent batches`, and
the mean wait it learns from includes its own holds. After a burst (queues of a second or more)
it kept holding single requests for about that long: concurrency-1 p50 went from 77 ms to 1.1 s
and stayed there (bench/results/serving-variants/*.md, "again, after the others"). It also sheds
requests with a 503 once their estimated latency passes its max latency, and at concurrency 64 it
left the cores idle while it waited (0.57-0.64x the in-process ceiling).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Job(Generic[In, Out]):
    items: Sequence[In]
    future: asyncio.Future[list[Out]]


class NaturalBatcher(Generic[In, Out]):
    """`await batcher(items)` scores `items` with `score`, together with whatever other calls are
    queued; `score` (blocking, e.g. a model's forward pass) runs in a thread, one batch at a time.
    A call larger than `max_size` is cut into pieces of at most `max_size`."""

    def __init__(
        self, score: Callable[[list[In]], list[Out]], max_size: int, on_batch: Callable[[int], None] | None = None
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self.score, self.max_size, self.on_batch = score, max_size, on_batch
        self._queue: deque[_Job[In, Out]] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def __call__(self, items: Sequence[In]) -> list[Out]:
        loop = asyncio.get_running_loop()
        pieces = [items[i : i + self.max_size] for i in range(0, len(items), self.max_size)] or [items]
        jobs = [_Job(piece, loop.create_future()) for piece in pieces]
        self._queue.extend(jobs)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        results = await asyncio.gather(*(job.future for job in jobs))
        return [out for part in results for out in part]

    @property
    def queued(self) -> int:
        """Products waiting for a forward pass."""
        return sum(len(job.items) for job in self._queue)

    async def _drain(self) -> None:
        while self._queue:
            batch = [self._queue.popleft()]
            size = len(batch[0].items)
            while self._queue and size + len(self._queue[0].items) <= self.max_size:
                batch.append(self._queue.popleft())
                size += len(batch[-1].items)
            flat = [item for job in batch for item in job.items]
            try:
                outputs = await asyncio.to_thread(self.score, flat) if flat else []
            except Exception as e:  # every call in the batch gets the error; the next batch goes on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            if self.on_batch is not None and flat:
                self.on_batch(len(flat))
            start = 0
            for job in batch:
                if not job.future.done():  # a caller that gave up (timeout, disconnect) is skipped
                    job.future.set_result(list(outputs[start : start + len(job.items)]))
                start += len(job.items)
