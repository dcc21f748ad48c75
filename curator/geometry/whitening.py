"""Whitening of a modality's raw vectors and the whitened Gaussian log-likelihood.

``y = Λ^{-1/2} Vᵀ (x − m)`` with ``Σ = V Λ Vᵀ``; eigenvalues are floored at
``EIG_FLOOR_REL`` of the largest (the floor and how many were floored are reported).

``loglik`` needs only ‖y‖², which any factor T with T Tᵀ = W Wᵀ gives: ``factor`` is the
lower-triangular one (T = Rᵀ from the QR decomposition Wᵀ = Q R, so T = W Q with Q
orthogonal), and a triangular product costs about half the multiply–adds of W's
(:meth:`~curator.geometry.backend.NumpyBackend.whitened_sq_norms` skips its zero blocks).
``matrix`` stays the eigen form: it is what the statistics table stores and what the
bounds read (P = W Wᵀ, ‖W‖₂ = its largest column norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .backend import NUMPY, Backend

EIG_FLOOR_REL = 1e-6  # covariance eigenvalues floored at this fraction of the largest


@dataclass
class Whitening:
    """y = Λ^{-1/2} Vᵀ (x - m): Σ = V Λ Vᵀ with eigenvalues floored at EIG_FLOOR_REL·λmax."""

    mean: np.ndarray
    matrix: np.ndarray  # d x d float32, columns V Λ^{-1/2}
    log_det: float
    floor: float
    floored: int

    @cached_property
    def factor(self) -> np.ndarray:
        """Lower-triangular T (d × d float32) with ‖(x−m) T‖ = ‖(x−m) W‖ for every x:
        T = W Q, Q orthogonal (computed in float64 from the float32 ``matrix``)."""
        R = np.linalg.qr(self.matrix.astype(np.float64).T, mode="r")
        return np.ascontiguousarray(np.tril(R.T)).astype(np.float32)

    @classmethod
    def from_covariance(cls, mean: np.ndarray, cov: np.ndarray) -> Whitening:
        eigvals, eigvecs = np.linalg.eigh((cov + cov.T) / 2)
        floor = max(float(eigvals.max()), 1e-30) * EIG_FLOOR_REL
        floored = int((eigvals < floor).sum())
        eigvals = np.maximum(eigvals, floor)
        matrix = (eigvecs / np.sqrt(eigvals)).astype(np.float32)
        return cls(mean.astype(np.float64), matrix, float(np.log(eigvals).sum()), floor, floored)

    def loglik(self, X: np.ndarray, *, backend: Backend = NUMPY) -> np.ndarray:
        """−½(d·log 2π + ‖y‖² + Σ log λ) per row (float64); the whitening product (O(n·d²))
        runs on ``backend``."""
        sq = backend.whitened_sq_norms(X, self.mean.astype(np.float32), self.factor)
        d = X.shape[1]
        return -0.5 * (d * np.log(2 * np.pi) + sq + self.log_det)

