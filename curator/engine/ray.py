"""The Ray executor: the same per-piece functions as the local one, run as Ray tasks.

Ray connects to ``$RAY_ADDRESS`` when set (an existing cluster, ``ray://host:10001`` or
``auto``), otherwise starts a local instance with ``$CURATOR_RAY_CPUS`` CPUs (default:
all). This is the only module that imports Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator

from ..errors import MissingDependency

RAY_HINT = "--engine ray needs Ray: pip install 'clip-curator[ray]'"


def ensure_ray(quiet: bool = True) -> None:
    """Connect Ray once per process (a no-op when already connected); stays up until exit.

    ``ray.init(address=$RAY_ADDRESS)``; without an address a local instance with
    ``$CURATOR_RAY_CPUS`` CPUs (default all). On a remote cluster the ``curator``
    package is shipped with the job (``runtime_env.py_modules``); its dependencies
    (lancedb, pylance, numpy, pyarrow) must be installed on the workers.
    """
    try:
        import ray
    except ImportError as exc:
        raise MissingDependency(RAY_HINT) from exc

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        kwargs = {"ignore_reinit_error": True, "include_dashboard": False,
                  "log_to_driver": not quiet, "logging_level": "WARNING"}
        if address:
            kwargs["address"] = address
            package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            kwargs["runtime_env"] = {"py_modules": [package]}
        elif os.environ.get("CURATOR_RAY_CPUS"):
            kwargs["num_cpus"] = int(os.environ["CURATOR_RAY_CPUS"])
        ray.init(**kwargs)
    logging.getLogger("ray").setLevel(logging.WARNING if not quiet else logging.ERROR)


@contextlib.contextmanager
def ray_session(quiet: bool = True) -> Iterator[None]:
    """Ray connected for the block (:func:`ensure_ray`); shut down after if started here."""
    ensure_ray(quiet)
    import ray

    started = not ray.is_initialized()
    try:
        yield
    finally:
        if started:
            ray.shutdown()


class RayExecutor:
    """Runs each job as a Ray task; results come back in job order, with at most
    ``window`` tasks in flight (default: twice the cluster's CPUs)."""

    name = "ray"

    def __init__(self, quiet: bool = True):
        ensure_ray(quiet)
        import ray

        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def put(self, value):
        """A handle to a value every job reads (stored once in Ray's object store)."""
        import ray

        return ray.put(value)

    def map(self, fn: Callable, jobs: Iterable[tuple], *, window: int | None = None,
            threads: int = 1) -> Iterator:
        """``fn(*job)`` for each job as Ray tasks, yielded in job order, at most ``window``
        in flight (``threads`` is the local engine's; Ray spreads jobs over its CPUs)."""
        import ray

        remote = ray.remote(fn)
        window = window or 2 * self.cpus
        pending = []
        for job in jobs:
            pending.append(remote.remote(*job))
            if len(pending) >= window:
                yield ray.get(pending.pop(0))
        for ref in pending:
            yield ray.get(ref)
