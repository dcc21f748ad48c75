"""``optimize``: compact a table's fragments, prune old versions, update its indexes.

Every ingest appends at least one fragment and every score write adds column files, so
many small ingests leave many small fragments and scans slow down with their number.
``optimize``:

1. compacts the table's fragments (``dataset.optimize.compact_files``, storage version
   2.0 as the table is written), which rewrites rows and renumbers their ``_rowid``s
   but changes no value; the statistics record is then moved to the new table version
   (it still describes the same rows), so no needless rebuild follows;
2. updates the table's indexes when it has any (``dataset.optimize.optimize_indices``);
3. removes versions older than the retention (``keep_versions`` days, default 7),
   except every version protected by a tag (:func:`protect_version`; export does this
   for the version it read, so an export stays reproducible from (version, query));
4. compacts curator's own hidden tables of this table (``_curator_*_<table>``) and
   prunes their versions older than the retention, or than ``HIDDEN_RETENTION`` when
   that is shorter (their old versions are superseded bookkeeping, never read).

``keep_versions=0`` keeps only the latest version (and the protected ones).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from ..errors import BadInput
from ..store.database import HIDDEN_PREFIX, STORAGE_VERSION, Database
from ..store.lock import writer_lock
from ..store.versions import carry_forward, protected_versions

DEFAULT_RETENTION_DAYS = 7
HIDDEN_RETENTION = timedelta(hours=1)
TARGET_ROWS_PER_FRAGMENT = 1 << 20
# Transactions that move rows between fragments without changing any value.


@dataclass
class OptimizeResult:
    """What optimize did to a table and its hidden tables."""

    table: str
    table_version_read: int
    table_version: int
    fragments_before: int
    fragments_after: int
    versions_before: int
    versions_after: int
    versions_removed: int
    bytes_removed: int
    protected_versions: list[int] = field(default_factory=list)
    indices_optimized: bool = False
    stats_record_moved: bool = False
    hidden_tables: dict = field(default_factory=dict)  # name -> {fragments_before, after, versions_removed}
    retention_days: float = DEFAULT_RETENTION_DAYS
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            (f"optimized {self.table!r} v{self.table_version_read} → v{self.table_version}: "
             f"{self.fragments_before} → {self.fragments_after} fragments"),
            f"versions: {self.versions_before} → {self.versions_after} "
            f"({self.versions_removed} removed, {self.bytes_removed / 1e6:.1f} MB freed; "
            f"kept the last {self.retention_days:g} days"
            + (f" and protected versions {self.protected_versions}" if self.protected_versions else "")
            + ")",
        ]
        if self.indices_optimized:
            lines.append("indexes updated")
        if self.hidden_tables:
            lines.append("hidden tables: " + ", ".join(
                f"{n} {h['fragments_before']}→{h['fragments_after']} fragments"
                for n, h in sorted(self.hidden_tables.items())))
        return "\n".join(lines)


def optimize(*, db=None, table: str = "embeddings", keep_versions: float | None = None) -> OptimizeResult:
    """Compact ``table``, update its indexes and prune versions older than ``keep_versions`` days."""
    started = time.time()
    days = DEFAULT_RETENTION_DAYS if keep_versions is None else keep_versions
    if not days >= 0:
        raise BadInput("--keep-versions must be a number of days ≥ 0")
    retention = timedelta(days=float(days))
    database = Database(db)
    database.dataset(table)  # NoTable before any lock file is made
    with writer_lock(database, table):  # compaction conflicts with concurrent score writes
        return _optimize(database, table, retention, float(days), started)


def _optimize(database: Database, table: str, retention: timedelta, days: float,
              started: float) -> OptimizeResult:
    dataset = database.dataset(table)
    read_version = dataset.version
    fragments_before = len(dataset.get_fragments())
    versions_before = len(dataset.versions())

    dataset = _compact(dataset)
    indices = _optimize_indices(dataset)
    if indices:
        dataset = dataset.__class__(dataset.uri)
    moved = _move_stats_record(database, table, read_version, dataset)
    cleanup = dataset.cleanup_old_versions(older_than=retention, error_if_tagged_old_versions=False)
    dataset = dataset.__class__(dataset.uri)

    hidden = {}
    for name in _hidden_tables(database, table):
        hidden[name] = _optimize_hidden(database, name, min(retention, HIDDEN_RETENTION))

    return OptimizeResult(
        table=table, table_version_read=read_version, table_version=dataset.version,
        fragments_before=fragments_before, fragments_after=len(dataset.get_fragments()),
        versions_before=versions_before, versions_after=len(dataset.versions()),
        versions_removed=int(cleanup.old_versions), bytes_removed=int(cleanup.bytes_removed),
        protected_versions=protected_versions(dataset), indices_optimized=indices,
        stats_record_moved=moved, hidden_tables=hidden, retention_days=days,
        seconds=time.time() - started,
    )


def _compact(dataset):
    if len(dataset.get_fragments()) <= 1 and not _has_deletions(dataset):
        return dataset
    dataset.optimize.compact_files(target_rows_per_fragment=TARGET_ROWS_PER_FRAGMENT,
                                   materialize_deletions=True,
                                   data_storage_version=STORAGE_VERSION)
    return dataset.__class__(dataset.uri)


def _has_deletions(dataset) -> bool:
    return any(f.metadata.deletion_file is not None for f in dataset.get_fragments())


def _optimize_indices(dataset) -> bool:
    if not dataset.has_index:
        return False
    dataset.optimize.optimize_indices()
    return True


def _move_stats_record(database: Database, table: str, read_version: int, dataset) -> bool:
    """Point the statistics record at the compacted version (see stats.carry_forward)."""
    return carry_forward(database, table, read_version, dataset)


def _hidden_tables(database: Database, table: str) -> list[str]:
    """``_curator_<kind>_<table>`` (kinds hold no underscore: stats, history, centroids…)."""
    out = []
    for name in database.table_names(hidden=True):
        rest = name[len(HIDDEN_PREFIX):] if name.startswith(HIDDEN_PREFIX) else ""
        if "_" in rest and rest.split("_", 1)[1] == table:
            out.append(name)
    return out


def _optimize_hidden(database: Database, name: str, retention: timedelta) -> dict:
    dataset = database.dataset(name)
    before = len(dataset.get_fragments())
    dataset = _compact(dataset)
    cleanup = dataset.cleanup_old_versions(older_than=retention, error_if_tagged_old_versions=False)
    dataset = dataset.__class__(dataset.uri)
    return {"fragments_before": before, "fragments_after": len(dataset.get_fragments()),
            "versions_removed": int(cleanup.old_versions)}
