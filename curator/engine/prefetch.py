"""Run a generator one step ahead of its consumer, in a background thread.

Ingest's write pass is a generator (read a source batch, validate, score, shape) that
Lance's writer pulls from. Pulled directly, the two take turns on one core: while Lance
encodes and writes a batch nothing computes the next. :func:`prefetched` runs the
generator in a thread of its own, ``depth`` items ahead, so the two overlap on the
machine's two cores (numpy's products and Lance's encoder both release the GIL).

The generator runs, and is closed, in that one thread; its exceptions reach the consumer
as themselves, at the item where they happened. When the consumer stops early (an error
in the writer, or it simply stops iterating) the generator is closed before
:func:`prefetched` returns, so its ``finally`` blocks have run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

_END = object()


def prefetched(items: Iterable, depth: int = 1) -> Iterator:
    """Iterate ``items`` with up to ``depth`` of them computed ahead by a background thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((_END, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="curator-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = ready.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()
