"""``stats``: per-modality statistics of a table and how stale its stored scores can be."""

from __future__ import annotations

import numpy as np

from ..engine.statistics import current, staleness, version_counts
from ..store.database import Database, TableMeta
from ..store.statistics import StatsStore


class StatsResult(dict):
    """What ``stats`` reports: ``{"table", "table_version", "stats_version", "model", "dim",
    "rows", "modalities": {modality: {…}}}`` (a dict), with a human summary."""

    COLUMNS = ("n", "mean_norm", "norm_std", "norm_of_mean", "max_staleness", "stale_rows",
               "uncertainty_resolution", "loglik_floored_eigenvalues")

    def to_dict(self) -> dict:
        return dict(self)

    def summary(self) -> str:
        lines = [f"table {self['table']} (version {self['table_version']}), model {self['model']}, "
                 f"dim {self['dim']}, stats version {self['stats_version']}, {self['rows']} rows"]
        rows = [[m] + [_cell(values[k]) for k in self.COLUMNS]
                for m, values in self["modalities"].items()]
        header = ["modality", *self.COLUMNS]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        for row in [header] + rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))))
        return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "inf"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def stats(*, db=None, table: str = "embeddings") -> StatsResult:
    """Per modality: n, dim, model, stats_version, norms, max_staleness and sketch resolution."""
    database = Database(db)
    dataset = database.dataset(table)
    record = current(database, table, dataset)
    meta = TableMeta.from_schema(dataset.schema)
    counts = version_counts(dataset)
    bounds = staleness(record, StatsStore(database, table).history(), counts)
    modalities = {}
    for m, s in record.nonempty().items():
        mine = {v: c for (mm, v), c in counts.items() if mm == m}
        worst = max((bounds[(m, v)] for v in mine), default=0.0)
        stale_rows = sum(c for v, c in mine.items() if bounds[(m, v)] > 0)
        white = s.whitening() if s.n > 1 else None
        modalities[m] = {
            "n": s.n,
            "dim": record.dim,
            "model": meta.model,
            "stats_version": record.version,
            "mean_norm": s.mean_norm,
            "norm_std": s.norm_std,
            "norm_of_mean": float(np.linalg.norm(s.mean)),
            "max_staleness": _json_float(worst),
            "stale_rows": stale_rows,
            "uncertainty_resolution": s.cdf_resolution,
            "loglik_eigenvalue_floor": white.floor if white else None,
            "loglik_floored_eigenvalues": white.floored if white else None,
        }
    return StatsResult(table=table, table_version=dataset.version, stats_version=record.version,
                       model=meta.model, dim=meta.dim, rows=sum(counts.values()),
                       modalities=modalities)


def _json_float(x: float):
    return None if not np.isfinite(x) else x

