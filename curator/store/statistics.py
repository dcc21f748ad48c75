"""A table's statistics records in the database.

``_curator_stats_<table>``: the current record, one row per modality (overwritten).
``_curator_history_<table>``: (stats_version, modality, n, S, U) per version (appended),
which is what the staleness bounds need.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from ..geometry.bounds import HistoryEntry
from ..geometry.sums import ModalityStats, TableStats
from .database import HIDDEN_PREFIX, STORAGE_VERSION, Database


class StatsStore:
    """Persists a table's current statistics and their version history in the database.

    ``_curator_stats_<table>``: the current record, one row per modality (overwritten).
    ``_curator_history_<table>``: (stats_version, modality, n, S, U) per version (appended).
    """

    def __init__(self, db: Database, table: str):
        self.db, self.table = db, table
        self.current_name = f"{HIDDEN_PREFIX}stats_{table}"
        self.history_name = f"{HIDDEN_PREFIX}history_{table}"

    # -- history -------------------------------------------------------------------
    def history(self) -> dict[tuple[int, str], HistoryEntry]:
        if not self.db.has_table(self.history_name):
            return {}
        t = self.db.dataset(self.history_name).to_table()
        out = {}
        cols = t.to_pydict()
        for i in range(t.num_rows):
            e = HistoryEntry(cols["stats_version"][i], cols["modality"][i], cols["n"][i],
                             np.asarray(cols["S"][i]), np.asarray(cols["U"][i]))
            out[(e.version, e.modality)] = e
        return out

    def latest_version(self) -> int:
        if not self.db.has_table(self.history_name):
            return 0
        t = self.db.dataset(self.history_name).to_table(columns=["stats_version"])
        return int(max(t.column(0).to_pylist(), default=0))

    def append_history(self, stats: TableStats) -> None:
        import lance

        rows = [(m, s) for m, s in sorted(stats.modalities.items())]
        if not rows:
            return
        table = pa.table({
            "stats_version": pa.array([stats.version] * len(rows), pa.int64()),
            "modality": [m for m, _ in rows],
            "n": pa.array([s.n for _, s in rows], pa.int64()),
            "S": pa.array([s.S.tolist() for _, s in rows], pa.list_(pa.float64())),
            "U": pa.array([s.U.tolist() for _, s in rows], pa.list_(pa.float64())),
            "created": pa.array([time.time()] * len(rows), pa.float64()),
        })
        mode = "append" if self.db.has_table(self.history_name) else "create"
        lance.write_dataset(table, self.db.table_uri(self.history_name), mode=mode,
                            data_storage_version=STORAGE_VERSION)

    # -- current record ------------------------------------------------------------
    def save(self, stats: TableStats) -> None:
        import lance

        rows = [(m, s) for m, s in sorted(stats.modalities.items())]
        d = stats.dim
        table = pa.table({
            "modality": pa.array([m for m, _ in rows], pa.string()),
            "stats_version": pa.array([stats.version] * len(rows), pa.int64()),
            "table_version": pa.array([stats.table_version] * len(rows), pa.int64()),
            "dim": pa.array([d] * len(rows), pa.int64()),
            "n": pa.array([s.n for _, s in rows], pa.int64()),
            "a": pa.array([s.a for _, s in rows], pa.float64()),
            "b": pa.array([s.b for _, s in rows], pa.float64()),
            "shift": pa.array([None if s.shift is None else s.shift.tolist() for _, s in rows],
                              pa.list_(pa.float64())),
            "S": pa.array([s.S.tolist() for _, s in rows], pa.list_(pa.float64())),
            "U": pa.array([s.U.tolist() for _, s in rows], pa.list_(pa.float64())),
            "Q": pa.array([s.Q.reshape(-1) for _, s in rows], pa.list_(pa.float64())),
            "hist": pa.array([s.hist for _, s in rows], pa.list_(pa.int64())),
        })
        mode = "overwrite" if self.db.has_table(self.current_name) else "create"
        written = lance.write_dataset(table, self.db.table_uri(self.current_name), mode=mode,
                                      data_storage_version=STORAGE_VERSION)
        # Old records are derived data (the history keeps what the bounds need): keep only
        # the newest few versions instead of ~2.5 MB per modality per write.
        if written.version % 16 == 0:
            from datetime import timedelta

            written.cleanup_old_versions(older_than=timedelta(seconds=60))

    def load(self) -> TableStats | None:
        """The stored current record, or None when there is none."""
        if not self.db.has_table(self.current_name):
            return None
        t = self.db.dataset(self.current_name).to_table().to_pydict()
        if not t["modality"]:
            return None
        dim = int(t["dim"][0])
        stats = TableStats(dim, int(t["stats_version"][0]), int(t["table_version"][0]))
        for i, m in enumerate(t["modality"]):
            stats.modalities[m] = ModalityStats(
                dim, int(t["n"][i]), np.asarray(t["S"][i]), np.asarray(t["U"][i]),
                None if t["shift"][i] is None else np.asarray(t["shift"][i]),
                np.asarray(t["Q"][i]), float(t["a"][i]), float(t["b"][i]), np.asarray(t["hist"][i]),
            )
        return stats

