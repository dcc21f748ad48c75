"""``stats``: per-modality statistics of a table and how stale its stored scores can be."""

from __future__ import annotations

import numpy as np

from ..engine.statistics import bounds, current
from ..geometry.bounds import COLUMNS, allowances
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
        mods = self["modalities"].items()
        lines += _aligned(["modality", *self.COLUMNS],
                          [[m] + [_cell(values[k]) for k in self.COLUMNS] for m, values in mods])
        lines.append("staleness: proven bound on |stored - exact now| per score column "
                     "(inf = unbounded; refresh brings them to 0)")
        lines += _aligned(["modality", *COLUMNS],
                          [[m] + [_cell(values["staleness"][c]) for c in COLUMNS] for m, values in mods])
        return "\n".join(lines)


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in [header] + rows]


def _cell(value) -> str:
    if value is None:
        return "inf"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def stats(*, db=None, table: str = "embeddings") -> StatsResult:
    """Per modality: n, dim, model, stats_version, norms, and how far stored scores can be
    from their exact values now: ``staleness`` (a proven bound per score column, the
    largest over the modality's rows; null = unbounded), ``max_staleness`` (the
    conformity one), ``stale_rows`` (rows with any bound above 0), ``allowance`` (float32
    rounding on top of each bound) and the sketch's ``uncertainty_resolution``."""
    database = Database(db)
    dataset = database.dataset(table)
    record = current(database, table, dataset)
    meta = TableMeta.from_schema(dataset.schema)
    found, bound_of = bounds(dataset, record, StatsStore(database, table).history())
    modalities = {}
    for m, s in record.nonempty().items():
        mine = [g for g in found if g.modality == m]
        staleness = {c: _json_float(max((bound_of[(m, g.version)][c] for g in mine), default=0.0))
                     for c in COLUMNS}
        stale_rows = sum(g.rows for g in mine
                         if any(v > 0 for v in bound_of[(m, g.version)].values()))
        white = s.whitening() if s.n > 1 else None
        allowance = allowances(m, found, record.nonempty())
        modalities[m] = {
            "n": s.n,
            "dim": record.dim,
            "model": meta.model,
            "stats_version": record.version,
            "mean_norm": s.mean_norm,
            "norm_std": s.norm_std,
            "norm_of_mean": float(np.linalg.norm(s.mean)),
            "max_staleness": staleness["conformity"],
            "staleness": staleness,
            "allowance": allowance,
            "stale_rows": stale_rows,
            "versions": sorted(g.version for g in mine),
            "uncertainty_resolution": s.cdf_resolution,
            "loglik_eigenvalue_floor": white.floor if white else None,
            "loglik_floored_eigenvalues": white.floored if white else None,
        }
    return StatsResult(table=table, table_version=dataset.version, stats_version=record.version,
                       model=meta.model, dim=meta.dim, rows=sum(g.rows for g in found),
                       modalities=modalities)


def _json_float(x: float):
    return None if not np.isfinite(x) else x
