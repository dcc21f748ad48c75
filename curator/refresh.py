"""``refresh``: rescore exactly the rows whose staleness bound exceeds a tolerance.

One streaming pass over the vectors of those rows; only the score columns are written
(Lance data evolution, one commit). Afterwards ``max_staleness`` is 0 for tolerance 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import stats as stats_mod
from .rescore import read_index
from .store import Database, writer_lock


@dataclass
class RefreshResult:
    rows: int
    table_version_read: int
    table_version: int
    stats_version: int
    max_staleness_before: float | None
    tolerance: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        before = "unbounded" if self.max_staleness_before is None else f"{self.max_staleness_before:.3g}"
        if not self.rows and self.table_version == self.table_version_read:
            return (f"nothing to refresh at tolerance {self.tolerance:g} (max staleness {before}); "
                    f"table unchanged at version {self.table_version}")
        return (f"rescored {self.rows} rows whose bound exceeded {self.tolerance:g} (max staleness was "
                f"{before}, now within the tolerance) against statistics version {self.stats_version}: "
                f"table version {self.table_version_read} -> {self.table_version}")


def refresh(*, db=None, table: str = "embeddings", tolerance: float = 0.0,
            quiet: bool = True, engine: str | None = None) -> RefreshResult:
    """Rescore rows whose conformity error bound exceeds ``tolerance`` (≥ 0).

    ``engine``: ``local`` or ``ray`` (default ``$CURATOR_ENGINE``, else local).
    """
    from .engine import resolve_engine
    from .errors import BadInput

    if not tolerance >= 0:
        raise BadInput("--tolerance must be a number ≥ 0")
    engine = resolve_engine(engine)
    database = Database(db)
    database.dataset(table)  # a missing table is an error before any lock is taken
    with writer_lock(database, table):
        return _refresh_locked(database, table, tolerance, engine)


def _refresh_locked(database: Database, table: str, tolerance: float,
                    engine: str = "local") -> RefreshResult:
    from .engine import score_rows as engine_score_rows

    dataset = database.dataset(table)
    read_version = dataset.version
    stats = stats_mod.current(database, table, dataset, engine=engine)
    history = stats_mod.StatsStore(database, table).history()
    index = read_index(dataset)
    bound_of = {}
    for code, m in enumerate(index.names):
        current_m = stats.modalities.get(m)
        for v in np.unique(index.stats_version[index.modality == code]).tolist():
            if v < 0 or current_m is None:
                bound_of[(code, v)] = float("inf")
            else:
                bound_of[(code, v)] = stats_mod.staleness_bound(history.get((v, m)), current_m)
    worst = max(bound_of.values(), default=0.0)
    target = np.zeros(len(index.rowid), bool)
    for (code, v), bound in bound_of.items():
        if bound > tolerance:
            target |= (index.modality == code) & (index.stats_version == v)
    dataset, rows = engine_score_rows(dataset, stats, target, index, all_uncertainty=True,
                                      message=f"curator refresh v{stats.version}", engine=engine)
    stats.table_version = dataset.version
    stats_mod.StatsStore(database, table).save(stats)
    return RefreshResult(rows, read_version, dataset.version, stats.version,
                         None if not np.isfinite(worst) else worst, tolerance)
