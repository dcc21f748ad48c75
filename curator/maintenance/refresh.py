"""``refresh``: rescore the rows for which any column's staleness bound exceeds a tolerance.

Rows are grouped by (modality, stats_version); ``stats`` bounds every score column of
every group (:mod:`curator.geometry.bounds`). ``refresh --tolerance t`` rescores whole
the groups with a bound above ``t`` (``--columns`` chooses which columns' bounds count),
together with the other image and text rows of their samples, at a new statistics
version, in one commit that writes only score columns (one score file per fragment).
Rescoring changes the uncertainty sketch, which loosens the uncertainty bound of the
rows left alone; refresh repeats (rarely needed) until every counted bound is ≤ ``t``.

``--columns`` without ``loglik`` also skips the whitening product, the one O(n·d²) part:
the rescored rows then hold no ``loglik`` (null), never one of another version.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from ..engine.executor import resolve_engine
from ..engine.scoring import Scoring
from ..engine.statistics import bounds, current
from ..engine.targets import choose
from ..errors import BadInput
from ..geometry.bounds import COLUMNS
from ..store.database import Database
from ..store.lock import writer_lock
from ..store.statistics import StatsStore

MAX_ROUNDS = 4


@dataclass
class RefreshResult:
    rows: int
    table_version_read: int
    table_version: int
    stats_version: int
    max_staleness_before: float | None  # the conformity bound, as `stats` reports it
    tolerance: float
    columns: list[str] = field(default_factory=lambda: list(COLUMNS))
    staleness_before: dict = field(default_factory=dict)  # column -> largest bound before
    staleness_after: dict = field(default_factory=dict)  # column -> largest bound after
    rounds: int = 0
    seconds: float = 0.0
    phases: dict = field(default_factory=dict)  # where the time went (statistics, bounds, vectors, …)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        before = "unbounded" if self.max_staleness_before is None else f"{self.max_staleness_before:.3g}"
        if not self.rows and self.table_version == self.table_version_read:
            return (f"nothing to refresh at tolerance {self.tolerance:g} (max staleness {before}); "
                    f"table unchanged at version {self.table_version}")
        worst = max((v for v in self.staleness_after.values() if v is not None), default=0.0)
        return (f"rescored {self.rows} rows whose bounds exceeded {self.tolerance:g} (conformity "
                f"staleness was {before}; every counted bound now ≤ {worst:.3g}) at statistics "
                f"version {self.stats_version}: table version {self.table_version_read} -> "
                f"{self.table_version}")


def refresh(*, db=None, table: str = "embeddings", tolerance: float = 0.0,
            columns: str | None = None, reference: str | None = None, quiet: bool = True,
            engine: str | None = None) -> RefreshResult:
    """Rescore rows for which the bound of any of ``columns`` (comma-separated; default
    all score columns) exceeds ``tolerance`` (≥ 0).

    With ``reference``, write instead the ``ref_*`` columns scored against that table's
    statistics (:func:`curator.maintenance.reference.score_against`).
    ``engine``: ``local`` or ``ray`` (default ``$CURATOR_ENGINE``, else local).
    """
    if reference:
        from .reference import score_against

        return score_against(db=db, table=table, reference=reference, quiet=quiet, engine=engine)
    started = time.perf_counter()
    if not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise BadInput("--tolerance must be a number ≥ 0")
    counted = parse_columns(columns)
    engine = resolve_engine(engine)
    database = Database(db)
    database.dataset(table)  # a missing table is an error before any lock is taken
    with writer_lock(database, table):
        result = _refresh_locked(database, table, float(tolerance), counted, engine)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def parse_columns(columns) -> list[str]:
    """The score columns named in ``columns`` (comma-separated, or a list); all when None."""
    if columns is None or columns == "":
        return list(COLUMNS)
    names = [c.strip() for c in (columns.split(",") if isinstance(columns, str) else columns)]
    unknown = [c for c in names if c not in COLUMNS]
    if unknown or not names:
        raise BadInput(f"--columns: unknown score column {unknown[0] if unknown else ''!r} "
                       f"(choose from {', '.join(COLUMNS)})")
    return [c for c in COLUMNS if c in names]


def _refresh_locked(database: Database, table: str, tolerance: float, counted: list[str],
                    engine: str) -> RefreshResult:
    store = StatsStore(database, table)
    dataset = database.dataset(table)
    read_version = dataset.version
    result = None
    rows = 0
    phases: dict[str, float] = {}
    everything = False  # the last round rescored every row
    for round_ in range(1, MAX_ROUNDS + 1):
        clock = time.perf_counter()
        stats = current(database, table, dataset, engine=engine)
        history = store.history()
        found, bound_of = bounds(dataset, stats, history)
        _add(phases, "bounds", time.perf_counter() - clock)
        worst = _worst(bound_of, COLUMNS)
        if result is None:
            result = RefreshResult(0, read_version, read_version, stats.version,
                                   worst["conformity"], tolerance, counted, worst)
        stale = [(g.modality, g.version) for g in found
                 if any(bound_of[(g.modality, g.version)][c] > tolerance for c in counted)]
        if not stale:
            result.staleness_after = worst
            break
        clock = time.perf_counter()
        everything = len(stale) == len(found)
        chosen = ({f.fragment_id: None for f in dataset.get_fragments()} if everything
                  else choose(dataset, groups=stale))
        stats.version = store.latest_version() + 1
        _add(phases, "choose", time.perf_counter() - clock)
        with Scoring(dataset, stats, loglik="loglik" in counted, engine=engine) as scoring:
            scoring.score_existing(chosen)
            outcome = scoring.finish()
        for phase, seconds in outcome.seconds.items():
            _add(phases, phase, seconds)
        clock = time.perf_counter()
        dataset = outcome.commit(dataset, f"curator refresh v{stats.version}")
        # After the commit: killed before it, no version number is used up (a rerun gets
        # the same one); killed after it and before the record is saved, the next command
        # rebuilds the record and numbers it this version (statistics.rebuild).
        store.append_history(stats)
        stats.table_version = dataset.version
        store.save(stats)
        _add(phases, "commit", time.perf_counter() - clock)
        rows += outcome.rows
        result.rounds = round_
        result.stats_version = stats.version
        if everything:  # every row now holds the scores of this version: every bound is 0
            result.staleness_after = dict.fromkeys(COLUMNS, 0.0)
            break
    # After a round that rescored every row, the rows reference its version alone.
    prune(database, table, dataset, {result.stats_version} if everything else None)
    result.rows = rows
    result.phases = {k: round(v, 3) for k, v in phases.items()}
    result.table_version = dataset.version
    return result


def prune(database: Database, table: str, dataset, referenced: set[int] | None = None) -> None:
    """Drop the snapshots of versions no row references any more (``referenced``: those
    versions when the caller knows them; else one scan of ``stats_version``)."""
    from ..engine.statistics import referenced_versions

    store = StatsStore(database, table)
    record = store.load()
    if referenced is None:
        referenced = referenced_versions(dataset)
    keep = referenced | ({record.version} if record is not None else set())
    store.prune_snapshots(keep)


def _add(phases: dict, name: str, seconds: float) -> None:
    phases[name] = phases.get(name, 0.0) + seconds


def _worst(bound_of: dict, columns) -> dict:
    out = {}
    for c in columns:
        values = [b[c] for b in bound_of.values()]
        worst = max(values, default=0.0)
        out[c] = None if worst == float("inf") else worst
    return out
