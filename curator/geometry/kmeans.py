"""Spherical k-means on unit vectors: seeding, Lloyd steps, nearest centroids.

In-memory matrices only (the streaming passes over a table live in
:mod:`curator.curation.clusters`). Used for concept clusters and for dedupe's partitions.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInput

_BLOCK = 8_192  # rows per matmul block
_INIT_ROUNDS = 64  # k-means++ draws at most ceil(k / 64) centres per round above k = 64
_TOLERANCE = 1e-4  # k-means stops when at most this fraction of labels changed


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, a new array). Zero rows stay zero."""
    X = np.asarray(X, np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)).astype(np.float32)
    norms[norms == 0] = 1.0
    return X / norms[:, None]


def top_centroids(U: np.ndarray, C: np.ndarray, p: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``p`` highest-cosine centroids of each unit row, best first.

    Returns (labels (n, p) int32, cosines (n, p) float32); cosines in [−1, 1], higher =
    nearer. Works in blocks of rows, so the n × k score matrix is never held whole.
    """
    n, k = len(U), len(C)
    p = max(1, min(p, k))
    labels = np.empty((n, p), np.int32)
    cos = np.empty((n, p), np.float32)
    Ct = np.ascontiguousarray(C.T, dtype=np.float32)
    rows = np.arange(min(n, _BLOCK))[:, None]
    for a in range(0, n, _BLOCK):
        S = U[a:a + _BLOCK] @ Ct
        r = rows[:len(S), 0]
        for q in range(p):  # p argmax passes: far cheaper than argpartition for small p
            best = S.argmax(axis=1)
            labels[a:a + len(S), q] = best
            cos[a:a + len(S), q] = S[r, best]
            if q + 1 < p:
                S[r, best] = -np.inf
    return labels, cos


def kmeans_pp(U: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded k-means++ centres on unit rows (distance² = 2(1 − cos)).

    For k ≤ 64 this is exact k-means++; above, each round draws ceil(k/64) centres from
    the same D² distribution (one matmul per round), so seeding costs ≤ 64 passes. Above
    max(20,000, 50·k) rows, seeding draws from a seeded subset of that size.
    """
    n = len(U)
    if n > max(20_000, 50 * k):  # seeding on a seeded subset is as good and much cheaper
        U = U[np.sort(rng.choice(n, max(20_000, 50 * k), replace=False))]
        n = len(U)
    per_round = max(1, -(-k // _INIT_ROUNDS))
    chosen = [int(rng.integers(n))]
    best = np.full(n, -np.inf, np.float32)
    new = U[chosen]
    while len(chosen) < k:
        np.maximum(best, (U @ new.T).max(axis=1), out=best)
        weight = np.maximum(1.0 - best.astype(np.float64), 0.0)
        weight[chosen] = 0.0
        total = weight.sum()
        take = min(per_round, k - len(chosen))
        if total <= 0:  # fewer distinct directions than k: fill with unused rows
            rest = np.setdiff1d(np.arange(n), chosen)
            picks = rng.choice(rest, size=take, replace=False)
        else:
            nonzero = int((weight > 0).sum())
            picks = rng.choice(n, size=min(take, nonzero), replace=False, p=weight / total)
        chosen.extend(int(x) for x in picks)
        new = U[picks]
    return U[np.asarray(chosen[:k])].copy()


def spherical_kmeans(U: np.ndarray, k: int, *, seed: int = 0, iterations: int = 25
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on unit rows ``U`` (n, d): returns (centroids (k, d) unit, labels).

    Lloyd iterations maximise Σ cos(x̂, c_label); a centroid is the normalised sum of its
    rows. An emptied cluster is re-seeded with the row farthest from its centroid (lowest
    cosine). Stops early when at most 0.01% of labels change. Deterministic for a seed.
    """
    n = len(U)
    if not 1 <= k <= n:
        raise BadInput(f"k must be between 1 and the number of rows ({n}), got {k}")
    rng = np.random.default_rng(seed)
    C = kmeans_pp(U, k, rng)
    labels = np.full(n, -1, np.int32)
    for _ in range(max(1, iterations)):
        new_labels, cos = top_centroids(U, C, 1)
        new_labels, cos = new_labels[:, 0], cos[:, 0]
        changed = (new_labels != labels).mean() > _TOLERANCE
        labels = new_labels
        sums = _cluster_sums(U, labels, k)
        empty = np.flatnonzero(~sums.any(axis=1))
        if len(empty):
            far = np.argsort(cos, kind="stable")[:len(empty)]
            sums[empty] = U[far]
            labels[far] = empty
            changed = True
        C = unit_rows(sums)
        if not changed:
            break
    return C, labels


def _cluster_sums(U: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    sums = np.zeros((k, U.shape[1]), np.float64)
    for a in range(0, len(U), 4 * _BLOCK):
        lab = labels[a:a + 4 * _BLOCK]
        order = np.argsort(lab, kind="stable")
        sorted_lab = lab[order]
        starts = np.flatnonzero(np.r_[True, sorted_lab[1:] != sorted_lab[:-1]])
        sums[sorted_lab[starts]] += np.add.reduceat(U[a:a + 4 * _BLOCK][order], starts, axis=0,
                                                    dtype=np.float64)
    return sums

