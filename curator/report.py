"""``report``: the double-ellipsoid diagnostics of a table as HTML, PNG plots and JSON.

What it computes (geometry.md, "Diagnostics"), and from what:

- **Whole table, streamed in one scan** (batches; memory bounded by the sample): rows
  per modality, the norm histogram (the thin shell), the histogram of stored
  ``conformity``, the Pearson correlation and least-squares line
  ``C ≈ slope·cos(x,m) + intercept`` between stored ``conformity`` and
  ``conformity_est``, cluster sizes (when ``curator cluster`` has run), and the most and
  least conforming rows.
- **From the statistics** (no scan): norm mean/std, the raw mean m and ‖m‖, the
  per-dimension std σ and the offset ratio ‖m‖/‖σ‖, the covariance eigen-spectrum and
  its effective rank, and the gap vector m_img − m_txt.
- **From a seeded sample** (per modality, ``sample`` rows chosen by the smallest
  seeded hash of the row's position: a reservoir, reproducible for a table version):
  the conformity-vs-estimator scatter, the 2-D view of the two shells, the held-out
  accuracy of a linear image-vs-text classifier (separability, [0, 1], 1 = the
  modalities are linearly separable) and the gap sweep (Jensen–Shannon divergence, in
  bits, [0, 1], of the image and text conformity histograms after shifting each
  modality by v − α·m; low = the distributions match).

The report reads the table and writes only into ``out``: the table is never changed.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import report_figures as figs
from .errors import BadInput, CuratorError
from .stats import ModalityStats, TableStats
from .stats import current as current_stats
from .store import SCAN_BATCH_ROWS, Database, TableMeta, vectors

NORM_BINS = 60
CONF_FINE_BINS = 1 << 14  # over [-1, 1]; coarsened to the occupied range for display
CONF_PLOT_BINS = 60
EXTREMES = 5
SWEEP_ALPHAS = np.round(np.linspace(-1.0, 1.0, 21), 10)
SWEEP_BINS = 50
TEST_FRACTION = 0.3
PLOT_POINTS = 3000  # per modality in scatter plots (the statistics use the whole sample)
PATH_COLUMNS = ("path", "image", "image_path")
THUMB_SIZE = (112, 112)
RANK_TOL = 1e-7  # eigenvalues below this share of the largest are zero to float32 precision (not plotted)


@dataclass
class ReportResult:
    """Where the report went and its key numbers (all from ``report.json``)."""

    out: str
    index_html: str
    report_json: str
    table: str
    table_version: int
    stats_version: int
    rows: dict[str, int]
    sample: dict[str, int]
    separability: float | None
    pearson: dict[str, float | None]
    gap_norm: float | None
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def summary(self) -> str:
        rows = ", ".join(f"{m} {n:,}" for m, n in self.rows.items())
        lines = [
            (f"report of table {self.table!r} at version {self.table_version} "
             f"(stats v{self.stats_version}; table unchanged): {rows} rows"),
            "sample per modality: " + ", ".join(f"{m} {n:,}" for m, n in self.sample.items()),
        ]
        keys = []
        if self.separability is not None:
            keys.append(f"linear separability {self.separability:.1%}")
        keys += [f"Pearson {m} {r:.5f}" for m, r in self.pearson.items() if r is not None]
        if self.gap_norm is not None:
            keys.append(f"gap norm {self.gap_norm:.4g}")
        if keys:
            lines.append("; ".join(keys))
        lines.append(f"open {self.index_html}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# One streaming scan: aggregates over the whole table plus the per-modality reservoir.

def _mix(positions: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (position, seed): a seeded pseudo-random key per row (uint64)."""
    with np.errstate(over="ignore"):
        z = positions.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 1) % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class _Reservoir:
    """The ``size`` rows with the smallest keys seen so far (keys, positions, vectors)."""

    def __init__(self, size: int):
        self.size = size
        self.keys = np.zeros(0, np.uint64)
        self.pos = np.zeros(0, np.int64)
        self.parts: list[np.ndarray] = []
        self.X = None

    def offer(self, keys: np.ndarray, pos: np.ndarray, X: np.ndarray) -> None:
        if len(self.keys) >= self.size:
            keep = keys < self.keys.max()
            keys, pos, X = keys[keep], pos[keep], X[keep]
        if not len(keys):
            return
        self.keys = np.concatenate([self.keys, keys])
        self.pos = np.concatenate([self.pos, pos])
        self.parts.append(np.array(X, np.float32))
        if len(self.keys) > 2 * self.size:
            self._prune()

    def _prune(self) -> None:
        X = np.concatenate(self.parts) if self.parts else np.zeros((0, 0), np.float32)
        if len(self.keys) > self.size:
            keep = np.argpartition(self.keys, self.size - 1)[: self.size]
            self.keys, self.pos, X = self.keys[keep], self.pos[keep], X[keep]
        order = np.argsort(self.pos, kind="stable")
        self.keys, self.pos, X = self.keys[order], self.pos[order], X[order]
        self.parts = [X]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        self._prune()
        return self.pos, self.parts[0]


class _Extremes:
    """Positions of the ``k`` highest and lowest values seen (NaN ignored)."""

    def __init__(self, k: int):
        self.k = k
        self.values = np.zeros(0)
        self.pos = np.zeros(0, np.int64)

    def offer(self, values: np.ndarray, pos: np.ndarray) -> None:
        ok = np.isfinite(values)
        values = np.concatenate([self.values, values[ok]])
        pos = np.concatenate([self.pos, pos[ok]])
        if len(values) > 2 * self.k:
            order = np.argsort(values, kind="stable")
            keep = np.concatenate([order[: self.k], order[-self.k:]])
            values, pos = values[keep], pos[keep]
        self.values, self.pos = values, pos

    def result(self) -> tuple[list[int], list[int]]:
        order = np.argsort(self.values, kind="stable")
        least = self.pos[order[: self.k]].tolist()
        most = self.pos[order[::-1][: self.k]].tolist()
        return most, least


class _ModalityScan:
    """Streaming aggregates of one modality."""

    def __init__(self, s: ModalityStats, sample: int):
        self.rows = 0
        std = max(s.norm_std, 1e-4 * abs(s.mean_norm), 1e-12)
        lo = max(0.0, s.mean_norm - 6 * std)
        self.norm_edges = np.linspace(lo, s.mean_norm + 6 * std, NORM_BINS + 1)
        self.norm_counts = np.zeros(NORM_BINS, np.int64)
        self.norm_under = self.norm_over = 0
        self.conf_counts = np.zeros(CONF_FINE_BINS, np.int64)
        self.shift = None
        self.sums = np.zeros(6)  # n, Σx, Σy, Σxx, Σyy, Σxy of (est, conformity) about shift
        self.clusters = np.zeros(0, np.int64)
        self.reservoir = _Reservoir(sample)
        self.extremes = _Extremes(EXTREMES)

    def add(self, rows: np.ndarray, pos: np.ndarray, keys: np.ndarray, X: np.ndarray,
            norm: np.ndarray, conf: np.ndarray, est: np.ndarray, cluster: np.ndarray | None) -> None:
        self.rows += len(pos)
        self._norms(norm)
        finite = np.isfinite(conf)
        bins = ((np.clip(conf[finite], -1, 1) + 1) / 2 * CONF_FINE_BINS).astype(np.int64)
        self.conf_counts += np.bincount(np.minimum(bins, CONF_FINE_BINS - 1), minlength=CONF_FINE_BINS)
        self._pearson_sums(est, conf)
        if cluster is not None:
            c = cluster[cluster >= 0]
            counts = np.bincount(c, minlength=len(self.clusters))
            counts[: len(self.clusters)] += self.clusters
            self.clusters = counts
        self.reservoir.offer(keys, pos, X[rows] if not rows.all() else X)
        self.extremes.offer(conf, pos)

    def _norms(self, norm: np.ndarray) -> None:
        lo, hi = self.norm_edges[0], self.norm_edges[-1]
        self.norm_under += int((norm < lo).sum())
        self.norm_over += int((norm > hi).sum())
        counts, _ = np.histogram(np.clip(norm, lo, hi), bins=self.norm_edges)
        self.norm_counts += counts

    def _pearson_sums(self, est: np.ndarray, conf: np.ndarray) -> None:
        ok = np.isfinite(est) & np.isfinite(conf)
        x, y = est[ok], conf[ok]
        if not len(x):
            return
        if self.shift is None:
            self.shift = (float(x.mean()), float(y.mean()))
        x, y = x - self.shift[0], y - self.shift[1]
        self.sums += [len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]


def _floats(batch: pa.RecordBatch, name: str) -> np.ndarray:
    col = batch.column(name)
    return pc.fill_null(col.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False)


def _scan(dataset, stats: TableStats, sample: int, seed: int) -> dict[str, _ModalityScan]:
    """One pass over the table: per-modality aggregates and reservoirs."""
    names = set(dataset.schema.names)
    has_cluster = "cluster" in names
    columns = ["modality", "embedding", "norm", "conformity", "conformity_est"]
    columns += ["cluster"] if has_cluster else []
    scans = {m: _ModalityScan(s, sample) for m, s in stats.nonempty().items()}
    offset = 0
    for batch in dataset.to_batches(columns=columns, batch_size=SCAN_BATCH_ROWS):
        n = batch.num_rows
        positions = np.arange(offset, offset + n, dtype=np.int64)
        offset += n
        keys = _mix(positions, seed)
        X = vectors(batch)
        norm, conf, est = (_floats(batch, c) for c in ("norm", "conformity", "conformity_est"))
        cluster = (pc.fill_null(batch.column("cluster"), -1).to_numpy(zero_copy_only=False).astype(np.int64)
                   if has_cluster else None)
        modality = batch.column("modality")
        for m, sc in scans.items():
            rows = pc.fill_null(pc.equal(modality, m), False).to_numpy(zero_copy_only=False)
            if not rows.any():
                continue
            sc.add(rows, positions[rows], keys[rows], X, norm[rows], conf[rows], est[rows],
                   None if cluster is None else cluster[rows])
    return scans


# ---------------------------------------------------------------------------------------
# Numbers of each figure (pure functions of arrays; tested against numpy oracles).

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


def gap_view(A: np.ndarray, B: np.ndarray, m_a: np.ndarray, m_b: np.ndarray):
    """Coordinates on (unit gap ĝ = (m_a − m_b)/‖·‖, top principal direction of the pooled
    sample with ĝ projected out). Returns (coords_a, coords_b, ĝ, p)."""
    g = (m_a - m_b) / np.linalg.norm(m_a - m_b)
    pooled = np.concatenate([A, B]).astype(np.float64)
    centre = pooled.mean(axis=0)
    P = pooled - centre
    P -= np.outer(P @ g, g)
    p = top_direction(P)
    p -= (p @ g) * g
    p /= np.linalg.norm(p)

    def coords(X):
        X = np.asarray(X, np.float64)
        return np.stack([X @ g, (X - centre) @ p], axis=1)

    return coords(A), coords(B), g, p


def top_direction(P: np.ndarray, block: int = 6, iterations: int = 20) -> np.ndarray:
    """Top right singular vector of P (n, d) by seeded subspace iteration (no d×d matrix)."""
    rng = np.random.default_rng(0)
    V = np.linalg.qr(rng.normal(size=(P.shape[1], min(block, P.shape[1]))))[0]
    for _ in range(iterations):
        V = np.linalg.qr(P.T @ (P @ V))[0]
    W = P @ V
    _, vecs = np.linalg.eigh(W.T @ W)
    return V @ vecs[:, -1]


def gap_sweep(A: np.ndarray, B: np.ndarray, m_a: np.ndarray, m_b: np.ndarray,
              alphas=SWEEP_ALPHAS) -> dict:
    """For each α: shift each modality by v − α·m, recompute conformity within each sample,
    and measure the divergence of the two conformity histograms."""
    sweep_a, sweep_b = _ShiftedConformity(A, m_a), _ShiftedConformity(B, m_b)
    js, tv = [], []
    for alpha in alphas:
        j, t = divergences(sweep_a(alpha), sweep_b(alpha))
        js.append(j), tv.append(t)
    best = int(np.argmin(js))
    return {"alphas": [float(a) for a in alphas], "jensen_shannon_bits": js, "total_variation": tv,
            "best_alpha": float(alphas[best]), "bins": SWEEP_BINS}


class _ShiftedConformity:
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


# ---------------------------------------------------------------------------------------
# The report.

def report(*, db=None, table: str = "embeddings", out, sample: int = 5000, seed: int = 0) -> ReportResult:
    """Write ``out/index.html``, ``out/report.json`` and PNGs of the table's geometry.

    ``sample`` (≥ 10) rows per modality feed the pairwise and plotted parts; everything
    else streams over the whole table. Nothing in the table changes.
    """
    started = time.time()
    if out is None or str(out) == "":
        raise BadInput("--out is required: the folder to write the report into")
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 10:
        raise BadInput("--sample must be an integer ≥ 10")
    out = os.path.abspath(os.path.expanduser(str(out)))
    if os.path.exists(out) and not os.path.isdir(out):
        raise BadInput(f"--out {out} exists and is not a folder")
    database = Database(db)
    dataset = database.dataset(table)
    meta = TableMeta.from_schema(dataset.schema)
    stats = current_stats(database, table, dataset)
    if not stats.nonempty():
        raise CuratorError(f"table {table!r} has no rows to report on")
    os.makedirs(out, exist_ok=True)
    timings = {"statistics": time.time() - started}
    scans = _scan(dataset, stats, sample, seed)
    timings["scan"] = time.time() - started - sum(timings.values())
    data = _compute(dataset, stats, meta, scans, database, table, sample, seed)
    timings["sample_measures"] = time.time() - started - sum(timings.values())
    data["seconds_compute"] = time.time() - started
    figures = _draw(out, data, scans, stats)
    data["figures"] = figures
    _thumbnails(out, data)
    timings["figures"] = time.time() - started - sum(timings.values())
    data["timings_seconds"] = timings
    json_path = os.path.join(out, "report.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1, default=_jsonable)
    html_path = os.path.join(out, "index.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(render_html(data))
    cross = data.get("cross") or {}
    return ReportResult(
        out=out, index_html=html_path, report_json=json_path, table=table,
        table_version=dataset.version, stats_version=stats.version,
        rows={m: v["rows"] for m, v in data["modalities"].items()},
        sample={m: v["sample_rows"] for m, v in data["modalities"].items()},
        separability=(cross.get("separability") or {}).get("test_accuracy"),
        pearson={m: v["conformity"]["pearson"] for m, v in data["modalities"].items()},
        gap_norm=cross.get("gap_norm"), figures=sorted(figures.values()),
        seconds=time.time() - started,
    )


def _compute(dataset, stats, meta, scans, database, table, sample, seed) -> dict:
    modalities, samples = {}, {}
    for m, s in stats.nonempty().items():
        _, X = scans[m].reservoir.finish()
        samples[m] = X
        modalities[m] = _modality_numbers(m, s, scans[m], X)
    data = {
        "title": f"Geometry of table “{table}”",
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "db": database.uri, "table": table, "table_version": dataset.version,
        "stats_version": stats.version, "model": meta.model, "dim": stats.dim,
        "sample": {"requested_per_modality": sample, "seed": seed,
                   "per_modality": {m: len(X) for m, X in samples.items()},
                   "method": "per modality, the rows with the smallest seeded hash of their "
                             "position in the table (a reservoir; reproducible per table version)"},
        "modalities": modalities,
    }
    pair = _pair(stats)
    data["cross"] = _cross(pair, stats, samples, seed) if pair else None
    data["extremes"] = _extremes(dataset, scans)
    data["_points"] = {m: v.pop("_points") for m, v in modalities.items()}
    return data


def _modality_numbers(m: str, s: ModalityStats, sc: _ModalityScan, X: np.ndarray) -> dict:
    cov = s.covariance
    eig = np.sort(np.linalg.eigvalsh((cov + cov.T) / 2))[::-1]
    sigma = np.sqrt(np.clip(np.diag(cov), 0, None))
    mean = s.mean
    fit = pearson_fit(sc.sums)
    if fit["slope"] is not None and sc.shift is not None and np.isfinite(fit["slope"] or np.nan):
        fit["intercept"] = fit.pop("intercept_shifted") + sc.shift[1] - fit["slope"] * sc.shift[0]
    else:
        fit.pop("intercept_shifted", None)
        fit["intercept"] = None
    conf_s = (X.astype(np.float64) / np.linalg.norm(X, axis=1, keepdims=True)) @ s.U
    conf_s = (conf_s - 1.0) / max(s.n - 1, 1)
    est_s = (X.astype(np.float64) @ mean) / (np.linalg.norm(X, axis=1) * np.linalg.norm(mean))
    r_sample = float(np.corrcoef(est_s, conf_s)[0, 1]) if len(X) > 2 else None
    lo, hi = _occupied(sc.conf_counts)
    return {
        "rows": s.n,
        "rows_scanned": sc.rows,
        "sample_rows": len(X),
        "norm": {
            "mean": s.mean_norm, "std": s.norm_std,
            "thickness": s.norm_std / s.mean_norm if s.mean_norm else None,
            "histogram": {"edges": sc.norm_edges.tolist(), "counts": sc.norm_counts.tolist(),
                          "below_range": sc.norm_under, "above_range": sc.norm_over},
        },
        "mean_vector_norm": float(np.linalg.norm(mean)),
        "sigma_norm": float(np.linalg.norm(sigma)),
        "offset_ratio": float(np.linalg.norm(mean) / np.linalg.norm(sigma)) if sigma.any() else None,
        "spectrum": {"eigenvalues": eig.tolist(), "effective_rank": effective_rank(eig),
                     "numerical_rank": int((eig > RANK_TOL * max(eig[0], 0)).sum()),
                     "top10_variance_share": float(eig[:10].sum() / eig.sum()) if eig.sum() > 0 else None},
        "conformity": {
            **fit,
            "pearson_sample": r_sample,
            "rows_unscored": sc.rows - fit["rows"],
            "histogram": _coarsen(sc.conf_counts, lo, hi),
        },
        "clusters": ({"sizes": sorted((int(c) for c in sc.clusters if c > 0), reverse=True)}
                     if sc.clusters.sum() > 0 else None),
        "_points": (est_s, conf_s),
    }


def _occupied(counts: np.ndarray) -> tuple[int, int]:
    nz = np.flatnonzero(counts)
    return (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, len(counts))


def _coarsen(counts: np.ndarray, lo: int, hi: int) -> dict:
    """The fine conformity histogram over its occupied bins, merged to ≤ CONF_PLOT_BINS bins."""
    group = max(1, int(np.ceil((hi - lo) / CONF_PLOT_BINS)))
    hi = lo + group * int(np.ceil((hi - lo) / group))
    padded = np.zeros(hi - lo, np.int64)
    part = counts[lo:min(hi, len(counts))]
    padded[: len(part)] = part
    width = 2.0 / len(counts)
    edges = -1.0 + width * np.arange(lo, hi + 1, group)
    return {"edges": edges.tolist(), "counts": padded.reshape(-1, group).sum(axis=1).tolist(),
            "resolution": width}


def _pair(stats) -> tuple[str, str] | None:
    names = list(stats.nonempty())
    if "image" in names and "text" in names:
        return "image", "text"
    return (names[0], names[1]) if len(names) >= 2 else None


def _cross(pair, stats, samples, seed) -> dict:
    a, b = pair
    m_a, m_b = stats.modalities[a].mean, stats.modalities[b].mean
    A, B = samples[a], samples[b]
    coords_a, coords_b, _, _ = gap_view(A, B, m_a, m_b)
    return {
        "modalities": [a, b],
        "gap_norm": float(np.linalg.norm(m_a - m_b)),
        "gap_cosine_of_means": float(m_a @ m_b / (np.linalg.norm(m_a) * np.linalg.norm(m_b))),
        "separability": linear_separability(A, B, seed),
        "gap_view": {
            "x_axis": "<x, g> with g = (m_a - m_b)/||m_a - m_b||",
            "y_axis": "top principal direction of the pooled sample with g projected out (centred)",
            "centres": {a: coords_a.mean(axis=0).tolist(), b: coords_b.mean(axis=0).tolist()},
            "spread": {a: coords_a.std(axis=0).tolist(), b: coords_b.std(axis=0).tolist()},
        },
        "gap_sweep": gap_sweep(A, B, m_a, m_b),
        "_coords": {a: coords_a, b: coords_b},
    }


def _extremes(dataset, scans) -> dict:
    """The most and least conforming rows per modality, with caption / path / id."""
    names = set(dataset.schema.names)
    extra = [c for c in ("caption", *PATH_COLUMNS) if c in names]
    columns = ["id", "sample_id", "modality", "conformity", *extra]
    out = {}
    for m, sc in scans.items():
        most, least = sc.extremes.result()
        positions = sorted(set(most + least))
        if not positions:
            out[m] = {"most": [], "least": []}
            continue
        rows = dataset.take(positions, columns=columns).to_pylist()
        by_pos = dict(zip(positions, rows))
        out[m] = {"most": [by_pos[p] for p in most], "least": [by_pos[p] for p in least]}
    if "caption" in names:
        _fill_image_captions(dataset, out)
    return out


def _fill_image_captions(dataset, extremes: dict) -> None:
    """Rows without a caption of their own (images) show one caption of their sample."""
    wanted = {r["sample_id"] for side in extremes.values() for rows in side.values() for r in rows
              if not r.get("caption") and r.get("sample_id")}
    if not wanted:
        return
    quoted = ", ".join("'" + s.replace("'", "''") + "'" for s in sorted(wanted))
    found = {}
    for batch in dataset.to_batches(columns=["sample_id", "caption"],
                                    filter=f"sample_id IN ({quoted}) AND caption IS NOT NULL"):
        for sid, cap in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            if cap and sid not in found:
                found[sid] = cap
    for side in extremes.values():
        for rows in side.values():
            for r in rows:
                if not r.get("caption") and r.get("sample_id") in found:
                    r["caption"] = found[r["sample_id"]]
                    r["caption_from_sample"] = True


def _thumbnails(out: str, data: dict) -> None:
    """Copy a small PNG thumbnail for rows whose path/image/image_path names a readable file."""
    try:
        from PIL import Image
    except ImportError:
        return
    folder = os.path.join(out, "thumbs")
    shutil.rmtree(folder, ignore_errors=True)
    k = 0
    for side in data["extremes"].values():
        for rows in side.values():
            for r in rows:
                path = next((r[c] for c in PATH_COLUMNS if isinstance(r.get(c), str) and r[c]), None)
                if not path or not os.path.isfile(path):
                    continue
                try:
                    with Image.open(path) as im:
                        im = im.convert("RGB")
                        im.thumbnail(THUMB_SIZE)
                        os.makedirs(folder, exist_ok=True)
                        name = f"thumbs/t{k:03d}.png"
                        im.save(os.path.join(out, name))
                        r["thumbnail"] = name
                        k += 1
                except (OSError, ValueError, Image.DecompressionBombError):
                    continue  # unreadable image: no thumbnail, silently


def _draw(out: str, data: dict, scans, stats) -> dict[str, str]:
    """Write the PNGs; returns {figure: file name relative to out}."""
    mods = data["modalities"]
    files = {}

    def save(name, fn, *args):
        fn(os.path.join(out, name), *args)
        files[name.rsplit(".", 1)[0]] = name

    save("norms.png", figs.histograms, {m: {**v["norm"]["histogram"],
         "note": f"mean {v['norm']['mean']:.4g}\nstd/mean {v['norm']['thickness']:.2g}"}
         for m, v in mods.items()}, "‖x‖ (raw norm)", "note")
    save("spectrum.png", figs.spectrum, {m: v["spectrum"] for m, v in mods.items()})
    save("conformity.png", figs.histograms, {m: v["conformity"]["histogram"] for m, v in mods.items()},
         "conformity")
    points = {m: _thin(p, PLOT_POINTS) for m, p in data["_points"].items()}
    save("conformity_vs_estimator.png", figs.conformity_scatter, points,
         {m: v["conformity"] for m, v in mods.items()})
    for m, (est, conf) in points.items():
        mods[m]["conformity"]["scatter_points"] = {"cos_to_mean": _rounded(est), "conformity": _rounded(conf)}
    clusters = {m: v["clusters"]["sizes"] for m, v in mods.items() if v["clusters"]}
    if clusters:
        save("clusters.png", figs.zipf, clusters)
    cross = data.get("cross")
    if cross:
        coords = {m: _thin((c,), PLOT_POINTS)[0] for m, c in cross.pop("_coords").items()}
        save("gap_view.png", figs.gap_view, coords, cross["gap_view"]["centres"])
        cross["gap_view"]["points"] = {m: {"gap": _rounded(c[:, 0]), "principal": _rounded(c[:, 1])}
                                       for m, c in coords.items()}
        sw = cross["gap_sweep"]
        save("gap_sweep.png", figs.gap_sweep, sw["alphas"], sw["jensen_shannon_bits"], sw["total_variation"])
    data.pop("_points", None)
    return files


def _rounded(values: np.ndarray) -> list[float]:
    """Plotted points for report.json, to 6 significant digits (keeps the file small)."""
    return [float(f"{v:.6g}") for v in np.asarray(values, np.float64)]


def _thin(arrays: tuple, k: int) -> tuple:
    n = len(arrays[0])
    if n <= k:
        return arrays
    idx = np.linspace(0, n - 1, k).astype(int)
    return tuple(a[idx] for a in arrays)


def _num(x):
    x = float(x)
    return x if np.isfinite(x) else None


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ---------------------------------------------------------------------------------------
# HTML: one self-contained page (no scripts, no fonts, no network); PNGs beside it.

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"DejaVu Sans",sans-serif;
 margin:0;background:#f6f7f9;color:#1d2330;line-height:1.45;font-size:15px}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
.meta{color:#5a6472;font-size:13.5px}.meta code{background:#eceff3;padding:1px 5px;border-radius:3px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;margin:18px 0 6px}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 14px}
.card .k{font-size:13px;color:#5a6472;font-weight:600}
.card .v{font-size:23px;font-weight:600;margin-top:2px}.card .s{font-size:12.5px;color:#5a6472}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
figure{background:#fff;border:1px solid #dde1e7;border-radius:8px;margin:0;padding:12px 14px}
figure h3{font-size:15.5px;margin:0 0 6px}figure img{width:100%;height:auto;display:block}
figcaption{font-size:13.5px;color:#39414d;margin-top:6px}figcaption b{color:#1d2330}
table{border-collapse:collapse;background:#fff;font-size:13.5px;width:100%}
table.measures td:first-child{width:46%}.pairs{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
.pairs td.num{width:90px}.pairs table.narrow{width:auto;min-width:320px}.pairs td.id{width:150px;word-break:break-all}
th,td{border:1px solid #dde1e7;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff8e1;border:1px solid #f0dc9a;border-radius:6px;padding:8px 12px;font-size:13.5px}
.muted{color:#5a6472}.thumb{max-width:72px;max-height:72px;display:block}
footer{margin-top:36px;color:#5a6472;font-size:12.5px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, spec=".4g") -> str:
    return "–" if x is None else format(x, spec)


def render_html(data: dict) -> str:
    """The report page from ``report.json``'s data (self-contained; relative image links)."""
    mods = data["modalities"]
    cross = data.get("cross")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(data['title'])} — curator report</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(data['title'])}</h1>",
        ("<div class='meta'>The double-ellipsoid geometry of raw CLIP embeddings "
         "(Levi &amp; Gilboa, ICML 2025): each modality lives on its own thin, off-centre, "
         "elongated shell, and the two shells are separated by the modality gap.</div>"),
        (f"<div class='meta' style='margin-top:6px'>table <code>{_e(data['table'])}</code> · version "
         f"<code>{data['table_version']}</code> · statistics v<code>{data['stats_version']}</code> · model "
         f"<code>{_e(data['model'])}</code> · dimension <code>{data['dim']}</code> · database "
         f"<code>{_e(data['db'])}</code> · generated {_e(data['generated'])}</div>"),
        _cards(data),
        _sample_line(data),
    ]
    if cross:
        parts += [f"<h2>Across modalities: {_e(cross['modalities'][0])} vs {_e(cross['modalities'][1])}</h2>",
                  "<div class='grid'>", _figure(data, "gap_view", "Two shells and the gap", _GAP_VIEW_HELP),
                  _figure(data, "gap_sweep", "Gap sweep", _SWEEP_HELP.format(
                      best=cross["gap_sweep"]["best_alpha"])), "</div>"]
    else:
        parts.append("<h2>Across modalities</h2><p class='note'>Only one modality in this table: "
                     "the gap, separability and gap sweep need two.</p>")
    parts += ["<h2>Per modality</h2>", _modality_table(mods), "<div class='grid' style='margin-top:16px'>",
              _figure(data, "norms", "Norms: the thin shell", _NORM_HELP),
              _figure(data, "spectrum", "Covariance eigen-spectrum: the ellipsoid's axes", _SPECTRUM_HELP),
              _figure(data, "conformity", "Conformity", _CONF_HELP),
              _figure(data, "conformity_vs_estimator", "Conformity vs its estimator cos(x, m)", _SCATTER_HELP),
              ]
    if "clusters" in data["figures"]:
        parts.append(_figure(data, "clusters", "Concept frequency (clusters)", _ZIPF_HELP))
    else:
        parts.append("<figure><h3>Concept frequency (clusters)</h3><p class='note'>No clusters yet: "
                     "run <code>curator cluster</code>, then the report again, to see the rank–size "
                     "(Zipf) plot of concept frequencies.</p></figure>")
    parts += ["</div>", _extremes_html(data), _footer(data), "</main></body></html>"]
    return "\n".join(parts)


_GAP_VIEW_HELP = ("<b>How to read this:</b> every dot is a sampled row. Left–right is the position along "
                  "the gap direction (difference of the two modality means); up–down is the main direction "
                  "of variation once the gap is removed. Two separate clouds = two shells with a gap between.")
_SWEEP_HELP = ("<b>How to read this:</b> each modality is shifted by v − α·m (its own mean), conformity is "
               "recomputed, and the curve shows how different the two conformity distributions are (0 = "
               "identical). The paper finds the minimum near α = 0, the gap CLIP learned; here: α = {best:+.1f}.")
_NORM_HELP = ("<b>How to read this:</b> a narrow peak far from zero means the vectors lie on a thin shell "
              "(std/mean is the shell's relative thickness). Vectors that were L2-normalised show a single spike at 1.")
_SPECTRUM_HELP = ("<b>How to read this:</b> variance along each principal axis of the modality's cloud, "
                  "largest first (left, log scale), and the share of variance the first k axes hold (right). "
                  "A steep fall-off means an elongated ellipsoid; effective rank counts the axes that matter.")
_CONF_HELP = ("<b>How to read this:</b> conformity is a row's mean cosine to the other rows of its modality. "
              "High = generic, frequent content near the mean; the low tail = rare or unusual rows.")
_SCATTER_HELP = ("<b>How to read this:</b> each dot is a sampled row: exact conformity against the cosine to "
                 "the modality mean. Points on a line (Pearson r ≈ 1) mean the cheap estimator ranks rows "
                 "like the exact score. r and the line are fitted on the whole table.")
_ZIPF_HELP = ("<b>How to read this:</b> cluster sizes sorted from largest to smallest on log–log axes; a "
              "straight falling line is a Zipf-like concept frequency (a few concepts dominate). Rebalancing caps the head.")


def _cards(data: dict) -> str:
    mods = data["modalities"]
    cross = data.get("cross") or {}
    cards = [("rows", f"{sum(v['rows'] for v in mods.values()):,}",
              " · ".join(f"{v['rows']:,} {_e(m)}" for m, v in mods.items()))]
    sep = (cross.get("separability") or {})
    if sep:
        cards.append(("linear separability", f"{sep['test_accuracy']:.1%}",
                      f"held-out accuracy, {sep['n_test']:,} test rows (paper: 100%)"))
    for m, v in mods.items():
        unit = (v["norm"]["thickness"] or 0) < 1e-3
        cards.append((f"Pearson r, {_e(m)}", _fmt(v["conformity"]["pearson"], ".5f"),
                      "conformity vs cos(x, mean); exact by construction: the vectors are unit-norm"
                      if unit else "conformity vs cos(x, mean), whole table (paper: ≈ 0.9998)"))
    if cross:
        cards.append(("gap norm ‖m_img − m_txt‖", _fmt(cross["gap_norm"]),
                      f"cosine between the means {cross['gap_cosine_of_means']:.3f}"))
        sw = cross["gap_sweep"]
        js = dict(zip(sw["alphas"], sw["jensen_shannon_bits"]))
        cards.append(("gap sweep minimum", f"α = {sw['best_alpha']:+.1f}",
                      (f"JS {js[sw['best_alpha']]:.3f} bits there, {js.get(0.0, float('nan')):.3f} at α = 0 "
                       "(paper: minimum near 0)")))
    out = ["<div class='cards'>"]
    for k, v, s in cards:
        out.append(f"<div class='card'><div class='k'>{k}</div><div class='v'>{v}</div><div class='s'>{s}</div></div>")
    out.append("</div>")
    return "".join(out)


def _sample_line(data: dict) -> str:
    s = data["sample"]
    per = ", ".join(f"{n:,} {_e(m)}" for m, n in s["per_modality"].items())
    return (f"<p class='muted'>Histograms, means, counts, the covariance and Pearson r cover the whole table. "
            f"Scatter plots, the 2-D view, the classifier and the gap sweep use a seeded sample of "
            f"{per} rows (at most {s['requested_per_modality']:,} per modality, seed {s['seed']}).</p>")


def _figure(data: dict, name: str, title: str, help_text: str) -> str:
    file = data["figures"].get(name)
    if not file:
        return ""
    return (f"<figure><h3>{_e(title)}</h3><img src='{_e(file)}' alt='{_e(title)}'>"
            f"<figcaption>{help_text}</figcaption></figure>")


def _line(slope, intercept) -> str:
    if slope is None or intercept is None:
        return "–"
    return f"{slope:.4g}·cos {'−' if intercept < 0 else '+'} {abs(intercept):.4g}"


def _modality_table(mods: dict) -> str:
    rows = [
        ("rows", lambda v: f"{v['rows']:,}"),
        ("mean norm ‖x‖", lambda v: _fmt(v["norm"]["mean"])),
        ("norm std (shell thickness std/mean)",
         lambda v: f"{_fmt(v['norm']['std'])} ({_fmt(v['norm']['thickness'], '.2g')})"),
        ("norm of the mean ‖m‖", lambda v: _fmt(v["mean_vector_norm"])),
        ("offset ratio ‖m‖/‖σ‖", lambda v: _fmt(v["offset_ratio"])),
        ("effective rank of the covariance", lambda v: _fmt(v["spectrum"]["effective_rank"], ".1f")),
        ("variance in the top 10 axes", lambda v: _fmt(v["spectrum"]["top10_variance_share"], ".1%")),
        ("Pearson r, conformity vs cos(x, m)", lambda v: _fmt(v["conformity"]["pearson"], ".5f")),
        ("least-squares line C ≈ slope·cos + intercept",
         lambda v: _line(v["conformity"]["slope"], v["conformity"]["intercept"])),
        ("rows without scores (run curator refresh)", lambda v: f"{v['conformity']['rows_unscored']:,}"),
    ]
    head = "".join(f"<th>{_e(m)}</th>" for m in mods)
    body = "".join(f"<tr><td>{_e(label)}</td>" + "".join(f"<td class='num'>{_e(fn(v))}</td>" for v in mods.values())
                   + "</tr>" for label, fn in rows)
    return f"<table class='measures'><tr><th>measure</th>{head}</tr>{body}</table>"


def _extremes_html(data: dict) -> str:
    out = ["<h2>Most and least conforming rows</h2>",
           ("<p class='muted'>Over the whole table. The most conforming rows are the most generic of their "
            "modality; the least conforming are the rarest or most unusual (worth a look: outliers, errors, "
            "or the long tail). Image rows show a caption of their sample.</p>")]
    every = [r for side in data["extremes"].values() for rows in side.values() for r in rows]
    thumbs = any(r.get("thumbnail") for r in every)
    captions = any(r.get("caption") for r in every)
    if not captions:
        out[-1] = out[-1].replace(" Image rows show a caption of their sample.", " The table has no "
                                  "<code>caption</code> column, so rows are shown by id.")
    for m, side in data["extremes"].items():
        out.append("<div class='pairs' style='margin-bottom:14px'>")
        for which, label in (("most", "most conforming"), ("least", "least conforming")):
            out.append(f"<div><h3 style='font-size:15px;margin:10px 0 6px'>{_e(m)}: {label}</h3>")
            out.append(_rows_table(side[which], thumbs and any(r.get("thumbnail") for r in side[which]),
                                   captions))
            out.append("</div>")
        out.append("</div>")
    return "".join(out)


def _rows_table(rows: list[dict], thumbs: bool, captions: bool) -> str:
    if not rows:
        return "<p class='muted'>no scored rows</p>"
    out = [f"<table{'' if captions else ' class=narrow'}><tr>" + ("<th>image</th>" if thumbs else "")
           + "<th>conformity</th><th>id</th>" + ("<th>caption</th>" if captions else "") + "</tr>"]
    for r in rows:
        thumb = ""
        if thumbs:
            thumb = (f"<td><img class='thumb' src='{_e(r['thumbnail'])}' alt=''></td>" if r.get("thumbnail")
                     else "<td></td>")
        cap = r.get("caption") or ""
        out.append(f"<tr>{thumb}<td class='num'>{_fmt(r.get('conformity'), '.4f')}</td>"
                   f"<td class='id'>{_e(r['id'])}</td>"
                   + (f"<td>{_e(cap) if cap else '<span class=muted>–</span>'}</td>" if captions else "")
                   + "</tr>")
    out.append("</table>")
    return "".join(out)


def _footer(data: dict) -> str:
    return (f"<footer>Made by <code>curator report</code>. All numbers are in <code>report.json</code> "
            f"beside this page. Computed in {data.get('seconds_compute', 0):.1f} s. The report reads the table "
            f"(version {data['table_version']}) and never changes it.</footer>")
