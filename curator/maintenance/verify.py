"""``verify``: recompute statistics and scores from the rows and report any drift.

The table is the truth; statistics and score columns are derived from it. ``verify``
streams the table twice (bounded memory): first it recomputes every modality's sums
with :func:`curator.stats.accumulate` and compares them with the stored statistics
record; then, with the recomputed sums, it computes every row's exact conformity and
compares it with the stored one. A row scored under stats version ``v`` may differ
from the exact value by at most the staleness bound of ``v`` (geometry.md) plus a
float32 allowance of ``SCORE_SLACK``; more than that is drift. It also checks the
stored ``norm`` and ``conformity_est`` (the estimator as of the row's own version,
from the history's ``S`` and ``n``).

Drift kinds (``VerifyResult.issues``, each ``{kind, modality, rows, detail}``):

- ``stats_missing``: no statistics record although the table holds rows;
- ``stats_sums``: a modality's stored ``n``, ``S``, ``U``, ``a``, ``b`` or covariance
  differ from the recomputed sums (a lost or partial update);
- ``stats_history``: the record's version has no history entry, or it disagrees;
- ``sketch``: the uncertainty sketch does not count the stored conformity values;
- ``unscored``: rows never scored (``stats_version`` null);
- ``unknown_version``: rows scored with a stats version absent from the history;
- ``conformity``: rows whose stored conformity differs from exact by more than
  their bound (+ ``SCORE_SLACK``);
- ``conformity_est`` / ``norm``: stored values that do not match the row's vector.

A stale record (``record_table_version`` ≠ the table's version, sums still right) is
reported as a warning only: it is consistent, and the next command rebuilds it.

``repair=True`` rebuilds the statistics from the rows when they drifted
(:func:`curator.stats.rebuild`, a new stats version), refreshes the record otherwise,
and rescores exactly the drifted rows (:func:`curator.rescore.score_rows`) in one
commit, so that a second ``verify`` is clean. Without drift it writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from ..engine.scoring import read_index, score_rows
from ..engine.statistics import accumulate, rebuild
from ..geometry.bounds import staleness_bound
from ..geometry.sums import TableStats, row_norms
from ..store.arrow import vectors
from ..store.columns import SCAN_BATCH_ROWS
from ..store.database import Database, TableMeta
from ..store.lock import writer_lock
from ..store.statistics import StatsStore

SCORE_SLACK = 2e-5  # float32 storage and float32 dot products
EST_TOLERANCE = 1e-4  # |stored conformity_est − cos(x, m_v)|
NORM_RTOL = 1e-5
SUM_RTOL = 1e-6  # relative drift allowed in S, U, a, b (float64 summation order)
COV_RTOL = 1e-3  # relative Frobenius drift allowed in the covariance (float32 products)
EXAMPLES = 5  # example ids kept per issue


@dataclass
class Issue:
    kind: str
    modality: str | None
    rows: int
    detail: str
    examples: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "modality": self.modality, "rows": self.rows,
                "detail": self.detail, "examples": list(self.examples)}


@dataclass
class VerifyResult:
    """What verify found (and, with ``repair``, what it did)."""

    table: str
    table_version: int  # version read
    rows: int
    stats_version: int | None  # of the stored record (None = no record)
    record_table_version: int | None
    issues: list[Issue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    max_conformity_error: float = 0.0  # largest |stored − exact| over scored rows
    repaired: bool = False
    rows_rescored: int = 0
    table_version_after: int | None = None
    stats_version_after: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when statistics and scores are consistent with the rows."""
        return not self.issues

    def to_dict(self) -> dict:
        return {
            "ok": self.ok, "table": self.table, "table_version": self.table_version,
            "rows": self.rows, "stats_version": self.stats_version,
            "record_table_version": self.record_table_version,
            "issues": [i.to_dict() for i in self.issues], "warnings": list(self.warnings),
            "max_conformity_error": self.max_conformity_error, "repaired": self.repaired,
            "rows_rescored": self.rows_rescored, "table_version_after": self.table_version_after,
            "stats_version_after": self.stats_version_after, "seconds": self.seconds,
        }

    def summary(self) -> str:
        head = (f"verify {self.table!r} v{self.table_version}: {self.rows} rows, "
                f"stats version {self.stats_version}: "
                + ("consistent" if self.ok else f"{len(self.issues)} issue(s)"))
        lines = [head]
        for issue in self.issues:
            where = f" [{issue.modality}]" if issue.modality else ""
            lines.append(f"  {issue.kind}{where}: {issue.rows} rows: {issue.detail}")
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.repaired:
            lines.append(f"repaired: rescored {self.rows_rescored} rows; table v{self.table_version_after}, "
                         f"stats version {self.stats_version_after}")
        return "\n".join(lines)


def verify(*, db=None, table: str = "embeddings", repair: bool = False) -> VerifyResult:
    """Recompute statistics and scores of ``table`` from its rows and compare.

    Returns a :class:`VerifyResult`; ``ok`` is False on any drift. With ``repair``
    the drift is fixed (statistics rebuilt when they drifted, drifted rows rescored).
    """
    started = time.time()
    database = Database(db)
    database.dataset(table)  # NoTable before any lock file is made
    if not repair:
        return _verify(database, table, False, started)
    with writer_lock(database, table):  # no commit may land between the check and the repair
        return _verify(database, table, True, started)


def _verify(database: Database, table: str, repair: bool, started: float) -> VerifyResult:
    dataset = database.dataset(table)
    dim = TableMeta.from_schema(dataset.schema).dim
    store = StatsStore(database, table)
    record = store.load()
    history = store.history()
    truth = accumulate(dataset, dim)
    rows = sum(s.n for s in truth.modalities.values())
    result = VerifyResult(table, dataset.version, rows, record.version if record else None,
                          record.table_version if record else None)

    stats_drift = _check_stats(result, record, truth, history)
    drifted_rowids = _check_rows(result, dataset, truth, history)
    if record is not None and record.table_version != dataset.version:
        result.warnings.append(f"statistics record describes table version {record.table_version}, "
                               f"the table is at {dataset.version} (rebuilt on next use)")
    if repair and (result.issues or result.warnings):
        _repair(result, database, table, dataset, record, truth, stats_drift, drifted_rowids)
    result.seconds = time.time() - started
    return result


# -- statistics ---------------------------------------------------------------------------

def _check_stats(result: VerifyResult, record: TableStats | None, truth: TableStats,
                 history: dict) -> bool:
    """Compare the stored record with the recomputed sums; True when a rebuild is needed."""
    if record is None:
        if truth.nonempty():
            result.issues.append(Issue("stats_missing", None, result.rows,
                                       "no statistics record for a table with rows"))
            return True
        return False
    drift = False
    for m in sorted(set(truth.nonempty()) | set(record.nonempty())):
        got, want = record.modalities.get(m), truth.modalities.get(m)
        problem = _sums_problem(got, want)
        if problem:
            n_rows = want.n if want is not None else 0
            result.issues.append(Issue("stats_sums", m, n_rows, problem))
            drift = True
            continue
        entry = history.get((record.version, m))
        if entry is None or entry.n != got.n or not np.allclose(entry.U, got.U, rtol=0, atol=1e-9 * max(got.n, 1)) \
                or not np.allclose(entry.S, got.S, rtol=0, atol=1e-9 * max(got.a, 1.0)):
            result.issues.append(Issue("stats_history", m, want.n,
                                       f"history of stats version {record.version} "
                                       + ("is missing" if entry is None else "disagrees with the record")))
            drift = True
        sketch = _sketch_problem(got.hist, want.hist)
        if sketch:
            result.issues.append(Issue("sketch", m, want.n, sketch))
    return drift


def _sums_problem(got, want) -> str | None:
    if got is None or want is None:
        return f"stored n={0 if got is None else got.n}, rows hold n={0 if want is None else want.n}"
    if got.n != want.n:
        return f"stored n={got.n}, rows hold n={want.n}"
    scale = max(want.a, 1e-30)
    if np.linalg.norm(got.S - want.S) > SUM_RTOL * scale:
        return f"raw sum S off by {np.linalg.norm(got.S - want.S):.3g}"
    if np.linalg.norm(got.U - want.U) > SUM_RTOL * max(want.n, 1):
        return f"unit sum U off by {np.linalg.norm(got.U - want.U):.3g}"
    if abs(got.a - want.a) > SUM_RTOL * scale or abs(got.b - want.b) > SUM_RTOL * max(want.b, 1e-30):
        return "norm moments a, b differ"
    if want.n > 1:
        cov_got, cov_want = got.covariance, want.covariance
        err = np.linalg.norm(cov_got - cov_want)
        if not err <= COV_RTOL * np.linalg.norm(cov_want) + 1e-12:
            return f"covariance off by {err:.3g} (Frobenius)"
    return None


def _sketch_problem(got: np.ndarray, want: np.ndarray) -> str | None:
    """The sketch must count the stored conformities; a value may sit one bin off."""
    total_got, total_want = int(got.sum()), int(want.sum())
    if total_got != total_want:
        return f"sketch counts {total_got} conformity values, rows hold {total_want}"
    gap = int(np.abs(np.cumsum(got) - np.cumsum(want)).max()) if len(want) else 0
    allowed = max(2, total_want // 1000)
    if gap > allowed:
        return f"sketch CDF off by {gap} rows (allowed {allowed})"
    return None


# -- rows -----------------------------------------------------------------------------------

class _RowCheck:
    """Accumulates per-kind drift counts, example ids and the row ids to rescore."""

    def __init__(self):
        self.counts: dict[tuple[str, str], int] = {}
        self.examples: dict[tuple[str, str], list] = {}
        self.rowids: list[np.ndarray] = []
        self.max_error = 0.0

    def flag(self, kind: str, modality: str, mask: np.ndarray, ids, rowids) -> None:
        k = int(mask.sum())
        if not k:
            return
        key = (kind, modality)
        self.counts[key] = self.counts.get(key, 0) + k
        room = EXAMPLES - len(self.examples.setdefault(key, []))
        if room > 0:
            self.examples[key] += [ids[i] for i in np.flatnonzero(mask)[:room]]
        self.rowids.append(rowids[mask])


def _check_rows(result: VerifyResult, dataset, truth: TableStats, history: dict) -> np.ndarray:
    """Stream the rows and compare stored scores with exact ones; returns drifted row ids."""
    check = _RowCheck()
    live = truth.nonempty()
    columns = ["id", "modality", "embedding", "norm", "conformity", "conformity_est", "stats_version"]
    for batch in dataset.to_batches(columns=columns, with_row_id=True, batch_size=SCAN_BATCH_ROWS):
        X = vectors(batch)
        rowids = batch.column("_rowid").to_numpy()
        ids = batch.column("id").to_pylist()
        mods = np.asarray(batch.column("modality").to_pylist(), dtype=object)
        version = pc.fill_null(batch.column("stats_version"), -1).to_numpy().astype(np.int64)
        stored = _floats(batch, "conformity")
        est = _floats(batch, "conformity_est")
        norm_stored = _floats(batch, "norm")
        norms = row_norms(X).astype(np.float64)
        for m in np.unique(mods):
            rows = mods == m
            _check_modality(check, str(m), rows, X, norms, norm_stored, version, stored, est,
                            live.get(str(m)), history, ids, rowids)
    for (kind, m), k in sorted(check.counts.items()):
        result.issues.append(Issue(kind, m, k, _DETAIL[kind], check.examples[(kind, m)]))
    result.max_conformity_error = check.max_error
    return np.unique(np.concatenate(check.rowids)) if check.rowids else np.zeros(0, np.uint64)


_DETAIL = {
    "unscored": "never scored (stats_version is null)",
    "unknown_version": "scored with a stats version the history does not hold",
    "conformity": f"stored conformity differs from exact by more than the staleness bound + {SCORE_SLACK}",
    "conformity_est": f"stored conformity_est differs from cos(x, mean) of its version by > {EST_TOLERANCE}",
    "norm": "stored norm differs from the vector's norm",
}


def _floats(batch, name: str) -> np.ndarray:
    return batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _check_modality(check, m, rows, X, norms, norm_stored, version, stored, est, truth_m,
                    history, ids, rowids) -> None:
    bad_norm = rows & ~(np.abs(norm_stored - norms) <= NORM_RTOL * norms)
    check.flag("norm", m, bad_norm, ids, rowids)
    unscored = rows & (version < 0)
    check.flag("unscored", m, unscored, ids, rowids)
    if truth_m is None:
        return
    scored = rows & (version >= 0)
    inv = 1.0 / norms
    dots_u = (X[scored] @ truth_m.U.astype(np.float32)).astype(np.float64) * inv[scored]
    if truth_m.n >= 2:
        exact_c = (dots_u - 1.0) / (truth_m.n - 1)
    else:
        exact_c = np.full(len(dots_u), np.nan)
    pos = np.flatnonzero(scored)
    for v in np.unique(version[scored]).tolist():
        at = version[pos] == v
        sel = pos[at]
        entry = history.get((v, m))
        mask = np.zeros(len(rows), bool)
        if entry is None:
            mask[sel] = True
            check.flag("unknown_version", m, mask, ids, rowids)
            continue
        bound = staleness_bound(entry, truth_m) + SCORE_SLACK
        err = np.abs(stored[sel] - exact_c[at])
        both_nan = np.isnan(stored[sel]) & np.isnan(exact_c[at])
        err = np.where(both_nan, 0.0, err)
        finite = np.isfinite(err)
        if finite.any():
            check.max_error = max(check.max_error, float(err[finite].max()))
        mask[sel] = ~(err <= bound)
        check.flag("conformity", m, mask, ids, rowids)
        if entry.n >= 1:
            mean_v = entry.S / entry.n
            mean_norm = float(np.linalg.norm(mean_v))
            cos = (X[sel] @ mean_v.astype(np.float32)).astype(np.float64) * inv[sel] / mean_norm
            bad = ~(np.abs(est[sel] - cos) <= EST_TOLERANCE) & ~(np.isnan(est[sel]) & np.isnan(cos))
            mask_est = np.zeros(len(rows), bool)
            mask_est[sel] = bad
            check.flag("conformity_est", m, mask_est, ids, rowids)


# -- repair ---------------------------------------------------------------------------------

def _repair(result, database, table, dataset, record, truth, stats_drift, drifted_rowids) -> None:
    store = StatsStore(database, table)
    if stats_drift or record is None:
        stats = rebuild(database, table, dataset)
    else:
        stats = record.copy()
        for m, s in truth.modalities.items():  # the sketch counts what the rows hold
            if m in stats.modalities:
                stats.modalities[m].hist = s.hist.copy()
    index = read_index(dataset)
    target = np.isin(index.rowid, drifted_rowids)
    if stats_drift:
        # Rows whose stored conformity no longer fits the rebuilt statistics' bound.
        target |= _outside_bound(index, stats, store.history())
    dataset, rescored = score_rows(dataset, stats, target, index,
                                   message=f"curator verify --repair v{stats.version}")
    stats.table_version = dataset.version
    store.save(stats)
    result.repaired = True
    result.rows_rescored = rescored
    result.table_version_after = dataset.version
    result.stats_version_after = stats.version


def _outside_bound(index, stats: TableStats, history: dict) -> np.ndarray:
    """Rows of stats versions not in the history (their staleness cannot be bounded)."""
    out = np.zeros(len(index.rowid), bool)
    for code, m in enumerate(index.names):
        rows = index.modality == code
        for v in np.unique(index["stats_version"][rows]).tolist():
            if v >= 0 and (v, m) not in history:
                out |= rows & (index["stats_version"] == v)
    return out


__all__ = ["SCORE_SLACK", "Issue", "VerifyResult", "verify"]
