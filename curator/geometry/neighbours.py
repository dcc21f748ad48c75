"""Near-duplicate pairs among unit vectors: exact blocked search, k-means partitions with
multi-probe, and connected components.

Pairs with cos(x̂_i, x̂_j) ≥ 1 − ε. Small inputs are compared exactly (blocked float32
matmul over all pairs). Larger ones are partitioned by spherical k-means: every row lives
in its nearest centroid's partition and also probes its next ``probes − 1`` nearest
partitions, but only those whose cosine is within 2·√(2ε) of its best one. Inside a
partition the search is exact. Cosines are float32; a tolerance of 1e-6 makes exact
duplicates count even with ε = 0. In-memory matrices only (the streaming search over a
table lives in :mod:`curator.curation.dedupe`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInput
from .backend import NUMPY, Backend
from .kmeans import spherical_kmeans, top_centroids, unit_rows

COS_TOL = 1e-6
EXACT_ROWS = 8_192  # at most this many rows: compare all pairs, no partitioning
DEFAULT_PROBES = 2


def near_duplicate_pairs(X: np.ndarray, eps: float, *, partitions: int | None = None,
                         probes: int = DEFAULT_PROBES, seed: int = 0, unit: bool = False,
                         backend: Backend = NUMPY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of rows of ``X`` with cos(x̂_i, x̂_j) ≥ 1 − eps.

    Returns (i, j, cos) arrays sorted by (i, j); cos in [1 − eps, 1]. ``partitions`` = 1
    compares all pairs exactly; otherwise (default: exact up to 8,192 rows, else about
    √(2n) partitions) k-means partitions with multi-probe are searched. The products run
    on ``backend`` (:mod:`curator.geometry.backend`).
    """
    check_eps(eps)
    U = np.ascontiguousarray(X, np.float32) if unit else unit_rows(X)
    n = len(U)
    k = partitions or auto_partitions(n)
    if k <= 1 or n <= 1:
        i, j, c = backend.threshold_pairs(U, None, threshold(eps))
        return sorted_unique(i, j, c)
    planner = PartitionPlan.train(U, k, eps, probes=probes, seed=seed, backend=backend)
    labels, keep = planner.assign(U, backend=backend)
    parts = []
    for c in range(planner.k):
        primary = np.flatnonzero(labels[:, 0] == c)
        if len(primary) == 0:
            continue
        secondary = np.flatnonzero(((labels[:, 1:] == c) & keep[:, 1:]).any(axis=1))
        parts.append(partition_pairs(U[primary], primary, U[secondary], secondary,
                                     threshold(eps), backend=backend))
    return sorted_unique(*concat_pairs(parts))


def threshold(eps: float) -> float:
    return 1.0 - eps - COS_TOL


def auto_partitions(n: int) -> int:
    """Partitions for n rows: none up to 8,192 rows, else about √(2n) (≤ 4,096)."""
    if n <= EXACT_ROWS:
        return 1
    return int(min(4096, max(2, round(np.sqrt(2.0 * n)))))


@dataclass
class PartitionPlan:
    """k-means centroids that partition unit vectors, and which probes can hold partners."""

    centroids: np.ndarray
    probes: int
    margin: float

    @property
    def k(self) -> int:
        return len(self.centroids)

    @classmethod
    def train(cls, U: np.ndarray, k: int, eps: float, *, probes: int, seed: int,
              backend: Backend = NUMPY) -> PartitionPlan:
        k = min(k, len(U))
        rng = np.random.default_rng(seed)
        size = min(len(U), max(20_000, 40 * k))
        sample = U if size == len(U) else U[np.sort(rng.choice(len(U), size, replace=False))]
        C, _ = spherical_kmeans(sample, k, seed=seed, iterations=8, backend=backend)
        return cls(C, max(1, min(probes, k)), 2.0 * np.sqrt(2.0 * (eps + COS_TOL)) + 1e-5)

    def assign(self, U: np.ndarray, *, backend: Backend = NUMPY) -> tuple[np.ndarray, np.ndarray]:
        """(labels (n, p), usable (n, p)): the p nearest partitions; a probe is usable when
        its cosine is within the margin of the best (column 0 is the home partition)."""
        labels, cos = top_centroids(U, self.centroids, self.probes, backend=backend)
        usable = cos >= cos[:, :1] - self.margin
        return labels, usable


def partition_pairs(Up: np.ndarray, pos_p: np.ndarray, Uq: np.ndarray, pos_q: np.ndarray,
                    thr: float, *, first: int | None = None, backend: Backend = NUMPY
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs within the home rows ``Up`` (each pair once) and between visiting rows ``Uq``
    and the home rows, with cosine ≥ thr; positions are the global row numbers.

    ``first``: only the pairs whose home row is one of the first ``first`` rows of ``Up``
    (a home-home pair counts for its earlier row), so a dense partition can be searched as
    consecutive blocks of home rows, each job handed the rows from its block on."""
    m = len(Up) if first is None else min(first, len(Up))
    if m == len(Up):
        r1, c1, s1 = backend.threshold_pairs(Up, None, thr)
    else:  # the block against itself and every later home row; each pair once (c > r)
        r1, c1, s1 = backend.threshold_pairs(Up[:m], Up, thr)
        later = c1 > r1
        r1, c1, s1 = r1[later], c1[later], s1[later]
    if len(Uq) == 0:
        return pos_p[r1], pos_p[c1], s1
    r2, c2, s2 = backend.threshold_pairs(Uq, Up[:m], thr)
    return (np.concatenate([pos_p[r1], pos_q[r2]]), np.concatenate([pos_p[c1], pos_p[c2]]),
            np.concatenate([s1, s2]))


def home_blocks(home_rows: int, visiting_rows: int, max_pairs: int) -> int:
    """Home rows per search job of a partition, so that a job's pairs, were every
    comparison a hit, stay ≤ ``max_pairs`` (at least one row; all of them when they fit)."""
    return max(1, min(home_rows, max_pairs // max(1, home_rows + visiting_rows)))


def empty_pairs():
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def concat_pairs(parts):
    if not parts:
        return empty_pairs()
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def sorted_unique(i, j, c):
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keep = lo != hi
    lo, hi, c = lo[keep], hi[keep], np.asarray(c, np.float32)[keep]
    order = np.lexsort((hi, lo))
    lo, hi, c = lo[order], hi[order], c[order]
    first = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])] if len(lo) else np.zeros(0, bool)
    return lo[first], hi[first], np.minimum(c[first], 1.0)


def check_eps(eps) -> None:
    if eps is None or not 0 <= eps < 1:
        raise BadInput(f"--eps must be in [0, 1) (near duplicates: cosine ≥ 1 − eps), got {eps}")


class UnionFind:
    """Connected components of n nodes, the edges given in chunks, vectorised.

    ``parent[x] ≤ x`` always and a root is its own parent, so each component's root is
    its smallest node. :meth:`union` finds the roots of a chunk's ends by pointer chasing
    (each queried node then points straight at its root), hooks the larger root of each
    differing pair under the smaller (``minimum.at``: the smallest wins), and repeats on
    the pairs still apart; nothing walks all n nodes until :meth:`labels`. Memory: the
    parent array (int32 below 2³¹ nodes) and the chunk's arrays."""

    def __init__(self, n: int, parent: np.ndarray | None = None):
        if parent is None:
            parent = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        self.parent = parent

    def find(self, x: np.ndarray) -> np.ndarray:
        """The root of each node of ``x`` (and each then points at its root)."""
        parent = self.parent
        root = parent[x]
        while True:
            up = parent[root]
            if np.array_equal(up, root):
                break
            root = up
        parent[x] = root
        return root

    def union(self, i: np.ndarray, j: np.ndarray) -> None:
        """Join the components of each edge (i, j)."""
        i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
        while len(i):
            ri, rj = self.find(i), self.find(j)
            apart = ri != rj
            if not apart.any():
                return
            i, j, ri, rj = i[apart], j[apart], ri[apart], rj[apart]
            np.minimum.at(self.parent, np.maximum(ri, rj), np.minimum(ri, rj))

    def labels(self, block: int = 1 << 20) -> np.ndarray:
        """Each node's root, the smallest node of its component (the parent array itself,
        compressed in place a block at a time: a node's parent is smaller, so the blocks
        before it already point at roots, and pointer jumping within the block ends)."""
        parent = self.parent
        for lo in range(0, len(parent), block):
            part = parent[lo:lo + block]
            while True:
                up = parent[part]
                if np.array_equal(up, part):
                    break
                part[:] = up
        return parent


def components(n: int, i: np.ndarray, j: np.ndarray, labels: np.ndarray | None = None, *,
               copy: bool = True) -> np.ndarray:
    """Component label (the smallest node of its component) of each of n nodes, given
    edges (:class:`UnionFind`). ``labels``: the result of an earlier call over other edges
    of the same nodes, so edges can come in chunks (the result equals one call over all
    of them); its integer type is kept, and ``copy=False`` updates an integer ``labels``
    in place (the caller hands it over)."""
    if labels is None:
        parent = None
    elif np.asarray(labels).dtype.kind in "iu":
        parent = np.array(labels, copy=True) if copy else np.asarray(labels)
    else:
        parent = np.asarray(labels, np.int64).copy()
    forest = UnionFind(n, parent)
    forest.union(i, j)
    return forest.labels()
