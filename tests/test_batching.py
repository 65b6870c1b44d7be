"""serving/batching.py: concurrent calls share forward passes, a lone call is never held."""

import asyncio
import threading
import time

import pytest

from serving.batching import NaturalBatcher


class SlowModel:
    """Records the batches it is given; each pass takes `seconds`."""

    def __init__(self, seconds: float = 0.05, fail_on: str | None = None) -> None:
        self.seconds, self.fail_on = seconds, fail_on
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()

    def __call__(self, items: list[str]) -> list[str]:
        self.threads.add(threading.get_ident())
        self.batches.append(list(items))
        time.sleep(self.seconds)
        if self.fail_on in items:
            raise ValueError(f"cannot score {self.fail_on}")
        return [item.upper() for item in items]


def test_concurrent_calls_are_scored_together_in_order():
    model = SlowModel()
    seen: list[int] = []

    async def main():
        batcher = NaturalBatcher(model, max_size=8, on_batch=seen.append)
        return await asyncio.gather(*(batcher([f"p{i}"]) for i in range(10)))

    results = asyncio.run(main())
    assert results == [[f"P{i}"] for i in range(10)]  # each caller gets its own answer
    # the 10 calls queue in the same tick: a full pass of 8, then the rest
    assert [len(b) for b in model.batches] == [8, 2]
    assert seen == [8, 2]


def test_calls_that_arrive_during_a_pass_go_in_the_next():
    model = SlowModel(seconds=0.05)

    async def main():
        batcher = NaturalBatcher(model, max_size=8)
        first = asyncio.ensure_future(batcher(["a"]))
        await asyncio.sleep(0.01)  # the pass for "a" is running
        later = [asyncio.ensure_future(batcher([f"p{i}"])) for i in range(3)]
        return await first, await asyncio.gather(*later)

    first, later = asyncio.run(main())
    assert first == ["A"] and later == [["P0"], ["P1"], ["P2"]]
    assert model.batches == [["a"], ["p0", "p1", "p2"]]


def test_a_lone_call_is_not_held_even_after_a_burst():
    model = SlowModel(seconds=0.02)

    async def main():
        batcher = NaturalBatcher(model, max_size=16)
        await asyncio.gather(*(batcher([f"p{i}"]) for i in range(64)))  # a burst: queues form
        lone = []
        for i in range(5):
            start = time.perf_counter()
            await batcher([f"q{i}"])
            lone.append(time.perf_counter() - start)
        return lone

    lone = asyncio.run(main())
    assert max(lone) < 0.02 + 0.05, lone  # one pass plus scheduling, no learned wait
    assert [len(b) for b in model.batches[-5:]] == [1] * 5


def test_a_large_call_is_cut_into_passes_of_max_size():
    model = SlowModel(seconds=0.0)
    items = [f"p{i}" for i in range(37)]
    out = asyncio.run(NaturalBatcher(model, max_size=16)(items))
    assert out == [item.upper() for item in items]
    assert [len(b) for b in model.batches] == [16, 16, 5]


def test_an_error_fails_its_own_pass_only():
    model = SlowModel(fail_on="bad")

    async def main():
        batcher = NaturalBatcher(model, max_size=2)
        return await asyncio.gather(
            batcher(["a"]), batcher(["bad"]), batcher(["b"]), batcher(["c"]), return_exceptions=True
        )

    shared, bad, after_b, after_c = asyncio.run(main())
    assert model.batches == [["a", "bad"], ["b", "c"]]
    assert isinstance(bad, ValueError) and isinstance(shared, ValueError)  # "a" shared the failing pass
    assert (after_b, after_c) == (["B"], ["C"])  # the next pass goes on


def test_a_cancelled_caller_does_not_stop_the_others():
    model = SlowModel(seconds=0.05)

    async def main():
        batcher = NaturalBatcher(model, max_size=8)
        first = asyncio.ensure_future(batcher(["a"]))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher(["b"]))
        kept = asyncio.ensure_future(batcher(["c"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await first, await kept

    assert asyncio.run(main()) == (["A"], ["C"])


def test_max_size_must_be_positive():
    with pytest.raises(ValueError, match="max_size"):
        NaturalBatcher(SlowModel(), max_size=0)
