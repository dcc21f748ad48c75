"""2-D views of raw embeddings, from first and second moments (pure numpy).

A view is an affine map ``x ↦ ((x − c)·a₁ + o₁, (x − c)·a₂ + o₂)``, defined by moments
alone, so it can be fitted from the running statistics (:mod:`curator.geometry.sums`) at
any table size and applied to the rows in one streaming pass.

- **gap** (the paper's picture of the two shells, the report's "Two shells and the gap"):
  x = ⟨x, ĝ⟩ with ĝ = (m_a − m_b)/‖m_a − m_b‖, the unit modality gap (raw, not centred:
  the value is the distance along the gap, so each shell sits at its own mean's
  offset); y = ⟨x − c, p⟩ with c the pooled mean of the two modalities and p the top
  eigenvector of the pooled covariance after projecting out ĝ, i.e. the largest spread
  that is not the gap. Pooled = the rows of both modalities together, each row weighing
  the same (so a modality with more rows pulls c and p more).
- **pca**: the top two eigenvectors of the pooled covariance of the given modalities
  (all of them, rows weighing the same), about the pooled mean. On CLIP embeddings the
  first axis is then mostly the modality gap, because the two shells are far apart.

Eigenvectors have no sign of their own; each axis is oriented so that its component of
largest magnitude is positive (ties: the first), making the view deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class View:
    """An affine 2-D view: coordinates = (X − centre) @ axes.T + offset."""

    method: str
    axes: np.ndarray  # (2, d) float64, unit rows
    centre: np.ndarray  # (d,) float64
    offset: np.ndarray  # (2,) float64

    def coordinates(self, X: np.ndarray, *, fast: bool = False) -> np.ndarray:
        """(n, 2) float64 coordinates of the rows of X (n, d). ``fast``: the product in
        float32 (no float64 copy of X; error ~1e-6 of ‖x‖, for display)."""
        X = np.asarray(X)
        if fast:
            out = (X @ self.axes.T.astype(X.dtype)).astype(np.float64)
        else:
            out = X.astype(np.float64, copy=False) @ self.axes.T
        out += self.offset - self.centre @ self.axes.T
        return out

    def to_dict(self) -> dict:
        return {"method": self.method, "axes": self.axes.tolist(), "centre": self.centre.tolist(),
                "offset": self.offset.tolist()}


def orient(v: np.ndarray) -> np.ndarray:
    """``v`` or ``−v``: the one whose component of largest magnitude is positive."""
    v = np.asarray(v, np.float64)
    return v if v[int(np.argmax(np.abs(v)))] >= 0 else -v


def pooled(moments: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the union of groups given as (rows, mean, covariance)."""
    n = sum(k for k, _, _ in moments)
    if n <= 0:
        raise ValueError("no rows to pool")
    centre = sum(k * m for k, m, _ in moments) / n
    cov = sum(k * (c + np.outer(m - centre, m - centre)) for k, m, c in moments) / n
    return centre, (cov + cov.T) / 2


def top_eigenvectors(cov: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` eigenvectors of the symmetric ``cov`` with the largest eigenvalues, as
    oriented rows (k, d), largest first."""
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    order = np.argsort(values)[::-1][:k]
    return np.stack([orient(vectors[:, i]) for i in order])


def gap_view(m_a: np.ndarray, m_b: np.ndarray, centre: np.ndarray, cov: np.ndarray) -> View:
    """The gap view from the modality means and the pooled mean and covariance.

    Raises ValueError when the two means coincide (no gap to show).
    """
    m_a, m_b = np.asarray(m_a, np.float64), np.asarray(m_b, np.float64)
    gap = m_a - m_b
    norm = float(np.linalg.norm(gap))
    if not np.isfinite(norm) or norm <= 1e-12 * max(float(np.linalg.norm(m_a)), 1e-300):
        raise ValueError("the two modality means coincide: no gap direction")
    g = gap / norm
    residual = np.eye(len(g)) - np.outer(g, g)
    p = top_eigenvectors(residual @ cov @ residual, 1)[0]
    p = p - (p @ g) * g  # exact orthogonality to float rounding
    p = orient(p / np.linalg.norm(p))
    centre = np.asarray(centre, np.float64)
    # x is the raw <x, g>: the centre's part along g is added back as the offset
    return View("gap", np.stack([g, p]), centre, np.array([centre @ g, 0.0]))


def pca_view(centre: np.ndarray, cov: np.ndarray) -> View:
    """The top two principal axes of ``cov`` about ``centre``."""
    centre = np.asarray(centre, np.float64)
    return View("pca", top_eigenvectors(np.asarray(cov, np.float64), 2), centre, np.zeros(2))


def sample_moments(X: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows, mean, covariance) of an in-memory sample (float64, divided by n)."""
    X = np.asarray(X, np.float64)
    m = X.mean(axis=0)
    D = X - m
    return len(X), m, D.T @ D / len(X)


def gap_view_of(a, b) -> View:
    """The gap view of two modalities' running statistics (:class:`ModalityStats`: ``n``,
    ``mean``, ``covariance``): the gap is ``a.mean − b.mean``."""
    centre, cov = pooled([(a.n, a.mean, a.covariance), (b.n, b.mean, b.covariance)])
    return gap_view(a.mean, b.mean, centre, cov)


def pca_view_of(groups: list) -> View:
    """The PCA view of the union of the modalities' running statistics."""
    return pca_view(*pooled([(s.n, s.mean, s.covariance) for s in groups if s.n > 0]))
