"""Per-row scores of geometry.md, each a pure function of vectors and statistics.

Ranges and directions:

- ``conformity`` in [-1, 1]: mean cosine to the other rows of the modality. High = a
  generic, frequent concept near the modality's mean direction; low = rare/specific.
  Exact: ``(⟨x̂, U⟩ − 1)/(n − 1)`` for a member of the reference set, ``⟨x̂, U⟩/n``
  otherwise. Undefined (NaN → null) when the set has fewer than two rows.
- ``conformity_est`` in [-1, 1]: cos(x, m), the paper's estimator; same direction.
- ``uncertainty`` in [0, 1]: percentile of conformity in its modality (1 = most generic
  = most uncertain), from the statistics' sketch.
- ``loglik`` (nats, ≤ ~0): whitened Gaussian log-likelihood; low = atypical.
- ``alignment`` in [-1, 1]: cos(image, text); low = the caption does not fit the image.
- ``alignment_centered`` in [-1, 1]: cos(image − m_img, text − m_txt), gap removed.
- ``conformity_mismatch`` in [-1, 1]: uncertainty(text) − uncertainty(image); large
  positive = a generic caption on a specific image.
"""

from __future__ import annotations

import numpy as np

from .sums import ModalityStats
from .whitening import Whitening

IMAGE, TEXT = "image", "text"
AT_MEAN = 1e-5  # ‖x − m‖² below this share of (‖x‖ + ‖m‖)²: at the mean, no direction


def conformity(dot_unit_sum: np.ndarray, n: int, in_reference: bool = True) -> np.ndarray:
    """Exact conformity from ⟨x̂, U⟩ (float64), the reference count n and membership."""
    if in_reference:
        if n < 2:
            return np.full(np.shape(dot_unit_sum), np.nan)
        return (dot_unit_sum - 1.0) / (n - 1)
    if n < 1:
        return np.full(np.shape(dot_unit_sum), np.nan)
    return dot_unit_sum / n


def row_scores(X: np.ndarray, norms: np.ndarray, modality: str,
               stats: dict[str, ModalityStats], whitening: Whitening | None,
               in_reference: bool = True) -> dict[str, np.ndarray]:
    """Scores of rows X (n, d float32) of one modality against the table's statistics.

    Returns float64 arrays: ``conformity``, ``conformity_est``, ``loglik`` and, for each
    modality M of ``stats``, ``dot_M`` = ⟨x, m_M⟩ (used by the pair scores). One
    matrix product with [U, m_1, m_2, …]; no normalised copy of X is made.
    """
    own = stats[modality]
    names = sorted(stats)
    columns = np.stack([own.U] + [stats[m].mean for m in names], axis=1).astype(np.float32)
    dots = (X @ columns).astype(np.float64)
    inv = 1.0 / norms.astype(np.float64)
    out = {"conformity": conformity(dots[:, 0] * inv, own.n, in_reference)}
    for k, m in enumerate(names, start=1):
        out[f"dot_{m}"] = dots[:, k]
    mean_norm = float(np.linalg.norm(own.mean))
    with np.errstate(divide="ignore", invalid="ignore"):
        out["conformity_est"] = out[f"dot_{modality}"] * inv / mean_norm
    out["loglik"] = whitening.loglik(X) if whitening is not None else np.full(len(X), np.nan)
    return out


def pair_scores(pair_dot, norm_i, norm_t, dot_i_mi, dot_i_mt, dot_t_mi, dot_t_mt,
                m_image: np.ndarray, m_text: np.ndarray, unc_i, unc_t) -> dict[str, np.ndarray]:
    """Scores of image–text pairs from scalars (no vectors needed).

    With raw dot ⟨x_i, x_t⟩, norms and dots with both means:
    ``cos(x_i−m_i, x_t−m_t) = (⟨x_i,x_t⟩ − ⟨x_i,m_t⟩ − ⟨m_i,x_t⟩ + ⟨m_i,m_t⟩) / (‖x_i−m_i‖·‖x_t−m_t‖)``
    with ``‖x−m‖² = ‖x‖² − 2⟨x,m⟩ + ‖m‖²``. A row at its modality's mean (‖x−m‖² below
    ``AT_MEAN`` × (‖x‖ + ‖m‖)², where float32 leaves no digits, e.g. a modality of one
    row) has no direction: its centred alignment is null (NaN).
    """
    pair_dot = np.asarray(pair_dot, np.float64)
    ni, nt = np.asarray(norm_i, np.float64), np.asarray(norm_t, np.float64)
    alignment = pair_dot / (ni * nt)
    numerator = pair_dot - dot_i_mt - dot_t_mi + float(m_image @ m_text)
    mi2, mt2 = float(m_image @ m_image), float(m_text @ m_text)
    ci2 = ni * ni - 2 * dot_i_mi + mi2
    ct2 = nt * nt - 2 * dot_t_mt + mt2
    defined = (ci2 > AT_MEAN * (ni + np.sqrt(mi2)) ** 2) & (ct2 > AT_MEAN * (nt + np.sqrt(mt2)) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        centered = np.where(defined, numerator / np.sqrt(np.maximum(ci2, 0.0) * np.maximum(ct2, 0.0)),
                            np.nan)
    return {
        "alignment": np.clip(alignment, -1, 1),
        "alignment_centered": np.clip(centered, -1, 1),
        "conformity_mismatch": np.asarray(unc_t, np.float64) - np.asarray(unc_i, np.float64),
    }
