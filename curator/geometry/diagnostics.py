"""Diagnostics of the double-ellipsoid geometry on in-memory samples: the covariance
spectrum's effective rank, the conformity–estimator fit, divergences between conformity
distributions, linear separability of the modalities and the gap sweep. Pure numpy; the
report (:mod:`curator.views.report`) feeds it samples. The 2-D view of the two shells is
:func:`curator.geometry.projection.gap_view`, shared with ``curator project``."""

from __future__ import annotations

import numpy as np

SWEEP_STEP = 0.1  # the grid's step; it starts at [−1, 1] and grows while the minimum is at an end
SWEEP_FINE = 0.01  # refinement step around the grid's minimum
SWEEP_LIMIT = 5.0  # the grid never goes beyond |α| = 5
SWEEP_RESAMPLES = 20
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
              alphas=None, *, seed: int = 0, resamples: int = SWEEP_RESAMPLES) -> dict:
    """The gap sweep (protocol in docs/gap-sweep.md): shift each modality by v − α·m (its
    own raw mean; α = 0 is the embedding as trained, α = 1 centres both), recompute
    conformity within each sample, and measure the Jensen–Shannon divergence (bits,
    [0, 1], 0 = identical histograms) of the two conformity histograms.

    1. Grid: α from −1 to 1 in steps of 0.1; while the smallest divergence sits at an
       end of the grid, the grid grows by 1 on that side (up to |α| ≤ 5).
    2. Refinement: steps of 0.01 within ±0.1 of the grid's minimum: ``best_alpha``.
    3. Uncertainty: ``resamples`` seeded bootstrap resamples of both samples, each swept
       on the refined grid: the 5–95% interval of their minima (``interval``).
    4. Noise floor: the 95th percentile of the divergence between two random splits of
       the pooled conformities at ``best_alpha`` (the same sizes): two samples of one
       distribution differ by this much. The basin is the contiguous α range around the
       minimum where the divergence is within that floor of the minimum; ``width`` its
       length.
    """
    sweep_a, sweep_b = ShiftedConformity(A, m_a), ShiftedConformity(B, m_b)
    cache: dict[float, tuple[float, float]] = {}

    def at(alpha: float) -> tuple[float, float]:
        alpha = round(float(alpha), 6)
        if alpha not in cache:
            fill([alpha])
        return cache[alpha]

    def fill(alphas) -> None:
        todo = [a for a in dict.fromkeys(round(float(x), 6) for x in alphas) if a not in cache]
        if todo:
            ca, cb = sweep_a.many(todo), sweep_b.many(todo)
            for k, a in enumerate(todo):
                cache[a] = divergences(ca[:, k], cb[:, k])

    fixed = alphas is not None
    grid = [round(float(a), 6) for a in alphas] if fixed else _grid(-1.0, 1.0)
    extended = []
    while True:
        fill(grid)
        js = [at(a)[0] for a in grid]
        k = int(np.argmin(js))
        if not fixed and k == 0 and grid[0] > -SWEEP_LIMIT:  # the minimum at an end: grow
            grid, _ = _grid(grid[0] - 1.0, grid[-1]), extended.append("below")
            continue
        if not fixed and k == len(grid) - 1 and grid[-1] < SWEEP_LIMIT:
            grid, _ = _grid(grid[0], grid[-1] + 1.0), extended.append("above")
            continue
        fine = _grid(grid[k] - SWEEP_STEP, grid[k] + SWEEP_STEP, SWEEP_FINE)
        fill(fine)
        fine_js = [at(a)[0] for a in fine]
        best_alpha = fine[int(np.argmin(fine_js))]
        js_min = float(min(fine_js))
        floor = _null_divergence(sweep_a(best_alpha), sweep_b(best_alpha), seed)
        evaluated = np.array(sorted(cache))
        basin = _basin(evaluated, np.array([cache[a][0] for a in evaluated]), best_alpha, js_min + floor)
        if not fixed and basin[0] <= grid[0] and grid[0] > -SWEEP_LIMIT:  # the basin too
            grid, _ = _grid(grid[0] - 1.0, grid[-1]), extended.append("below (basin)")
            continue
        if not fixed and basin[1] >= grid[-1] and grid[-1] < SWEEP_LIMIT:
            grid, _ = _grid(grid[0], grid[-1] + 1.0), extended.append("above (basin)")
            continue
        break
    tv = [at(a)[1] for a in grid]
    near = [a for a in grid if abs(a - best_alpha) <= 1.0]
    interval = _bootstrap_minimum(A, B, m_a, m_b, fine + near, seed, resamples)
    return {"alphas": [float(a) for a in grid], "jensen_shannon_bits": js, "total_variation": tv,
            "bins": SWEEP_BINS, "grid_best_alpha": float(grid[k]), "extended": extended,
            "refined": {"alphas": [float(a) for a in fine], "jensen_shannon_bits": fine_js},
            "best_alpha": float(best_alpha), "js_min": js_min,
            "js_at_zero": float(at(0.0)[0]), "noise_floor_bits": floor,
            "basin": [float(basin[0]), float(basin[1])], "width": round(float(basin[1] - basin[0]), 6),
            "basin_at_limit": bool(basin[0] <= -SWEEP_LIMIT or basin[1] >= SWEEP_LIMIT),
            "interval": [round(float(interval[0]), 6), round(float(interval[1]), 6)],
            "resamples": resamples,
            "zero_in_basin": bool(basin[0] <= 0.0 <= basin[1]),
            "zero_in_interval": bool(interval[0] <= 0.0 <= interval[1]),
            "rows": [len(A), len(B)]}


def _grid(lo: float, hi: float, step: float = SWEEP_STEP) -> list[float]:
    return [float(a) for a in np.round(np.arange(lo, hi + step / 2, step), 6)]


def _null_divergence(a: np.ndarray, b: np.ndarray, seed: int, draws: int = 40) -> float:
    """95th percentile of the JS divergence between random splits (sizes len(a), len(b))
    of the pooled values: what two samples of one distribution differ by."""
    pooled = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
    rng = np.random.default_rng(seed + 7919)
    out = []
    for _ in range(draws):
        perm = rng.permutation(len(pooled))
        out.append(divergences(pooled[perm[:len(a)]], pooled[perm[len(a):]])[0])
    return float(np.quantile(out, 0.95))


def _basin(alphas: np.ndarray, js: np.ndarray, best: float, level: float) -> tuple[float, float]:
    """The contiguous α interval around ``best`` where js ≤ level (on the evaluated α)."""
    order = np.argsort(alphas)
    alphas, js = alphas[order], js[order]
    k = int(np.argmin(np.abs(alphas - best)))
    lo = hi = k
    while lo > 0 and js[lo - 1] <= level:
        lo -= 1
    while hi < len(js) - 1 and js[hi + 1] <= level:
        hi += 1
    return alphas[lo], alphas[hi]


def _bootstrap_minimum(A, B, m_a, m_b, alphas, seed: int, resamples: int) -> tuple[float, float]:
    """5–95% interval of the α of the smallest divergence over bootstrap resamples."""
    if resamples < 2:
        return float("nan"), float("nan")
    alphas = sorted(set(round(float(a), 6) for a in alphas))
    rng = np.random.default_rng(seed + 104729)
    minima = []
    for _ in range(resamples):
        ca = ShiftedConformity(A[rng.integers(0, len(A), len(A))], m_a).many(alphas)
        cb = ShiftedConformity(B[rng.integers(0, len(B), len(B))], m_b).many(alphas)
        js = [divergences(ca[:, k], cb[:, k])[0] for k in range(len(alphas))]
        minima.append(alphas[int(np.argmin(js))])
    return tuple(np.quantile(minima, [0.05, 0.95]))


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

    def many(self, alphas) -> np.ndarray:
        """Conformity after each shift, (n, len(alphas)): the same formula as one pair of
        matrix products for every α at once."""
        a = np.asarray(alphas, np.float64)[None, :]
        norm2 = self.sq[:, None] - 2 * a * self.xm[:, None] + a * a * self.mm
        with np.errstate(divide="ignore"):
            w = np.where(norm2 > 0, 1.0 / np.sqrt(np.maximum(norm2, 0)), 0.0)
        U = self.X.T @ w - np.outer(self.m, a[0] * w.sum(axis=0))
        dots = w * (self.X @ U - a * (self.m @ U)[None, :])
        return (dots - 1.0) / max(len(self.X) - 1, 1)

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


def ks_statistic(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov statistic sup_x |F_a(x) − F_b(x)| ([0, 1], 0 = the
    same empirical distribution; exact, from the sorted samples) and its asymptotic
    p-value (Kolmogorov's distribution at √(n_a·n_b/(n_a+n_b))·D; small = different)."""
    a = np.sort(np.asarray(a, np.float64)[np.isfinite(a)])
    b = np.sort(np.asarray(b, np.float64)[np.isfinite(b)])
    if not len(a) or not len(b):
        return float("nan"), float("nan")
    x = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, x, "right") / len(a)
                            - np.searchsorted(b, x, "right") / len(b))))
    en = np.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (en + 0.12 + 0.11 / en) * d  # Stephens' small-sample correction
    if lam < 1e-3:
        return d, 1.0
    j = np.arange(1, 101)
    p = float(2 * np.sum((-1.0) ** (j - 1) * np.exp(-2 * j * j * lam * lam)))
    return d, float(min(1.0, max(0.0, p)))
