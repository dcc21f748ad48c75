"""engine/prefetch.py: a generator run ahead in a thread gives the same items in order,
raises its errors at the item where they happened, and is closed (its ``finally`` run)
when the consumer stops early."""

from __future__ import annotations

import threading
import time

import pytest

from curator.engine.prefetch import prefetched


def _threads() -> int:
    return sum(t.name == "curator-prefetch" for t in threading.enumerate())


@pytest.mark.parametrize("depth", [1, 3])
def test_items_in_order_from_another_thread(depth):
    seen_in = []

    def numbers():
        for i in range(50):
            seen_in.append(threading.get_ident())
            yield i

    assert list(prefetched(numbers(), depth)) == list(range(50))
    assert set(seen_in) and threading.get_ident() not in seen_in
    assert _threads() == 0


def test_runs_ahead_of_a_slow_consumer():
    produced = []

    def numbers():
        for i in range(3):
            produced.append(i)
            yield i

    items = prefetched(numbers(), depth=1)
    assert next(items) == 0
    time.sleep(0.2)
    assert produced == [0, 1, 2][:len(produced)] and len(produced) >= 2  # computed ahead
    assert list(items) == [1, 2]


def test_an_error_arrives_as_itself_after_the_items_before_it():
    class Oops(ValueError):
        pass

    def failing():
        yield 1
        yield 2
        raise Oops("batch 3 is bad")

    got = []
    with pytest.raises(Oops, match="batch 3 is bad"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1, 2]
    assert _threads() == 0


def test_stopping_early_closes_the_generator():
    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(threading.get_ident())

    items = prefetched(endless(), depth=2)
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    items.close()  # the consumer stops (e.g. Lance's writer failed)
    assert len(closed) == 1 and closed[0] != threading.get_ident()
    assert _threads() == 0


def test_an_error_in_the_consumer_stops_the_producer():
    closed = []

    def endless():
        try:
            while True:
                yield 0
        finally:
            closed.append(True)

    with pytest.raises(RuntimeError):
        for _ in prefetched(endless()):
            raise RuntimeError("the writer failed")
    assert closed == [True] and _threads() == 0
