"""``refresh``: rescore exactly the rows whose staleness bound exceeds a tolerance.

One streaming pass over the vectors of those rows; only the score columns are written
(Lance data evolution, one commit). Afterwards ``max_staleness`` is 0 for tolerance 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..engine.executor import resolve_engine
from ..engine.scoring import read_index, score_rows
from ..engine.statistics import current
from ..errors import BadInput
from ..geometry.bounds import staleness_bound
from ..store.database import Database
from ..store.lock import writer_lock
from ..store.statistics import StatsStore


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
            reference: str | None = None, quiet: bool = True,
            engine: str | None = None) -> RefreshResult:
    """Rescore rows whose conformity error bound exceeds ``tolerance`` (≥ 0).

    With ``reference``, write instead the ``ref_*`` columns scored against that table's
    statistics (:func:`curator.maintenance.reference.score_against`).
    ``engine``: ``local`` or ``ray`` (default ``$CURATOR_ENGINE``, else local).
    """
    if reference:
        from .reference import score_against

        return score_against(db=db, table=table, reference=reference, quiet=quiet, engine=engine)
    if not tolerance >= 0:
        raise BadInput("--tolerance must be a number ≥ 0")
    engine = resolve_engine(engine)
    database = Database(db)
    database.dataset(table)  # a missing table is an error before any lock is taken
    with writer_lock(database, table):
        return _refresh_locked(database, table, tolerance, engine)


def _refresh_locked(database: Database, table: str, tolerance: float,
                    engine: str = "local") -> RefreshResult:
    dataset = database.dataset(table)
    read_version = dataset.version
    stats = current(database, table, dataset, engine=engine)
    history = StatsStore(database, table).history()
    index = read_index(dataset)
    bound_of = {}
    for code, m in enumerate(index.names):
        current_m = stats.modalities.get(m)
        for v in np.unique(index["stats_version"][index.modality == code]).tolist():
            if v < 0 or current_m is None:
                bound_of[(code, v)] = float("inf")
            else:
                bound_of[(code, v)] = staleness_bound(history.get((v, m)), current_m)
    worst = max(bound_of.values(), default=0.0)
    target = np.zeros(len(index.rowid), bool)
    for (code, v), bound in bound_of.items():
        if bound > tolerance:
            target |= (index.modality == code) & (index["stats_version"] == v)
    dataset, rows = score_rows(dataset, stats, target, index, all_uncertainty=True,
                                      message=f"curator refresh v{stats.version}", engine=engine)
    stats.table_version = dataset.version
    StatsStore(database, table).save(stats)
    return RefreshResult(rows, read_version, dataset.version, stats.version,
                         None if not np.isfinite(worst) else worst, tolerance)
