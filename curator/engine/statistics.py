"""Statistics of a table's rows: the accumulation pass, and the current record.

The statistics are derived data: the table is the truth, and they are rebuilt from the
rows whenever the stored record does not describe the table's current version.
"""

from __future__ import annotations

import numpy as np

from ..geometry.bounds import staleness_bound
from ..geometry.sums import ModalityStats, TableStats
from ..store.arrow import groups, vectors
from ..store.database import Database, TableMeta
from ..store.statistics import StatsStore
from .executor import LOCAL, executor
from .fragments import Piece, pieces


def add_batch(stats: TableStats, batch) -> None:
    """Add a batch's rows (``modality``, ``embedding``, ``conformity`` for the sketch)."""
    X = vectors(batch)
    conformity = batch.column("conformity").to_numpy(zero_copy_only=False).astype(np.float64)
    for m, rows in groups(batch.column("modality")):
        sel = slice(None) if rows is None else rows
        s = stats.get(m)
        s.add(X[sel])
        s.add_conformity(conformity[sel])


STATS_COLUMNS = ["modality", "embedding", "conformity"]
ROWS_PER_PIECE = 131_072  # rows per task on Ray (one partial statistics record each)


def piece_stats(piece: Piece, dim: int, filter: str | None) -> TableStats:
    """The pass's per-piece function: statistics of the piece's rows."""
    stats = TableStats(dim)
    for batch in piece.batches(STATS_COLUMNS, filter=filter):
        add_batch(stats, batch)
    return stats


def accumulate(dataset, dim: int, *, filter: str | None = None,
               engine: str | None = None) -> TableStats:
    """Statistics of a table's rows (at the dataset's version): one streaming pass, the
    sketch from stored conformity. Per-piece partial sums, merged here."""
    run = executor(engine)
    split = None if run.name == LOCAL else ROWS_PER_PIECE
    stats = TableStats(dim)
    for part in run.map(piece_stats, [(p, dim, filter) for p in pieces(dataset, split)]):
        stats.merge_from(part)
    return stats


def current(db: Database, table: str, dataset=None, *, rebuild_if_stale: bool = True,
            engine: str | None = None) -> TableStats:
    """The statistics describing the table's current version, rebuilt from rows if needed."""
    dataset = dataset or db.dataset(table)
    store = StatsStore(db, table)
    stats = store.load()
    if stats is not None and stats.table_version == dataset.version:
        return stats
    if not rebuild_if_stale and stats is not None:
        return stats
    return rebuild(db, table, dataset, engine=engine)


def rebuild(db: Database, table: str, dataset=None, *, engine: str | None = None) -> TableStats:
    """Recompute statistics from the rows (the table is the truth), as a new stats version."""
    dataset = dataset or db.dataset(table)
    store = StatsStore(db, table)
    stats = accumulate(dataset, TableMeta.from_schema(dataset.schema).dim, engine=engine)
    stats.version = store.latest_version() + 1
    stats.table_version = dataset.version
    store.append_history(stats)
    store.save(stats)
    return stats


def version_counts(dataset) -> dict[tuple[str, int], int]:
    """Rows per (modality, stats_version) (-1 = never scored), from a scalar scan."""
    table = dataset.to_table(columns=["modality", "stats_version"])
    grouped = table.group_by(["modality", "stats_version"]).aggregate([([], "count_all")])
    out = {}
    for m, v, c in zip(*(grouped.column(k).to_pylist() for k in ("modality", "stats_version", "count_all"))):
        out[(m, -1 if v is None else int(v))] = int(c)
    return out


def staleness(stats: TableStats, history: dict, counts: dict) -> dict[tuple[str, int], float]:
    """Bound on the conformity error of the rows of each (modality, stats_version)."""
    out = {}
    for (m, v), _ in counts.items():
        current_m = stats.modalities.get(m) or ModalityStats(stats.dim)
        out[(m, v)] = float("inf") if v < 0 else staleness_bound(history.get((v, m)), current_m)
    return out

