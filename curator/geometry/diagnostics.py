"""Diagnostics of the double-ellipsoid geometry on in-memory samples: the covariance
spectrum's effective rank, the conformity–estimator fit, divergences between conformity
distributions, linear separability of the modalities and the gap sweep. Pure numpy; the
report (:mod:`curator.views.report`) feeds it samples. The 2-D view of the two shells is
:func:`curator.geometry.projection.gap_view`, shared with ``curator project``."""

from __future__ import annotations

import numpy as np

SWEEP_ALPHAS = np.round(np.linspace(-1.0, 1.0, 21), 10)
SWEEP_BINS = 50
TEST_FRACTION = 0.3


def effective_rank(eigenvalues: np.ndarray) -> float:
    """exp(entropy of λ/Σλ) (Roy & Vetterli): 1 for a line, d for an isotropic ball."""
    ev = np.clip(np.asarray(eigenvalues, np.float64), 0, None)
    total = ev.sum()
    if total <= 0:
        return 0.0
    p = ev[ev > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def pearson_fit(sums: np.ndarray) -> dict:
    """Pearson r of (cos(x,m), conformity) and the line C ≈ slope·cos + intercept, from sums."""
    n, sx, sy, sxx, syy, sxy = sums
    if n < 2:
        return {"rows": int(n), "pearson": None, "slope": None, "intercept": None}
    cxx, cyy, cxy = sxx - sx * sx / n, syy - sy * sy / n, sxy - sx * sy / n
    r = cxy / np.sqrt(cxx * cyy) if cxx > 0 and cyy > 0 else float("nan")
    slope = cxy / cxx if cxx > 0 else float("nan")
    return {"rows": int(n), "pearson": _num(r), "slope": _num(slope),
            "intercept_shifted": _num(sy / n - slope * sx / n)}


def divergences(a: np.ndarray, b: np.ndarray, bins: int = SWEEP_BINS) -> tuple[float, float]:
    """Jensen–Shannon divergence (bits, [0, 1]) and total variation ([0, 1]) of two samples
    on a common histogram spanning both."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    if hi <= lo:
        hi = lo + 1e-9
    p = np.histogram(a, bins=bins, range=(lo, hi))[0] / len(a)
    q = np.histogram(b, bins=bins, range=(lo, hi))[0] / len(b)
    mid = (p + q) / 2

    def kl(u):
        ok = u > 0
        return float((u[ok] * np.log2(u[ok] / mid[ok])).sum())

    return 0.5 * kl(p) + 0.5 * kl(q), 0.5 * float(np.abs(p - q).sum())


def linear_separability(A: np.ndarray, B: np.ndarray, seed: int) -> dict:
    """Held-out accuracy ([0, 1]) of a ridge least-squares linear classifier A vs B.

    Seeded 70/30 split of the pooled rows; features standardised on the training part;
    weights solve (XᵀX + λI) w = Xᵀy with y = ±1 and λ = 1e-3·mean eigenvalue of XᵀX.
    """
    X = np.concatenate([A, B]).astype(np.float64)
    y = np.concatenate([np.ones(len(A)), -np.ones(len(B))])
    perm = np.random.default_rng(seed).permutation(len(X))
    n_test = max(1, round(TEST_FRACTION * len(X)))
    test, train = perm[:n_test], perm[n_test:]
    mu, sd = X[train].mean(axis=0), X[train].std(axis=0)
    sd[sd == 0] = 1.0

    def design(rows):
        Z = (X[rows] - mu) / sd
        return np.hstack([Z, np.ones((len(rows), 1))])

    D = design(train)
    G = D.T @ D
    lam = 1e-3 * np.trace(G) / len(G)
    w = np.linalg.solve(G + lam * np.eye(len(G)), D.T @ y[train])
    acc = lambda rows, Dm: float(((Dm @ w > 0) == (y[rows] > 0)).mean())
    return {"test_accuracy": acc(test, design(test)), "train_accuracy": acc(train, D),
            "n_train": len(train), "n_test": len(test),
            "majority_baseline": float(max(y[test].mean(), -y[test].mean()) / 2 + 0.5),
            "method": "ridge least-squares linear classifier on standardised raw vectors, "
                      f"seeded {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} split"}


def gap_sweep(A: np.ndarray, B: np.ndarray, m_a: np.ndarray, m_b: np.ndarray,
              alphas=SWEEP_ALPHAS) -> dict:
    """For each α: shift each modality by v − α·m, recompute conformity within each sample,
    and measure the divergence of the two conformity histograms."""
    sweep_a, sweep_b = ShiftedConformity(A, m_a), ShiftedConformity(B, m_b)
    js, tv = [], []
    for alpha in alphas:
        j, t = divergences(sweep_a(alpha), sweep_b(alpha))
        js.append(j), tv.append(t)
    best = int(np.argmin(js))
    return {"alphas": [float(a) for a in alphas], "jensen_shannon_bits": js, "total_variation": tv,
            "best_alpha": float(alphas[best]), "bins": SWEEP_BINS}


class ShiftedConformity:
    """Exact conformity within X after the shift x' = x − α·m, without forming X − α·m.

    ‖x'‖² = ‖x‖² − 2α⟨x,m⟩ + α²‖m‖²; with w = 1/‖x'‖, U' = Σ w x' = Xᵀw − α·m·Σw and
    ⟨x̂', U'⟩ = w·(⟨x, U'⟩ − α⟨m, U'⟩): two matrix–vector products per α.
    """

    def __init__(self, X: np.ndarray, m: np.ndarray):
        self.X = np.asarray(X, np.float64)
        self.m = np.asarray(m, np.float64)
        self.sq = np.einsum("ij,ij->i", self.X, self.X)
        self.xm = self.X @ self.m
        self.mm = float(self.m @ self.m)

    def __call__(self, alpha: float) -> np.ndarray:
        norm2 = self.sq - 2 * alpha * self.xm + alpha * alpha * self.mm
        with np.errstate(divide="ignore"):
            w = np.where(norm2 > 0, 1.0 / np.sqrt(np.maximum(norm2, 0)), 0.0)
        U = self.X.T @ w - alpha * self.m * w.sum()
        dots = w * (self.X @ U - alpha * float(self.m @ U))
        return (dots - 1.0) / max(len(self.X) - 1, 1)


def _num(x):
    """A finite float, else None (JSON has no NaN)."""
    x = float(x)
    return x if np.isfinite(x) else None
