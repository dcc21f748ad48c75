"""Proven bounds on how far a stored score can be from its exact value now.

A row scored under statistics version v keeps its score while the statistics move on
to version w; these bounds need only the versions' sums, never a vector
(docs/geometry-bounds.md derives each).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sums import ModalityStats


@dataclass
class HistoryEntry:
    version: int
    modality: str
    n: int
    S: np.ndarray
    U: np.ndarray


def staleness_bound(old: HistoryEntry | None, current: ModalityStats) -> float:
    """Bound on |C_old − C_now| for rows scored at ``old`` (geometry.md), from sums alone.

    ``‖U_v/(n_v−1) − U_w/(n_w−1)‖ + |1/(n_v−1) − 1/(n_w−1)|``; infinite when the old
    version is unknown or had a single row (no conformity then).
    """
    if old is None or old.n < 2 or current.n < 2:
        return float("inf") if (old is None or current.n >= 2) else 0.0
    if old.n == current.n and np.array_equal(old.U, current.U):
        return 0.0
    diff = old.U / (old.n - 1) - current.U / (current.n - 1)
    return float(np.linalg.norm(diff) + abs(1.0 / (old.n - 1) - 1.0 / (current.n - 1)))

