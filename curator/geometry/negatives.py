"""False negatives of contrastive training, counted per row: the math on in-memory arrays.

Definitions (unit vectors; a *pair* is an image and a caption of one sample):

- a caption t's **own cosine** a(t) is the cosine of its sample's image (the best one
  when a sample has several images); an image v's own cosine a(v) is the cosine of its
  best caption;
- with a tolerance ε ≥ 0, ``fn_count(t)`` = #{images v of other samples : cos(t, v) ≥
  a(t) − ε} and ``fn_count(v)`` = #{captions t of other samples : cos(t, v) ≥ a(v) − ε}:
  the other samples' partners that would score at least as well as the row's own in a
  contrastive batch. Range [0, candidates]; 0 = no false negative, high = a generic row
  (a frequent concept) that many other samples fit. Comparisons carry a float32
  tolerance of ``TOL`` = 1e-6 (``≥ a − ε − TOL``), so exact duplicates count at ε = 0.

**Exact counts** (:func:`exact_counts`): one blocked float32 product T·Vᵀ serves both
directions (rows against caption thresholds, columns against image thresholds);
same-sample pairs are masked. O(n_t·n_v·d).

**The skip rule** (:class:`ProbePlan`), one direction at a time (queries Q, candidates
X; captions against images, then images against captions). The candidates are
partitioned by spherical k-means into clusters j with member mean μ_j (the mean of the
members' unit vectors, not normalised) and radius R_j = max_{x∈j} ‖x − μ_j‖. A query q
with threshold θ_q = a(q) − ε − TOL is compared with the members of cluster j only if

    ⟨q, μ_j⟩ ≥ θ_q − m_j,        m_j = min(m, R_j).

*Proof that it never over-counts:* every pair that is counted was computed in float32
against its own threshold, and each (query, candidate) pair is computed at most once
(a candidate lives in exactly one cluster and a query visits a cluster at most once).
So a count is the number of true false negatives among the pairs computed: it can
only be too low.

*Proof that it is exact when m ≥ R_j:* for x in cluster j, ⟨q, x⟩ = ⟨q, μ_j⟩ +
⟨q, x − μ_j⟩ ≤ ⟨q, μ_j⟩ + ‖q‖·‖x − μ_j‖ ≤ ⟨q, μ_j⟩ + R_j (Cauchy–Schwarz, ‖q‖ = 1).
A false negative has ⟨q, x⟩ ≥ θ_q, hence ⟨q, μ_j⟩ ≥ θ_q − R_j, and cluster j is
visited. Clusters whose radius is below m are therefore searched exactly.

*The calibrated margin:* in 512 dimensions R_j is 0.5–0.8 for any useful k and the
exact rule skips nothing, so m is set from data: on a seeded calibration sample of
queries, every false-negative pair (q, x) is found by brute force and its *required
margin* θ_q − ⟨q, μ_{j(x)}⟩ recorded; m is that distribution's ``target`` quantile
(default 0.995). Pairs needing more than m are the only ones missed, so the pair recall
is the share of false-negative pairs whose required margin is ≤ m_j. It is measured
again on a second, disjoint audit sample (reported as ``recall``); the counts of the
audit rows are also checked against brute force for over-counting.

Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kmeans import spherical_kmeans, top_centroids

TOL = 1e-6
_BLOCK_ELEMENTS = 1 << 23  # elements of one score-matrix block (32 MB of float32)
# A counting block (queries × one cluster's members) small enough that the comparison
# that follows its GEMM reads it from cache: 8 MB blocks counted 33k × 333 pairs 17% faster
# than 32 MB blocks on this project's 2-core machines (GEMM alone: 172 GFLOP/s).
_COUNT_BLOCK_ELEMENTS = 1 << 21


# -- own cosines and thresholds --------------------------------------------------------------

def same_sample_pairs(q_sample: np.ndarray, x_sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) with q_sample[i] == x_sample[j] (codes ≥ 0), as two int64 arrays."""
    q_sample, x_sample = np.asarray(q_sample), np.asarray(x_sample)
    order = np.argsort(x_sample, kind="stable")
    xs = x_sample[order]
    lo = np.searchsorted(xs, q_sample, "left")
    hi = np.searchsorted(xs, q_sample, "right")
    count = np.where(q_sample >= 0, hi - lo, 0)
    i = np.repeat(np.arange(len(q_sample)), count)
    if not len(i):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.repeat(lo, count)
    offset = np.arange(len(i)) - np.repeat(np.cumsum(count) - count, count)
    return i.astype(np.int64), order[starts + offset].astype(np.int64)


def own_cosines(T: np.ndarray, V: np.ndarray, t_sample: np.ndarray, v_sample: np.ndarray,
                chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Best same-sample cosine of each caption (over its sample's images) and of each
    image (over its captions), float64, [−1, 1]; NaN for a row without a partner."""
    i, j = same_sample_pairs(t_sample, v_sample)
    own_t = np.full(len(T), -np.inf)
    own_v = np.full(len(V), -np.inf)
    for a in range(0, len(i), chunk):
        ii, jj = i[a:a + chunk], j[a:a + chunk]
        dots = np.einsum("ij,ij->i", np.asarray(T[ii], np.float64), np.asarray(V[jj], np.float64))
        np.maximum.at(own_t, ii, dots)
        np.maximum.at(own_v, jj, dots)
    own_t[~np.isfinite(own_t)] = np.nan
    own_v[~np.isfinite(own_v)] = np.nan
    return own_t, own_v


def thresholds(own: np.ndarray, eps: float) -> np.ndarray:
    """θ = own − ε − TOL as float32 (the value scores are compared against)."""
    return (np.asarray(own, np.float64) - eps - TOL).astype(np.float32)


# -- exact counting --------------------------------------------------------------------------

def _mask_same(S: np.ndarray, q_sample: np.ndarray, x_sample: np.ndarray) -> None:
    i, j = same_sample_pairs(q_sample, x_sample)
    if len(i):
        S[i, j] = -np.inf


def count_block(Q: np.ndarray, theta: np.ndarray, q_sample: np.ndarray,
                X: np.ndarray, x_sample: np.ndarray) -> np.ndarray:
    """The per-partition function of a counting pass: for each query row, the number of
    candidate rows of other samples with ⟨q, x⟩ ≥ θ_q (int64, one per query)."""
    out = np.zeros(len(Q), np.int64)
    if not len(Q) or not len(X):
        return out
    X = np.ascontiguousarray(X, np.float32)
    rows = max(1, min(len(Q), _COUNT_BLOCK_ELEMENTS // max(1, len(X))))
    for a in range(0, len(Q), rows):
        S = np.asarray(Q[a:a + rows], np.float32) @ X.T
        _mask_same(S, q_sample[a:a + rows], x_sample)
        out[a:a + rows] = np.count_nonzero(S >= theta[a:a + rows, None], axis=1)
    return out


def exact_block(T: np.ndarray, theta_t: np.ndarray, t_sample: np.ndarray, V: np.ndarray,
                theta_v: np.ndarray, v_sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both directions for a block of captions against all images: (caption counts, per
    image the number of these captions that are its false negatives)."""
    fn_t = np.zeros(len(T), np.int64)
    fn_v = np.zeros(len(V), np.int64)
    V = np.ascontiguousarray(V, np.float32)
    rows = max(1, min(len(T), _BLOCK_ELEMENTS // max(1, len(V))))
    for a in range(0, len(T), rows):
        S = np.asarray(T[a:a + rows], np.float32) @ V.T
        _mask_same(S, t_sample[a:a + rows], v_sample)
        fn_t[a:a + rows] = np.count_nonzero(S >= theta_t[a:a + rows, None], axis=1)
        fn_v += np.count_nonzero(S >= theta_v[None, :], axis=0)
    return fn_t, fn_v


def exact_counts(T, V, theta_t, theta_v, t_sample, v_sample) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``fn_count`` of every caption and image (brute force, blocked)."""
    fn_t, fn_v = exact_block(T, theta_t, t_sample, V, theta_v, v_sample)
    return fn_t, fn_v


def _add_by_label(sums: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
    """sums[c] += Σ rows of label c (float64 sums): one sort and one ``reduceat``, where
    ``np.add.at`` with 2-D rows is ~15× slower (32 s for 1M × 512 rows, k = 3,000)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sums[sorted_labels[starts]] += np.add.reduceat(rows[order], starts, axis=0, dtype=np.float64)


# -- the skip rule ---------------------------------------------------------------------------

def auto_partitions(n: int) -> int:
    """Clusters for n candidates: about 3·√n, at most 4,096 (measured on CLIP-like data,
    200k rows: k = 400, 1,600, 3,200 searched 4.7%, 3.6%, 3.1% of pairs for the same
    recall; scoring the queries against the clusters costs n·k·d)."""
    return int(max(1, min(4096, round(3.0 * np.sqrt(n)))))


@dataclass
class ProbePlan:
    """Clusters of the candidates (labels, member means μ, radii R) and the margin m."""

    labels: np.ndarray  # int32 cluster of each candidate
    means: np.ndarray  # (k, d) float32 mean of the members' unit vectors
    radius: np.ndarray  # (k,) float64 max ‖x − μ_j‖ over members (+ float slack)
    margin: float = np.inf

    @property
    def k(self) -> int:
        return len(self.means)

    @property
    def margins(self) -> np.ndarray:
        """m_j = min(m, R_j): exact for clusters narrower than the margin."""
        return np.minimum(self.margin, self.radius)

    @classmethod
    def train(cls, X, k: int, *, seed: int = 0, sample: int | None = None,
              block: int = 65_536) -> ProbePlan:
        """Spherical k-means on a seeded sample of X (unit rows), every row assigned."""
        n = len(X)
        k = max(1, min(k, n))
        rng = np.random.default_rng(seed)
        size = min(n, sample or max(20_000, 16 * k))
        rows = np.arange(n) if size == n else np.sort(rng.choice(n, size, replace=False))
        C, _ = spherical_kmeans(np.asarray(X[rows], np.float32), k, seed=seed, iterations=8)
        labels = np.empty(n, np.int32)
        sums = np.zeros((len(C), X.shape[1]))
        for a in range(0, n, block):
            part = np.asarray(X[a:a + block], np.float32)
            lab, _ = top_centroids(part, C, 1)
            labels[a:a + block] = lab[:, 0]
            _add_by_label(sums, lab[:, 0], part)
        counts = np.bincount(labels, minlength=len(C))
        means = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        radius = np.zeros(len(C))
        for a in range(0, n, block):
            part = np.asarray(X[a:a + block], np.float32)
            lab = labels[a:a + block]
            np.maximum.at(radius, lab, np.linalg.norm(part - means[lab], axis=1))
        return cls(labels, means, radius + 1e-5)

    def members(self) -> list[np.ndarray]:
        """Candidate positions of each cluster (sorted)."""
        order = np.argsort(self.labels, kind="stable")
        cuts = np.searchsorted(self.labels[order], np.arange(self.k + 1))
        return [order[cuts[j]:cuts[j + 1]] for j in range(self.k)]

    def required_margins(self, Qc: np.ndarray, theta_c: np.ndarray, q_rows: np.ndarray,
                         x_cols: np.ndarray) -> np.ndarray:
        """θ_q − ⟨q, μ_{j(x)}⟩ of the false-negative pairs (q_rows into Qc, x_cols into X)."""
        M = np.asarray(Qc, np.float32) @ self.means.T
        return theta_c[q_rows].astype(np.float64) - M[q_rows, self.labels[x_cols]]

    def calibrate(self, needs: np.ndarray, target: float) -> float:
        """Set m to the ``target`` quantile of the required margins; returns it."""
        self.margin = float(np.quantile(needs, target)) if len(needs) else float(self.radius.max())
        return self.margin

    def probes(self, Q, theta: np.ndarray, block: int = 16_384) -> list[np.ndarray]:
        """For each cluster, the sorted query positions that visit it."""
        margins = self.margins.astype(np.float32)
        found: list[list[np.ndarray]] = [[] for _ in range(self.k)]
        means_t = np.ascontiguousarray(self.means.T)
        for a in range(0, len(Q), block):
            M = np.asarray(Q[a:a + block], np.float32) @ means_t
            r, j = np.nonzero(M >= theta[a:a + block, None] - margins[None, :])
            order = np.argsort(j, kind="stable")
            r, j = (r[order] + a).astype(np.int32), j[order]
            cuts = np.searchsorted(j, np.arange(self.k + 1))
            for c in np.flatnonzero(np.diff(cuts)):
                found[c].append(r[cuts[c]:cuts[c + 1]])
        return [np.concatenate(f) if f else np.zeros(0, np.int32) for f in found]


def exact_false_negatives(Qs, theta_s, q_sample_s, X, x_sample, chunk: int = 32_768
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brute force for a few queries: (exact count per query, and the false-negative pairs
    as (query row, candidate position))."""
    counts = np.zeros(len(Qs), np.int64)
    rows, cols = [], []
    Qs = np.asarray(Qs, np.float32)
    for a in range(0, len(X), chunk):
        S = Qs @ np.asarray(X[a:a + chunk], np.float32).T
        _mask_same(S, q_sample_s, x_sample[a:a + chunk])
        r, c = np.nonzero(S >= theta_s[:, None])
        counts += np.bincount(r, minlength=len(Qs))
        rows.append(r)
        cols.append(c + a)
    return counts, np.concatenate(rows), np.concatenate(cols)
