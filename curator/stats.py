"""Running statistics per table and modality: mergeable sums, versioned, persisted.

For each modality (float64): ``n`` rows, ``S = Σx`` (raw sum), ``U = Σx̂`` (sum of unit
vectors), the second moment about a fixed shift ``c`` (``Q = Σ(x-c)(x-c)ᵀ``; the shift
keeps the float32 batch products accurate), norm moments ``a = Σ‖x‖``, ``b = Σ‖x‖²``,
and a fixed-bin histogram of stored conformity values (the uncertainty sketch).
All are sums: statistics of A ∪ B are those of A plus those of B; deleting subtracts.

Every change gets a new *stats version*. The history keeps ``(n, S, U)`` per version
and modality, which is what the staleness bound of geometry.md needs. Statistics are
derived data: the table is the truth, and they are rebuilt from the rows whenever the
stored record does not describe the table's current version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .store import HIDDEN_PREFIX, STORAGE_VERSION, Database, groups, scan, vectors

HIST_BINS = 1 << 16  # conformity sketch: 65,536 bins over [-1, 1], width ~3.05e-5
HIST_LO, HIST_HI = -1.0, 1.0
EIG_FLOOR_REL = 1e-6  # covariance eigenvalues floored at this fraction of the largest


@dataclass
class ModalityStats:
    """Mergeable sums of one modality's raw vectors (all float64)."""

    dim: int
    n: int = 0
    S: np.ndarray = None
    U: np.ndarray = None
    shift: np.ndarray = None
    Q: np.ndarray = None
    a: float = 0.0
    b: float = 0.0
    hist: np.ndarray = None

    def __post_init__(self):
        d = self.dim
        self.S = np.zeros(d) if self.S is None else np.asarray(self.S, np.float64)
        self.U = np.zeros(d) if self.U is None else np.asarray(self.U, np.float64)
        self.Q = np.zeros((d, d)) if self.Q is None else np.asarray(self.Q, np.float64).reshape(d, d)
        self.hist = (np.zeros(HIST_BINS, np.int64) if self.hist is None
                     else np.asarray(self.hist, np.int64))
        if self.shift is not None:
            self.shift = np.asarray(self.shift, np.float64)

    # -- accumulation ---------------------------------------------------------------
    def add(self, X: np.ndarray, norms: np.ndarray | None = None, sign: int = 1) -> None:
        """Add (``sign=1``) or remove (``sign=-1``) the rows of X (n, d float32)."""
        if len(X) == 0:
            return
        X = np.asarray(X, np.float32)
        if norms is None:
            norms = row_norms(X)
        if self.shift is None:
            self.shift = X.mean(axis=0, dtype=np.float64).astype(np.float32).astype(np.float64)
        centered = X - self.shift.astype(np.float32)
        self.n += sign * len(X)
        self.S += sign * X.sum(axis=0, dtype=np.float64)
        self.U += sign * (X.T @ (1.0 / norms).astype(np.float32)).astype(np.float64)  # GEMV, no copy
        self.Q += sign * (centered.T @ centered).astype(np.float64)
        norms64 = norms.astype(np.float64)
        self.a += sign * float(norms64.sum())
        self.b += sign * float((norms64 * norms64).sum())

    def add_conformity(self, values: np.ndarray, sign: int = 1) -> None:
        """Add stored conformity values to the uncertainty sketch (nulls/NaN ignored)."""
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        np.add.at(self.hist, conformity_bins(values), sign)

    def merge(self, other: ModalityStats) -> ModalityStats:
        """Statistics of the union (other's Q is moved onto this shift)."""
        out = self.copy()
        if other.n == 0:
            return out
        if out.shift is None:
            out.shift = other.shift.copy()
        out.Q += other.Q_about(out.shift)
        out.n += other.n
        out.S += other.S
        out.U += other.U
        out.a += other.a
        out.b += other.b
        out.hist += other.hist
        return out

    def subtract(self, other: ModalityStats) -> ModalityStats:
        """Statistics with other's rows removed."""
        negated = other.copy()
        negated.n, negated.S, negated.U = -other.n, -other.S, -other.U
        negated.Q, negated.a, negated.b, negated.hist = -other.Q, -other.a, -other.b, -other.hist
        return self.merge(negated) if other.n else self.copy()

    def Q_about(self, c: np.ndarray) -> np.ndarray:
        """Σ(x-c)(x-c)ᵀ from the stored moment about ``self.shift``."""
        if self.n == 0 or self.shift is None:
            return np.zeros((self.dim, self.dim))
        delta = self.shift - c  # Σ(x-c)(x-c)ᵀ = Q + δ S'ᵀ + S' δᵀ + n δδᵀ with S' = Σ(x-shift)
        s_shifted = self.S - self.n * self.shift
        return self.Q + np.outer(delta, s_shifted) + np.outer(s_shifted, delta) + self.n * np.outer(delta, delta)

    def copy(self) -> ModalityStats:
        return ModalityStats(self.dim, self.n, self.S.copy(), self.U.copy(),
                             None if self.shift is None else self.shift.copy(),
                             self.Q.copy(), self.a, self.b, self.hist.copy())

    # -- derived quantities -----------------------------------------------------------
    @property
    def mean(self) -> np.ndarray:
        """Raw modality mean m = S/n."""
        return self.S / max(self.n, 1)

    @property
    def covariance(self) -> np.ndarray:
        """Σ = Q/n - m mᵀ, computed about the shift for accuracy."""
        if self.n == 0:
            return np.zeros((self.dim, self.dim))
        d = self.mean - self.shift
        return self.Q / self.n - np.outer(d, d)

    @property
    def mean_norm(self) -> float:
        return self.a / self.n if self.n else float("nan")

    @property
    def norm_std(self) -> float:
        if not self.n:
            return float("nan")
        return float(np.sqrt(max(self.b / self.n - (self.a / self.n) ** 2, 0.0)))

    def whitening(self) -> Whitening:
        return Whitening.from_covariance(self.mean, self.covariance)

    def cdf(self, values: np.ndarray) -> np.ndarray:
        """Fraction of sketched conformities ≤ each value, linear within a bin, [0, 1]."""
        total = self.hist.sum()
        values = np.asarray(values, np.float64)
        if total <= 0:
            return np.full(values.shape, np.nan)
        cum = np.concatenate([[0], np.cumsum(self.hist)])
        pos = (np.clip(values, HIST_LO, HIST_HI) - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS
        idx = np.minimum(pos.astype(np.int64), HIST_BINS - 1)
        frac = np.clip(pos - idx, 0.0, 1.0)
        return (cum[idx] + frac * self.hist[idx]) / total

    @property
    def cdf_resolution(self) -> float:
        """Upper bound of the sketch's CDF error: the largest bin's share of rows."""
        total = self.hist.sum()
        return float(self.hist.max() / total) if total > 0 else 0.0


def row_norms(X: np.ndarray) -> np.ndarray:
    """L2 norms of the rows, float32, accumulated without a normalised copy."""
    return np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)).astype(np.float32)


def conformity_bins(values: np.ndarray) -> np.ndarray:
    """Sketch bin of each conformity, taken at its stored (float32) precision, so a value
    binned when scored and binned again from the table always lands in the same bin."""
    values = np.asarray(values, np.float32).astype(np.float64)
    pos = (np.clip(values, HIST_LO, HIST_HI) - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS
    return np.minimum(pos.astype(np.int64), HIST_BINS - 1)


@dataclass
class Whitening:
    """y = Λ^{-1/2} Vᵀ (x - m): Σ = V Λ Vᵀ with eigenvalues floored at EIG_FLOOR_REL·λmax."""

    mean: np.ndarray
    matrix: np.ndarray  # d x d float32, columns V Λ^{-1/2}
    log_det: float
    floor: float
    floored: int

    @classmethod
    def from_covariance(cls, mean: np.ndarray, cov: np.ndarray) -> Whitening:
        eigvals, eigvecs = np.linalg.eigh((cov + cov.T) / 2)
        floor = max(float(eigvals.max()), 1e-30) * EIG_FLOOR_REL
        floored = int((eigvals < floor).sum())
        eigvals = np.maximum(eigvals, floor)
        matrix = (eigvecs / np.sqrt(eigvals)).astype(np.float32)
        return cls(mean.astype(np.float64), matrix, float(np.log(eigvals).sum()), floor, floored)

    def loglik(self, X: np.ndarray) -> np.ndarray:
        """−½(d·log 2π + ‖y‖² + Σ log λ) per row (float64)."""
        Y = (X - self.mean.astype(np.float32)) @ self.matrix
        sq = np.einsum("ij,ij->i", Y, Y, dtype=np.float64)
        d = X.shape[1]
        return -0.5 * (d * np.log(2 * np.pi) + sq + self.log_det)


# ---------------------------------------------------------------------------------------
# A table's statistics: one ModalityStats per modality, a version, the table version.

@dataclass
class TableStats:
    """Statistics of a table at one stats version."""

    dim: int
    version: int = 0
    table_version: int = 0
    modalities: dict[str, ModalityStats] = field(default_factory=dict)

    def get(self, modality: str) -> ModalityStats:
        if modality not in self.modalities:
            self.modalities[modality] = ModalityStats(self.dim)
        return self.modalities[modality]

    def add_batch(self, batch) -> None:
        """Add a batch's rows (``modality``, ``embedding``, ``conformity`` for the sketch)."""
        X = vectors(batch)
        conformity = batch.column("conformity").to_numpy(zero_copy_only=False).astype(np.float64)
        for m, rows in groups(batch.column("modality")):
            sel = slice(None) if rows is None else rows
            s = self.get(m)
            s.add(X[sel])
            s.add_conformity(conformity[sel])

    def copy(self) -> TableStats:
        return TableStats(self.dim, self.version, self.table_version,
                          {m: s.copy() for m, s in self.modalities.items()})

    def nonempty(self) -> dict[str, ModalityStats]:
        return {m: s for m, s in sorted(self.modalities.items()) if s.n > 0}


@dataclass
class HistoryEntry:
    version: int
    modality: str
    n: int
    S: np.ndarray
    U: np.ndarray


def staleness_bound(old: HistoryEntry | None, current: ModalityStats) -> float:
    """Bound on |C_old − C_now| for rows scored at ``old`` (geometry.md), from sums alone.

    ``‖U_v/(n_v−1) − U_w/(n_w−1)‖ + |1/(n_v−1) − 1/(n_w−1)|``; infinite when the old
    version is unknown or had a single row (no conformity then).
    """
    if old is None or old.n < 2 or current.n < 2:
        return float("inf") if (old is None or current.n >= 2) else 0.0
    if old.n == current.n and np.array_equal(old.U, current.U):
        return 0.0
    diff = old.U / (old.n - 1) - current.U / (current.n - 1)
    return float(np.linalg.norm(diff) + abs(1.0 / (old.n - 1) - 1.0 / (current.n - 1)))


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


def accumulate(dataset, dim: int, *, filter: str | None = None) -> TableStats:
    """Statistics of a table's rows, in one streaming pass (sketch from stored conformity)."""
    stats = TableStats(dim)
    columns = ["modality", "embedding", "conformity"]
    for batch in scan(dataset, columns, filter=filter):
        stats.add_batch(batch)
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


# Commits that leave the rows (and so the statistics) as they were: layout changes, and
# updates of columns the statistics do not read.
_LAYOUT_ONLY = {"Rewrite", "ReserveFragments", "BaseOperation", "CreateIndex"}
_UNREAD_COLUMNS = ("cluster", "cluster_size", "dup_group", "is_duplicate", "rebalance_keep",
                   "ref_conformity", "ref_conformity_est", "ref_uncertainty", "ref_loglik")


def carry_forward(db: Database, table: str, read_version: int, dataset) -> bool:
    """Point the statistics record at ``dataset.version`` when it described ``read_version``
    and every commit since then left the rows alone (curation columns, compaction).

    Without this, the next command would find the record behind the table and rebuild
    the statistics as a new version, making every row look stale. Returns whether the
    record moved.
    """
    if dataset.version == read_version:
        return False
    store = StatsStore(db, table)
    record = store.load()
    if record is None or record.table_version != read_version:
        return False
    unread = set()
    for name in _UNREAD_COLUMNS:
        try:
            unread.add(dataset.lance_schema.field(name).id())
        except (KeyError, ValueError, AttributeError):
            continue
    for tx in dataset.get_transactions(dataset.version - read_version):
        kind = type(tx.operation).__name__ if tx is not None else None
        if kind in _LAYOUT_ONLY:
            continue
        op = tx.operation
        if (kind == "Update" and set(op.fields_modified or []) <= unread
                and not op.new_fragments and not op.removed_fragment_ids):
            continue
        return False
    record.table_version = dataset.version
    store.save(record)
    return True


def curation_step(command):
    """Decorator of commands that write only curation columns (cluster, dedupe, rebalance):
    one writer of the table at a time, and the statistics record follows the new version."""
    import functools

    from .store import writer_lock

    @functools.wraps(command)
    def run(*, db=None, table: str = "embeddings", **options):
        database = Database(db)
        database.dataset(table)  # a missing table is an error before any lock is taken
        with writer_lock(database, table):
            before = database.dataset(table).version
            result = command(db=db, table=table, **options)
            carry_forward(database, table, before, database.dataset(table))
        return result

    return run


def rebuild(db: Database, table: str, dataset=None, *, engine: str | None = None) -> TableStats:
    """Recompute statistics from the rows (the table is the truth), as a new stats version."""
    from .engine import accumulate
    from .store import TableMeta

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


def describe(*, db=None, table: str = "embeddings") -> dict:
    """Per modality: n, dim, model, stats_version, norms, max_staleness and sketch resolution."""
    from .store import TableMeta

    database = Database(db)
    dataset = database.dataset(table)
    stats = current(database, table, dataset)
    meta = TableMeta.from_schema(dataset.schema)
    counts = version_counts(dataset)
    bounds = staleness(stats, StatsStore(database, table).history(), counts)
    modalities = {}
    for m, s in stats.nonempty().items():
        mine = {v: c for (mm, v), c in counts.items() if mm == m}
        worst = max((bounds[(m, v)] for v in mine), default=0.0)
        stale_rows = sum(c for v, c in mine.items() if bounds[(m, v)] > 0)
        white = s.whitening() if s.n > 1 else None
        modalities[m] = {
            "n": s.n,
            "dim": stats.dim,
            "model": meta.model,
            "stats_version": stats.version,
            "mean_norm": s.mean_norm,
            "norm_std": s.norm_std,
            "norm_of_mean": float(np.linalg.norm(s.mean)),
            "max_staleness": _json_float(worst),
            "stale_rows": stale_rows,
            "uncertainty_resolution": s.cdf_resolution,
            "loglik_eigenvalue_floor": white.floor if white else None,
            "loglik_floored_eigenvalues": white.floored if white else None,
        }
    return {"table": table, "table_version": dataset.version, "stats_version": stats.version,
            "model": meta.model, "dim": meta.dim, "rows": sum(counts.values()),
            "modalities": modalities}


def _json_float(x: float):
    return None if not np.isfinite(x) else x
