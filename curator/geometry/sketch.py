"""The uncertainty sketch: a fixed-bin histogram of a modality's conformity values.

65,536 bins over [-1, 1] (width ~3.05e-5). Mergeable (counts add), and the CDF read off
it is the percentile behind ``uncertainty``: its error is at most the largest bin's
share of rows (:func:`resolution`). Values are binned at their stored (float32)
precision, so a value binned when scored and binned again from the table always lands
in the same bin.
"""

from __future__ import annotations

import numpy as np

HIST_BINS = 1 << 16  # conformity sketch: 65,536 bins over [-1, 1], width ~3.05e-5
HIST_LO, HIST_HI = -1.0, 1.0
BIN_WIDTH = (HIST_HI - HIST_LO) / HIST_BINS


def conformity_bins(values: np.ndarray) -> np.ndarray:
    """Sketch bin of each conformity, taken at its stored (float32) precision, so a value
    binned when scored and binned again from the table always lands in the same bin."""
    values = np.asarray(values, np.float32).astype(np.float64)
    pos = (np.clip(values, HIST_LO, HIST_HI) - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS
    return np.minimum(pos.astype(np.int64), HIST_BINS - 1)



def counts(values: np.ndarray) -> np.ndarray:
    """Per-bin counts (``HIST_BINS`` int64) of the finite ``values`` (NaN: no value)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return np.bincount(conformity_bins(values), minlength=HIST_BINS).astype(np.int64, copy=False)


def cdf(hist: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fraction of sketched conformities ≤ each value, linear within a bin, in [0, 1]
    (NaN when the sketch is empty)."""
    total = hist.sum()
    values = np.asarray(values, np.float64)
    if total <= 0:
        return np.full(values.shape, np.nan)
    cum = np.concatenate([[0], np.cumsum(hist)])
    pos = (np.clip(values, HIST_LO, HIST_HI) - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS
    idx = np.minimum(pos.astype(np.int64), HIST_BINS - 1)
    frac = np.clip(pos - idx, 0.0, 1.0)
    return (cum[idx] + frac * hist[idx]) / total


def resolution(hist: np.ndarray) -> float:
    """Upper bound of the sketch's CDF error: the largest bin's share of rows, [0, 1]."""
    total = hist.sum()
    return float(hist.max() / total) if total > 0 else 0.0


def sparse(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bins, counts) of the non-empty bins: how snapshots store a sketch."""
    bins = np.flatnonzero(hist)
    return bins.astype(np.int32), hist[bins].astype(np.int64)


def dense(bins, counts) -> np.ndarray:
    """The sketch from :func:`sparse`'s (bins, counts)."""
    hist = np.zeros(HIST_BINS, np.int64)
    hist[np.asarray(bins, np.int64)] = np.asarray(counts, np.int64)
    return hist
