"""Who runs a pass: this process (``local``, the default) or a Ray cluster (``ray``).

Every curator pass is a function of one :class:`~curator.engine.fragments.Piece` plus a
merge in the caller; an executor only decides where the function runs. Both engines run
the same functions, so they give the same results (the tests compare them). The engine
is the ``engine`` argument, else ``$CURATOR_ENGINE``, else ``local``. Ray is an optional
extra (``pip install 'clip-curator[ray]'``), imported only in :mod:`curator.engine.ray`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator

from ..errors import CuratorError, MissingDependency
from ..geometry.backend import available_cpus

LOCAL, RAY = "local", "ray"
ENGINES = (LOCAL, RAY)


def resolve_engine(engine: str | None = None) -> str:
    """The engine to use: the argument, else ``$CURATOR_ENGINE``, else ``local``.

    Raises ``CuratorError`` for an unknown name and ``MissingDependency`` when ``ray`` is
    asked for but Ray (with Ray Data) is not installed.
    """
    name = (engine or os.environ.get("CURATOR_ENGINE") or LOCAL).strip().lower()
    if name not in ENGINES:
        raise CuratorError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")
    if name == RAY:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise MissingDependency("--engine ray needs Ray: pip install 'clip-curator[ray]'")
    return name


class LocalExecutor:
    """Runs each job in this process, in order, one at a time (memory: one job's result)."""

    name = LOCAL
    cpus = 1

    def put(self, value):
        """A handle to a value every job reads (the value itself here)."""
        return value

    def map(self, fn: Callable, jobs: Iterable[tuple], *, window: int | None = None,
            threads: int = 1) -> Iterator:
        """``fn(*job)`` for each job, yielded in job order.

        ``threads`` > 1: that many jobs run at once on threads, each with one BLAS thread,
        and at most ``window`` (default 2 × threads) are in flight (memory: that many jobs'
        inputs and results). For functions whose time is BLAS and numpy loops that release
        the GIL: one job's gathers and comparisons then overlap another's GEMM, where one
        job at a time with every BLAS thread leaves those steps on one core.
        """
        threads = min(max(1, threads), available_cpus())
        if threads == 1:
            for job in jobs:
                yield fn(*job)
            return
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        in_flight = collections.deque()
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
            for job in jobs:
                in_flight.append(pool.submit(fn, *job))
                if len(in_flight) >= (window or 2 * threads):
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()


def executor(engine: str | None = None, *, quiet: bool = True):
    """The executor of ``engine`` (see :func:`resolve_engine`)."""
    if resolve_engine(engine) == LOCAL:
        return LocalExecutor()
    from .ray import RayExecutor

    return RayExecutor(quiet=quiet)
