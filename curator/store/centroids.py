"""Stored concept centroids: ``_curator_centroids_<table>``, one row per (version,
modality) holding the k × d matrix; old versions are kept."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from .database import HIDDEN_PREFIX, STORAGE_VERSION, Database


class CentroidStore:
    """``_curator_centroids_<table>``: one row per (version, modality) with the k × d matrix."""

    def __init__(self, database: Database, table: str):
        self.db, self.table = database, table
        self.name = f"{HIDDEN_PREFIX}centroids_{table}"

    def exists(self) -> bool:
        return self.db.has_table(self.name)

    def latest_version(self) -> int:
        if not self.exists():
            return 0
        t = self.db.dataset(self.name).to_table(columns=["version"])
        return int(max(t.column(0).to_pylist(), default=0))

    def append(self, version: int, rows: dict[str, dict]) -> None:
        import lance

        mods = sorted(rows)
        table = pa.table({
            "version": pa.array([version] * len(mods), pa.int64()),
            "modality": pa.array(mods, pa.string()),
            "k": pa.array([rows[m]["centroids"].shape[0] for m in mods], pa.int32()),
            "dim": pa.array([rows[m]["centroids"].shape[1] for m in mods], pa.int32()),
            "centroids": pa.array([rows[m]["centroids"].astype(np.float32).ravel() for m in mods],
                                  pa.list_(pa.float32())),
            "seed": pa.array([rows[m]["seed"] for m in mods], pa.int64()),
            "table_version": pa.array([rows[m]["table_version"] for m in mods], pa.int64()),
            "created": pa.array([time.time()] * len(mods), pa.float64()),
        })
        mode = "append" if self.exists() else "create"
        lance.write_dataset(table, self.db.table_uri(self.name), mode=mode,
                            data_storage_version=STORAGE_VERSION)

    def latest(self) -> dict[str, tuple[int, np.ndarray]]:
        """modality → (version, centroids (k, d) float32) of its most recent clustering."""
        if not self.exists():
            return {}
        t = self.db.dataset(self.name).to_table(columns=["version", "modality", "k", "dim",
                                                         "centroids"]).to_pydict()
        out = {}
        for i in range(len(t["version"])):
            m, v = t["modality"][i], t["version"][i]
            if m not in out or v > out[m][0]:
                C = np.asarray(t["centroids"][i], np.float32).reshape(t["k"][i], t["dim"][i])
                out[m] = (v, C)
        return out

