"""A table's statistics records in the database.

- ``_curator_stats_<table>``: the current record, one row per modality (overwritten):
  the sums, the sketch, the statistics version and the table version it describes.
- ``_curator_history_<table>``: (stats_version, modality, n, S, U) of every version
  (appended; a few KB each): the conformity and estimator bounds need them forever.
- ``_curator_snapshots_<table>``: the full record (second moment, sketch) of every
  version that rows still reference, for the loglik and uncertainty bounds and for
  ``verify``'s check that each row holds the scores of its own version; versions no row
  references any more are pruned (:meth:`StatsStore.prune_snapshots`).

Order of writes in a scoring command: history and snapshot of the new version first,
then the table commit, then the current record. A crash after the commit leaves rows of
a version the history knows; the record is rebuilt from the rows and, its sums being
those of that version, takes its number (:func:`curator.engine.statistics.current`).
"""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pyarrow as pa

from ..geometry import sketch
from ..geometry.bounds import HistoryEntry
from ..geometry.sums import ModalityStats, TableStats
from ..geometry.whitening import Whitening
from .database import HIDDEN_PREFIX, STORAGE_VERSION, Database


class StatsStore:
    """Persists a table's current statistics, their history and snapshots."""

    def __init__(self, db: Database, table: str):
        self.db, self.table = db, table
        self.current_name = f"{HIDDEN_PREFIX}stats_{table}"
        self.history_name = f"{HIDDEN_PREFIX}history_{table}"
        self.snapshot_name = f"{HIDDEN_PREFIX}snapshots_{table}"

    # -- history -------------------------------------------------------------------
    def history(self, snapshots: bool = True) -> dict[tuple[int, str], HistoryEntry]:
        """Every (version, modality) the history holds, with its snapshot where kept."""
        if not self.db.has_table(self.history_name):
            return {}
        cols = _cells(self.db.dataset(self.history_name).to_table(
            columns=["stats_version", "modality", "n", "S", "U"]))
        out = {}
        for i in range(len(cols["n"])):
            e = HistoryEntry(int(cols["stats_version"][i]), cols["modality"][i], int(cols["n"][i]),
                             np.asarray(cols["S"][i]), np.asarray(cols["U"][i]))
            out[(e.version, e.modality)] = e
        if snapshots:
            for key, snap in self.snapshots().items():
                if key in out:
                    out[key].snapshot = snap
        return out

    def latest_version(self) -> int:
        if not self.db.has_table(self.history_name):
            return 0
        t = self.db.dataset(self.history_name).to_table(columns=["stats_version"])
        return int(max(t.column(0).to_pylist(), default=0))

    def append_history(self, stats: TableStats) -> None:
        """Record version ``stats.version``: its (n, S, U) and its snapshot."""
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
        self.save_snapshot(stats)

    # -- snapshots -----------------------------------------------------------------
    def save_snapshot(self, stats: TableStats) -> None:
        import lance

        table = _record(stats, sparse_sketch=True)
        if table.num_rows == 0:
            return
        mode = "append" if self.db.has_table(self.snapshot_name) else "create"
        lance.write_dataset(table, self.db.table_uri(self.snapshot_name), mode=mode,
                            data_storage_version=STORAGE_VERSION)

    def snapshots(self) -> dict[tuple[int, str], ModalityStats]:
        if not self.db.has_table(self.snapshot_name):
            return {}
        t = _cells(self.db.dataset(self.snapshot_name).to_table())
        out = {}
        for i, m in enumerate(t["modality"]):
            out[(int(t["stats_version"][i]), m)] = _modality(t, i, sparse_sketch=True)
        return out

    def prune_snapshots(self, keep: set[int]) -> int:
        """Drop the snapshots of versions not in ``keep``; returns how many were dropped."""
        import lance

        if not self.db.has_table(self.snapshot_name):
            return 0
        dataset = self.db.dataset(self.snapshot_name)
        versions = dataset.to_table(columns=["stats_version"]).column(0).to_numpy()
        drop = ~np.isin(versions, np.fromiter(keep, np.int64, len(keep)))
        if not drop.any():
            return 0
        kept = dataset.to_table().filter(pa.array(~drop))
        written = lance.write_dataset(kept, self.db.table_uri(self.snapshot_name), mode="overwrite",
                                      data_storage_version=STORAGE_VERSION)
        written.cleanup_old_versions(older_than=timedelta(seconds=0))
        return int(drop.sum())

    # -- current record ------------------------------------------------------------
    def save(self, stats: TableStats) -> None:
        import lance

        table = _record(stats, sparse_sketch=False)
        mode = "overwrite" if self.db.has_table(self.current_name) else "create"
        written = lance.write_dataset(table, self.db.table_uri(self.current_name), mode=mode,
                                      data_storage_version=STORAGE_VERSION)
        # Old records are derived data (the history keeps what the bounds need): keep only
        # the newest few versions instead of ~2.5 MB per modality per write.
        if written.version % 16 == 0:
            written.cleanup_old_versions(older_than=timedelta(seconds=60))

    def load(self) -> TableStats | None:
        """The stored current record, or None when there is none."""
        if not self.db.has_table(self.current_name):
            return None
        t = _cells(self.db.dataset(self.current_name).to_table())
        if not t["modality"]:
            return None
        stats = TableStats(int(t["dim"][0]), int(t["stats_version"][0]), int(t["table_version"][0]))
        for i, m in enumerate(t["modality"]):
            stats.modalities[m] = _modality(t, i, sparse_sketch=False)
        return stats


def _cells(table: pa.Table) -> dict[str, list]:
    """Like ``to_pydict``, but each list cell (S, U, Q, the whitening, the sketch: up to
    d² values) comes back as its own numpy array (None where null), not a Python list:
    a 512-d snapshot holds two 262,144-value cells."""
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
            out[name] = column.to_pylist()
            continue
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        out[name] = [np.array(values[offsets[i]:offsets[i + 1]]) if valid[i] else None
                     for i in range(len(column))]
    return out


def _record(stats: TableStats, sparse_sketch: bool) -> pa.Table:
    rows = [(m, s) for m, s in sorted(stats.modalities.items())]
    columns = {
        "modality": pa.array([m for m, _ in rows], pa.string()),
        "stats_version": pa.array([stats.version] * len(rows), pa.int64()),
        "table_version": pa.array([stats.table_version] * len(rows), pa.int64()),
        "dim": pa.array([stats.dim] * len(rows), pa.int64()),
        "n": pa.array([s.n for _, s in rows], pa.int64()),
        "a": pa.array([s.a for _, s in rows], pa.float64()),
        "b": pa.array([s.b for _, s in rows], pa.float64()),
        "shift": pa.array([None if s.shift is None else s.shift.tolist() for _, s in rows],
                          pa.list_(pa.float64())),
        "S": pa.array([s.S.tolist() for _, s in rows], pa.list_(pa.float64())),
        "U": pa.array([s.U.tolist() for _, s in rows], pa.list_(pa.float64())),
        "Q": pa.array([s.Q.reshape(-1) for _, s in rows], pa.list_(pa.float64())),
    }
    if sparse_sketch:
        parts = [sketch.sparse(s.hist) for _, s in rows]
        columns["hist_bins"] = pa.array([b for b, _ in parts], pa.list_(pa.int32()))
        columns["hist_counts"] = pa.array([c for _, c in parts], pa.list_(pa.int64()))
        # The whitening each version scored with, so bounds and verify never redo it.
        whites = [s.whitening() if s.n > 1 else None for _, s in rows]
        columns["white"] = pa.array([None if w is None else w.matrix.reshape(-1) for w in whites],
                                    pa.list_(pa.float32()))
        columns["white_log_det"] = pa.array([None if w is None else w.log_det for w in whites], pa.float64())
        columns["white_floor"] = pa.array([None if w is None else w.floor for w in whites], pa.float64())
        columns["white_floored"] = pa.array([None if w is None else w.floored for w in whites], pa.int64())
    else:
        columns["hist"] = pa.array([s.hist for _, s in rows], pa.list_(pa.int64()))
    return pa.table(columns)


def _modality(t: dict, i: int, sparse_sketch: bool) -> ModalityStats:
    dim = int(t["dim"][i])
    hist = (sketch.dense(t["hist_bins"][i], t["hist_counts"][i]) if sparse_sketch
            else np.asarray(t["hist"][i]))
    s = ModalityStats(
        dim, int(t["n"][i]), np.asarray(t["S"][i]), np.asarray(t["U"][i]),
        None if t["shift"][i] is None else np.asarray(t["shift"][i]),
        np.asarray(t["Q"][i]), float(t["a"][i]), float(t["b"][i]), hist,
    )
    if sparse_sketch and t.get("white") and t["white"][i] is not None:
        s.remember_whitening(Whitening(
            s.mean, np.asarray(t["white"][i], np.float32).reshape(dim, dim),
            float(t["white_log_det"][i]), float(t["white_floor"][i]), int(t["white_floored"][i])))
    return s
