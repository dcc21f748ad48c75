"""The execution engine: ``local`` (embedded, the default) or ``ray`` (Ray Data over Lance).

Every curator computation is a reduction (statistics) or a map over rows (scores), so
the same library call can run in this process or on a Ray cluster. The engine is the
``engine`` argument, else ``$CURATOR_ENGINE``, else ``local``. Ray connects to
``$RAY_ADDRESS`` when set (an existing cluster, ``ray://host:10001`` or ``auto``),
otherwise starts a local instance with ``$CURATOR_RAY_CPUS`` CPUs (default: all).
Both engines give the same results: the same statistics to float tolerance, the same
scores, the same decisions for the same seed.

Commands on Ray: ``stats --rebuild``, ``refresh``/scoring (:mod:`curator.distributed`),
``cluster``, ``dedupe``, ``rebalance`` and ``export`` (:mod:`curator.distributed_curation`).

Ray is an optional extra (``pip install 'clip-curator[ray]'``), imported only here and
in :mod:`curator.distributed` and :mod:`curator.distributed_curation`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import numpy as np

from .errors import CuratorError, MissingDependency

LOCAL, RAY = "local", "ray"
ENGINES = (LOCAL, RAY)
RAY_HINT = "--engine ray needs Ray: pip install 'clip-curator[ray]'"


def resolve_engine(engine: str | None = None) -> str:
    """The engine to use: the argument, else ``$CURATOR_ENGINE``, else ``local``.

    Raises ``CuratorError`` for an unknown name and ``MissingDependency`` when ``ray`` is
    asked for but Ray (with Ray Data) is not installed.
    """
    name = (engine or os.environ.get("CURATOR_ENGINE") or LOCAL).strip().lower()
    if name not in ENGINES:
        raise CuratorError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")
    if name == RAY:
        try:
            import ray
            import ray.data  # noqa: F401
        except ImportError as exc:
            raise MissingDependency(RAY_HINT) from exc
    return name


def ensure_ray(quiet: bool = True) -> None:
    """Connect Ray once per process (a no-op when already connected); stays up until exit.

    ``ray.init(address=$RAY_ADDRESS)``; without an address a local instance with
    ``$CURATOR_RAY_CPUS`` CPUs (default all). On a remote cluster the ``curator``
    package is shipped with the job (``runtime_env.py_modules``); its dependencies
    (lancedb, pylance, numpy, pyarrow) must be installed on the workers. Ray Data
    progress bars follow ``quiet``.
    """
    resolve_engine(RAY)
    import ray
    import ray.data

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        kwargs = {"ignore_reinit_error": True, "include_dashboard": False,
                  "log_to_driver": not quiet, "logging_level": "WARNING"}
        if address:
            kwargs["address"] = address
            kwargs["runtime_env"] = {"py_modules": [os.path.dirname(os.path.abspath(__file__))]}
        elif os.environ.get("CURATOR_RAY_CPUS"):
            kwargs["num_cpus"] = int(os.environ["CURATOR_RAY_CPUS"])
        ray.init(**kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = not quiet
    logging.getLogger("ray.data").setLevel(logging.WARNING if not quiet else logging.ERROR)


@contextlib.contextmanager
def ray_session(quiet: bool = True) -> Iterator[None]:
    """Ray connected for the block (:func:`ensure_ray`); shut down after if started here."""
    resolve_engine(RAY)
    import ray

    started = not ray.is_initialized()
    ensure_ray(quiet)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


# -- dispatch: one function per computation, the same signature on both engines ----------

def accumulate(dataset, dim: int, *, filter: str | None = None, engine: str | None = None):
    """Statistics of a table's rows (:func:`curator.stats.accumulate`) on the engine."""
    if resolve_engine(engine) == LOCAL:
        from .stats import accumulate as local

        return local(dataset, dim, filter=filter)
    from . import distributed

    ensure_ray()
    return distributed.accumulate(dataset, dim, filter=filter)


def score_rows(dataset, stats, target: np.ndarray | None = None, index=None,
               message: str = "curator score", all_uncertainty: bool = False, *,
               engine: str | None = None):
    """Rescore target rows and commit (:func:`curator.rescore.score_rows`) on the engine."""
    if resolve_engine(engine) == LOCAL:
        from .rescore import score_rows as local

        return local(dataset, stats, target, index, message, all_uncertainty)
    from . import distributed

    ensure_ray()
    return distributed.score_rows(dataset, stats, target, index, message, all_uncertainty)
