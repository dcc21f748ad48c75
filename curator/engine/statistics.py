"""Statistics of a table's rows: the accumulation pass, the current record, and the row
groups (modality, stats_version) with the stored extremes every bound needs.

The statistics are derived data: the table is the truth. :func:`current` returns the
stored record when it describes the table's version, carries it forward over commits
that left the statistics columns alone, and otherwise rebuilds it from the rows; a
rebuild whose sums equal those of a version the history holds (within float noise)
keeps that version's number, so rows scored at it do not turn stale.
"""

from __future__ import annotations

import numpy as np

from ..geometry.bounds import HistoryEntry, RowGroup, centered_norms, table_bounds
from ..geometry.sums import TableStats
from ..store.arrow import groups, vectors
from ..store.database import Database, TableMeta
from ..store.statistics import StatsStore
from ..store.versions import carry_forward
from .executor import LOCAL, executor
from .fragments import Piece, pieces, scan

STATS_COLUMNS = ["modality", "embedding", "conformity"]
ROWS_PER_PIECE = 131_072  # rows per task on Ray (one partial statistics record each)
SAME_SUMS_RTOL = 1e-9  # statistics equal within float noise are the same version


def add_batch(stats: TableStats, batch) -> None:
    """Add a batch's rows (``modality``, ``embedding``, ``conformity`` for the sketch)."""
    X = vectors(batch)
    conformity = batch.column("conformity").to_numpy(zero_copy_only=False).astype(np.float64)
    for m, rows in groups(batch.column("modality")):
        sel = slice(None) if rows is None else rows
        s = stats.get(m)
        s.add(X[sel])
        s.add_conformity(conformity[sel])


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
    """The statistics describing the table's current version (see the module docstring)."""
    dataset = dataset or db.dataset(table)
    store = StatsStore(db, table)
    stats = store.load()
    if stats is not None and stats.table_version == dataset.version:
        return stats
    if stats is not None and carry_forward(db, table, stats.table_version, dataset):
        stats.table_version = dataset.version
        return stats
    if not rebuild_if_stale and stats is not None:
        return stats
    return rebuild(db, table, dataset, engine=engine)


def rebuild(db: Database, table: str, dataset=None, *, engine: str | None = None) -> TableStats:
    """Recompute statistics from the rows (the table is the truth). The result keeps the
    number of the history's version with the same sums and sketch, else is a new one."""
    dataset = dataset or db.dataset(table)
    store = StatsStore(db, table)
    stats = accumulate(dataset, TableMeta.from_schema(dataset.schema).dim, engine=engine)
    stats.table_version = dataset.version
    history = store.history()
    same = _same_version(stats, history)
    if same is not None:
        # The record that version's writer saved, bit for bit, where its snapshots are
        # kept (a command killed between its table commit and its record save): rows
        # scored at it then have bound 0, as they had before the crash.
        kept = {m: e.snapshot for (v, m), e in history.items() if v == same and e.n > 0}
        if kept and all(s is not None for s in kept.values()) and set(kept) == set(stats.nonempty()):
            stats = TableStats(stats.dim, same, dataset.version,
                               dict(kept))
        stats.version = same
    else:
        stats.version = store.latest_version() + 1
        store.append_history(stats)
    store.save(stats)
    return stats


def _same_version(stats: TableStats, history: dict[tuple[int, str], HistoryEntry]) -> int | None:
    """The newest version whose every modality has these sums (within float noise) and,
    where its snapshot is kept, this sketch."""
    live = stats.nonempty()
    for version in sorted({v for v, _ in history}, reverse=True):
        entries = {m: e for (v, m), e in history.items() if v == version and e.n > 0}
        if set(entries) != set(live):
            continue
        if all(_close(entries[m], s) for m, s in live.items()):
            return version
    return None


def _close(entry: HistoryEntry, s) -> bool:
    if entry.n != s.n:
        return False
    for a, b in ((entry.S, s.S), (entry.U, s.U)):
        if np.linalg.norm(a - b) > SAME_SUMS_RTOL * max(np.linalg.norm(b), 1.0):
            return False
    if entry.snapshot is not None and not np.array_equal(entry.snapshot.hist, s.hist):
        return False
    return True


# -- row groups and bounds -------------------------------------------------------------

def row_groups(dataset, history: dict[tuple[int, str], HistoryEntry]) -> list[RowGroup]:
    """Rows per (modality, stats_version), with the extremes of ‖x‖, of ‖x − m_v‖ and of
    |loglik|, from one scan of five scalar columns (never the vectors)."""
    found: dict[tuple[str, int], RowGroup] = {}
    columns = ["modality", "stats_version", "norm", "conformity_est", "loglik"]
    for batch in scan(dataset, columns, batch_size=1 << 18).to_batches():
        modality = batch.column(0).dictionary_encode()
        names = modality.dictionary.to_pylist()
        code = modality.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        version = batch.column(1).fill_null(-1).to_numpy().astype(np.int64)
        norm = batch.column(2).to_numpy(zero_copy_only=False).astype(np.float64)
        est = batch.column(3).to_numpy(zero_copy_only=False).astype(np.float64)
        loglik = np.abs(batch.column(4).to_numpy(zero_copy_only=False).astype(np.float64))
        keys, inverse = np.unique(code * (1 << 40) + (version + 1), return_inverse=True)
        k = len(keys)
        count = np.bincount(inverse, minlength=k)
        max_norm = _reduce(np.maximum, inverse, k, norm, 0.0)
        max_ll = _reduce(np.maximum, inverse, k, loglik, 0.0)
        mean_norm = np.full(k, np.nan)
        for j, key in enumerate(keys):
            entry = history.get((int(key % (1 << 40)) - 1, names[int(key >> 40)]))
            if entry is not None and entry.n > 0:
                mean_norm[j] = float(np.linalg.norm(entry.mean))
        low, high = centered_norms(norm, est, mean_norm[inverse])
        ok = np.isfinite(low) & np.isfinite(mean_norm[inverse])
        min_c = _reduce(np.minimum, inverse[ok], k, low[ok], np.inf)
        max_c = _reduce(np.maximum, inverse[ok], k, high[ok], 0.0)
        unknown = np.bincount(inverse[~ok], minlength=k) > 0  # rows whose centred norm is unknown
        for j, key in enumerate(keys):
            m, v = names[int(key >> 40)], int(key % (1 << 40)) - 1
            g = found.setdefault((m, v), RowGroup(m, v, 0))
            g.rows += int(count[j])
            g.max_norm = max(g.max_norm, float(max_norm[j]))
            g.max_abs_loglik = max(g.max_abs_loglik, float(max_ll[j]))
            g.min_centered = min(g.min_centered, float(min_c[j]))
            g.max_centered = max(g.max_centered, float(max_c[j]))
            if unknown[j] and v >= 0:
                g.max_centered = float("inf")
    return sorted(found.values(), key=lambda g: (g.modality, g.version))


def _reduce(op, index: np.ndarray, k: int, values: np.ndarray, fill: float) -> np.ndarray:
    """op-reduction of ``values`` by group ``index`` (NaN ignored), ``fill`` where empty."""
    out = np.full(k, fill)
    finite = np.isfinite(values)
    op.at(out, index[finite], values[finite])
    return out


def referenced_versions(dataset) -> set[int]:
    """The statistics versions some row's scores come from (one scalar scan)."""
    found: set[int] = set()
    for batch in scan(dataset, ["stats_version"], batch_size=1 << 20).to_batches():
        found.update(np.unique(batch.column(0).drop_null().to_numpy()).tolist())
    return found


def bounds(dataset, stats: TableStats, history: dict[tuple[int, str], HistoryEntry]
           ) -> tuple[list[RowGroup], dict[tuple[str, int], dict[str, float]]]:
    """(row groups, a bound for every score column of every group) at ``stats``."""
    reuse_whitening(stats, history)
    found = row_groups(dataset, history)
    return found, table_bounds(found, history, stats.modalities, stats.version)


def reuse_whitening(stats: TableStats, history: dict[tuple[int, str], HistoryEntry]) -> int:
    """Give each modality of ``stats`` the whitening its version's snapshot stored, where
    that snapshot holds the very same sums (the record and the snapshot of a version are
    written from one object), so the eigen-decomposition is not done again (0.02–0.03 s
    per modality at d = 512); returns how many were reused."""
    reused = 0
    for m, s in stats.nonempty().items():
        entry = history.get((stats.version, m))
        snap = None if entry is None else entry.snapshot
        white = None if snap is None else snap.known_whitening()
        if white is None or snap.n != s.n or (snap.shift is None) != (s.shift is None):
            continue
        if (np.array_equal(snap.S, s.S) and np.array_equal(snap.U, s.U) and np.array_equal(snap.Q, s.Q)
                and (s.shift is None or np.array_equal(snap.shift, s.shift))):
            s.remember_whitening(white)
            reused += 1
    return reused
