"""``verify``: recompute statistics and scores from the rows and report any drift.

The table is the truth; statistics and score columns are derived from it. ``verify``
streams the table twice (bounded memory): first it recomputes every modality's sums
(:func:`curator.engine.statistics.accumulate`) and compares them with the stored
record; then (:mod:`curator.maintenance.checks`) every row's every score column is
compared with its exact value now (within the bound ``stats`` reports for its
(modality, version) group plus float32 allowance) and with its value at the row's own
statistics version (a row is never written with scores of two versions).

Drift kinds (``VerifyResult.issues``, each ``{kind, modality, rows, detail}``):

- ``stats_missing``: no statistics record although the table holds rows;
- ``stats_sums``: a modality's stored ``n``, ``S``, ``U``, ``a``, ``b`` or covariance
  differ from the recomputed sums (a lost or partial update);
- ``stats_history``: the record's version has no history entry, or it disagrees;
- ``sketch``: the uncertainty sketch does not count the stored conformity values;
- ``unscored``: rows never scored (``stats_version`` null);
- ``unknown_version``: rows scored with a stats version absent from the history;
- ``conformity``, ``conformity_est``, ``uncertainty``, ``loglik``, ``alignment``,
  ``alignment_centered``, ``conformity_mismatch``: stored values further from the exact
  value than their bound;
- ``mixed_version``: a stored value that is not the one of the row's own version, or a
  caption and its image at different versions;
- ``pair_dot`` (a seeded sample of captions) and ``norm``: stored values that do not
  match the vectors.

A stale record (``record_table_version`` ≠ the table's version, sums still right) is
reported as a warning only: it is consistent, and the next command moves or rebuilds it.

``repair=True`` rebuilds the statistics from the rows when they drifted, refreshes the
record otherwise, and rescores the drifted rows (whole samples) at a new statistics
version in one commit, so that a second ``verify`` is clean. Without drift it writes
nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..engine.scoring import Scoring
from ..engine.statistics import accumulate, bounds, current, rebuild
from ..engine.targets import choose
from ..geometry.sums import TableStats
from ..store.database import Database, TableMeta
from ..store.lock import writer_lock
from ..store.statistics import StatsStore
from .checks import check_rows
from .refresh import prune

SCORE_SLACK = 2e-5  # float32 storage and float32 dot products
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
    max_errors: dict = field(default_factory=dict)  # column -> largest |stored − exact now|
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
            "max_conformity_error": self.max_conformity_error, "max_errors": self.max_errors,
            "repaired": self.repaired,
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
        moved = None
        if _behind(database, table):  # the lock only when there is something to move
            with writer_lock(database, table):
                moved = _bring_forward(database, table)
        return _verify(database, table, False, started, moved)
    with writer_lock(database, table):  # no commit may land between the check and the repair
        return _verify(database, table, True, started, _bring_forward(database, table))


def _behind(database: Database, table: str) -> tuple[int, int] | None:
    """(the record's table version, the table's) when the statistics record describes an
    older table version than the latest; else None."""
    record = StatsStore(database, table).load()
    version = database.dataset(table).version
    return None if record is None or record.table_version == version else (record.table_version, version)


def _bring_forward(database: Database, table: str) -> str | None:
    """Bring a record that is behind the table to the table's version, as every command
    does first (carried forward when no row changed, else rebuilt from the rows: a writer
    killed between its table commit and its record save leaves this state, and the
    rebuild numbers the record as that writer would have), so ``verify`` judges the state
    the next command will see. Returns the warning saying so, or None."""
    behind = _behind(database, table)
    if behind is None:
        return None
    stats = current(database, table)
    return (f"statistics record described table version {behind[0]}, the table is at "
            f"{behind[1]}: brought forward (stats version {stats.version}), as any command does first")


def _verify(database: Database, table: str, repair: bool, started: float,
            moved: str | None = None) -> VerifyResult:
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
    bound_of = None
    if record is not None and not stats_drift:
        _, bound_of = bounds(dataset, record, history)
    findings = check_rows(dataset, truth, record, history, bound_of)
    for (kind, m), k in sorted(findings.counts.items()):
        result.issues.append(Issue(kind, m, k, _DETAIL.get(kind, _DETAIL["column"]),
                                   findings.examples[(kind, m)]))
    result.max_conformity_error = findings.max_error.get("conformity", 0.0)
    result.max_errors = dict(findings.max_error)
    if record is not None and record.table_version != dataset.version:
        result.warnings.append(f"statistics record describes table version {record.table_version}, "
                               f"the table is at {dataset.version} (moved or rebuilt on next use)")
    if repair and (result.issues or result.warnings):
        _repair(result, database, table, dataset, record, truth, stats_drift, findings.to_fix())
    if moved:  # said, not repaired: the record was brought forward before the check
        result.warnings.insert(0, moved)
    result.seconds = time.time() - started
    return result


_DETAIL = {
    "unscored": "never scored (stats_version is null)",
    "unknown_version": "scored with a stats version the history does not hold",
    "mixed_version": "a stored score is not the value of the row's own statistics version "
                     "(or a caption and its image were scored at different versions)",
    "pair_dot": "stored image-caption dot differs from the two vectors' dot",
    "norm": "stored norm differs from the vector's norm",
    "column": "stored value differs from the exact value by more than its staleness bound "
              "+ float32 allowance",
}


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


# -- repair ---------------------------------------------------------------------------------

def _repair(result, database, table, dataset, record, truth, stats_drift, drifted) -> None:
    store = StatsStore(database, table)
    if stats_drift or record is None:
        stats = rebuild(database, table, dataset)
    else:
        stats = record.copy()
        for m, s in truth.modalities.items():  # the sketch counts what the rows hold
            if m in stats.modalities:
                stats.modalities[m].hist = s.hist.copy()
    chosen = choose(dataset, rows=drifted) if len(drifted) else {}
    if chosen:
        stats.version = store.latest_version() + 1
        with Scoring(dataset, stats) as scoring:
            scoring.score_existing(chosen)
            outcome = scoring.finish()
        dataset = outcome.commit(dataset, f"curator verify --repair v{stats.version}")
        store.append_history(stats)  # after the commit, as refresh does
        result.rows_rescored = outcome.rows
    stats.table_version = dataset.version
    store.save(stats)
    prune(database, table, dataset)
    result.repaired = True
    result.table_version_after = dataset.version
    result.stats_version_after = stats.version


__all__ = ["SCORE_SLACK", "Issue", "VerifyResult", "verify"]
