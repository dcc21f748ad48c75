"""The report's "concepts and false negatives" section: the paper's claim that frequent
concepts yield more false negatives, measured on the table at hand.

Per modality and concept cluster (``curator cluster``): its size (rows), the mean
``conformity`` of its rows and their mean ``fn_count`` / ``fn_rate`` (``curator
negatives``), and across clusters the Pearson and Spearman correlations of size and of
mean conformity with mean ``fn_count`` (positive = bigger / more generic concepts
collect more false negatives, as the paper says). Also the row-level Spearman
correlation of conformity with ``fn_count``. Reads only scalar columns; rows with a null
``fn_count`` (no partner, or outside the last ``negatives --where``) are left out.
Without clusters or without ``fn_count`` the section says which command to run.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

MIN_CLUSTERS = 3  # fewer clusters with counts: no correlation is reported


def concept_negatives(dataset) -> dict:
    """The section's numbers (``available`` False with a ``note`` when it cannot run)."""
    names = set(dataset.schema.names)
    commands = {"cluster": "curator cluster --k K", "fn_count": "curator negatives"}
    missing = [cmd for c, cmd in commands.items()
               if c not in names or not dataset.count_rows(filter=f"{c} IS NOT NULL")]
    if missing:
        return {"available": False, "note": f"run {' and '.join(missing)}, then the report again"}
    columns = ["modality", "cluster", "conformity", "fn_count"] + (["fn_rate"] if "fn_rate" in names else [])
    table = dataset.to_table(columns=columns, filter="cluster IS NOT NULL AND fn_count IS NOT NULL")
    if not table.num_rows:
        return {"available": False, "note": "no row has both a cluster and an fn_count: run "
                "curator cluster and curator negatives on the same rows"}
    out = {"available": True, "modalities": {}}
    modality = table.column("modality").combine_chunks()
    for m in sorted(set(modality.to_pylist())):
        rows = table.filter(pc.equal(modality, m))
        out["modalities"][m] = _modality(
            rows.column("cluster").to_numpy().astype(np.int64),
            pc.fill_null(rows.column("conformity"), float("nan")).to_numpy().astype(np.float64),
            rows.column("fn_count").to_numpy().astype(np.float64),
            (pc.fill_null(rows.column("fn_rate"), float("nan")).to_numpy().astype(np.float64)
             if "fn_rate" in columns else None))
    return out


def _modality(cluster: np.ndarray, conformity: np.ndarray, fn: np.ndarray, rate) -> dict:
    ids, inverse, size = np.unique(cluster, return_inverse=True, return_counts=True)
    ok = np.isfinite(conformity)
    conf_sum = np.bincount(inverse, np.where(ok, conformity, 0.0), len(ids))
    conf_n = np.bincount(inverse, ok.astype(float), len(ids))
    mean_conf = np.where(conf_n > 0, conf_sum / np.maximum(conf_n, 1), np.nan)
    mean_fn = np.bincount(inverse, fn, len(ids)) / size
    mean_rate = np.bincount(inverse, rate, len(ids)) / size if rate is not None else None
    clusters = [{"cluster": int(c), "rows": int(n), "mean_conformity": _num(mc), "mean_fn_count": float(f),
                 "mean_fn_rate": None if mean_rate is None else _num(mean_rate[k])}
                for k, (c, n, mc, f) in enumerate(zip(ids, size, mean_conf, mean_fn))]
    out = {"rows": int(len(fn)), "clusters": clusters}
    enough = len(ids) >= MIN_CLUSTERS
    out["pearson_size_fn"] = _num(pearson(size, mean_fn)) if enough else None
    out["spearman_size_fn"] = _num(spearman(size, mean_fn)) if enough else None
    out["pearson_conformity_fn"] = _num(pearson(mean_conf, mean_fn)) if enough else None
    out["spearman_conformity_fn"] = _num(spearman(mean_conf, mean_fn)) if enough else None
    out["row_spearman_conformity_fn"] = _num(spearman(conformity[ok], fn[ok])) if ok.sum() > 2 else None
    return out


def pearson(x, y) -> float:
    """Pearson r of finite pairs ([−1, 1]; NaN when either side is constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman ρ: Pearson r of the ranks (ties get their mean rank)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    return pearson(_ranks(x[ok]), _ranks(y[ok]))


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, ranks)
    return sums[inverse] / counts[inverse]


def _num(x):
    x = float(x)
    return x if np.isfinite(x) else None
