"""Brute-force oracles of every score column, from the vectors alone (float64, O(n²)).

Written from geometry.md without curator's code: mean pairwise cosines, the Gaussian
log-likelihood with numpy's covariance and eigen-decomposition, exact percentiles, and
pair scores by joining each caption with its sample's first image (by row id).
"""

from __future__ import annotations

import numpy as np

EIG_FLOOR_REL = 1e-6  # geometry.md: eigenvalues floored at a small ε relative to the largest
AT_MEAN = 1e-5  # a row this close to its modality's mean has no centred direction (null)


def table_oracle(t: dict) -> dict[str, np.ndarray]:
    """Exact score columns for the rows of ``t`` (a to_pydict of the table with
    ``_rowid``, id, sample_id, modality, embedding); NaN where the value is null."""
    n = len(t["id"])
    X = np.array(t["embedding"], np.float64)
    modality = np.array(t["modality"], dtype=object)
    out = {c: np.full(n, np.nan) for c in ("conformity", "conformity_est", "uncertainty", "loglik",
                                           "alignment", "alignment_centered", "conformity_mismatch")}
    means = {}
    for m in np.unique(modality):
        rows = np.flatnonzero(modality == m)
        V = X[rows]
        U = V / np.linalg.norm(V, axis=1, keepdims=True)
        mean = V.mean(axis=0)
        means[m] = mean
        out["conformity_est"][rows] = U @ mean / np.linalg.norm(mean)
        if len(rows) < 2:
            continue
        G = U @ U.T
        np.fill_diagonal(G, 0.0)
        conf = G.sum(axis=1) / (len(rows) - 1)
        out["conformity"][rows] = conf
        out["uncertainty"][rows] = (conf[None, :] <= conf[:, None]).mean(axis=1)
        out["loglik"][rows] = gaussian_loglik(V)
    rowid = np.array(t["_rowid"], np.uint64)
    samples = np.array([s if s is not None else "" for s in t["sample_id"]], dtype=object)
    first = {}
    for k in np.argsort(rowid, kind="stable"):
        if modality[k] == "image" and samples[k] and samples[k] not in first:
            first[samples[k]] = k
    best = {}
    for k in range(n):
        if modality[k] != "text" or not samples[k] or samples[k] not in first:
            continue
        i = first[samples[k]]
        a, b = X[i], X[k]
        align = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        ca, cb = a - means["image"], b - means["text"]
        at_mean = (ca @ ca <= AT_MEAN * (np.linalg.norm(a) + np.linalg.norm(means["image"])) ** 2
                   or cb @ cb <= AT_MEAN * (np.linalg.norm(b) + np.linalg.norm(means["text"])) ** 2)
        centered = np.nan if at_mean else ca @ cb / np.linalg.norm(ca) / np.linalg.norm(cb)
        mismatch = out["uncertainty"][k] - out["uncertainty"][i]
        out["alignment"][k], out["alignment_centered"][k], out["conformity_mismatch"][k] = align, centered, mismatch
        prev = best.get(i, (-np.inf, -np.inf, -np.inf))
        best[i] = tuple(np.fmax(p, v) for p, v in zip(prev, (align, centered, mismatch)))
    for i, values in best.items():  # the best over captions; null when every one is null
        align, centered, mismatch = (np.nan if v == -np.inf else v for v in values)
        out["alignment"][i], out["alignment_centered"][i] = align, centered
        out["conformity_mismatch"][i] = mismatch
    return out


def gaussian_loglik(V: np.ndarray) -> np.ndarray:
    """−½(d log 2π + (x−m)ᵀΣ⁻¹(x−m) + log det Σ), Σ the (biased) covariance with its
    eigenvalues floored at EIG_FLOOR_REL × the largest."""
    d = V.shape[1]
    mean = V.mean(axis=0)
    cov = np.cov(V.T, bias=True).reshape(d, d)
    lam, vec = np.linalg.eigh(cov)
    lam = np.maximum(lam, max(lam.max(), 1e-30) * EIG_FLOOR_REL)
    Y = (V - mean) @ vec / np.sqrt(lam)
    return -0.5 * (d * np.log(2 * np.pi) + (Y * Y).sum(axis=1) + np.log(lam).sum())
