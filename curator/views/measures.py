"""The report's numbers: one streaming scan of the table (aggregates, a seeded
per-modality reservoir sample, extremes) and the measures computed from it."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..geometry import diagnostics as dg
from ..geometry import projection
from ..geometry.sums import ModalityStats, TableStats
from ..store.arrow import vectors
from ..store.columns import SCAN_BATCH_ROWS

NORM_BINS = 60
CONF_FINE_BINS = 1 << 14  # over [-1, 1]; coarsened to the occupied range for display
CONF_PLOT_BINS = 60
EXTREMES = 5
PLOT_POINTS = 3000  # per modality in scatter plots (the statistics use the whole sample)
PATH_COLUMNS = ("path", "image", "image_path")
RANK_TOL = 1e-7  # eigenvalues below this share of the largest are zero to float32 precision (not plotted)


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


def scan(dataset, stats: TableStats, sample: int, seed: int) -> dict[str, _ModalityScan]:
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


def compute(dataset, stats, meta, scans, database, table, sample, seed) -> dict:
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
    fit = dg.pearson_fit(sc.sums)
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
        "spectrum": {"eigenvalues": eig.tolist(), "effective_rank": dg.effective_rank(eig),
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
    view = projection.gap_view_of(stats.modalities[a], stats.modalities[b])  # = curator project
    coords_a, coords_b = view.coordinates(A), view.coordinates(B)
    return {
        "modalities": [a, b],
        "gap_norm": float(np.linalg.norm(m_a - m_b)),
        "gap_cosine_of_means": float(m_a @ m_b / (np.linalg.norm(m_a) * np.linalg.norm(m_b))),
        "separability": dg.linear_separability(A, B, seed),
        "gap_view": {
            "x_axis": "<x, g> with g = (m_a - m_b)/||m_a - m_b||",
            "y_axis": "top principal direction of the pooled table with g projected out (centred)",
            "centres": {a: coords_a.mean(axis=0).tolist(), b: coords_b.mean(axis=0).tolist()},
            "spread": {a: coords_a.std(axis=0).tolist(), b: coords_b.std(axis=0).tolist()},
        },
        "gap_sweep": dg.gap_sweep(A, B, m_a, m_b),
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


def rounded(values: np.ndarray) -> list[float]:
    """Plotted points for report.json, to 6 significant digits (keeps the file small)."""
    return [float(f"{v:.6g}") for v in np.asarray(values, np.float64)]


def thin(arrays: tuple, k: int) -> tuple:
    n = len(arrays[0])
    if n <= k:
        return arrays
    idx = np.linspace(0, n - 1, k).astype(int)
    return tuple(a[idx] for a in arrays)


def _num(x):
    x = float(x)
    return x if np.isfinite(x) else None


def jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)

