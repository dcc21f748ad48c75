"""``rebalance``: MetaCLIP-style frequency caps, seeded, decided once per sample.

**Groups.** A deciding row falls in a group of its modality: its concept ``cluster``, the
value of a metadata column (a label, a source domain), or its ``conformity`` cut into
``bins`` equal-width bins between the min and max conformity of the modality's deciding
rows. A group holding ``c`` deciding rows keeps each with probability
``p = min(1, cap / c)``: groups at or under the cap stay whole, crowded groups are thinned
to about ``cap``. With ``by='conformity'`` the cap thins the crowded generic middle and
keeps the rare tails. Rows with a null key (no cluster, no label) form their own group.

**Per sample** (``per='sample'``, the default). A sample is decided once, by its
*deciding row*: its row of ``modality`` that passes ``where`` (with several, the one with
the smallest id). ``modality`` defaults to ``image`` when the table has image rows, else
to its only modality (a table of several modalities without images needs ``modality``).
Every row of the sample gets the decision of its deciding row, except rows that fail
``where``, which get false. A sample without a deciding row (captions without an image,
or an image that fails ``where``) gets false on every row: a balance of image concepts
has no place for it, and the result counts such samples (``undecided_samples``). A row
without a ``sample_id`` is a sample of its own. Counts are of samples (deciding rows),
so "largest group 1239 -> 205" counts samples, i.e. images.

**Per row** (``per='row'``). Each row of ``modality`` (of every modality when None) is
decided on its own by its group within its modality; rows failing ``where`` get false,
rows of other modalities keep the column's value.

**Reproducible.** A deciding row is kept when ``u < p`` where ``u`` ∈ [0, 1) is the first
8 bytes (little endian, top 53 bits) of ``blake2b(f"{seed}:{id}", digest_size=8)`` of its
id, so the same seed gives the same decisions whatever the batch or fragment layout or
engine, and another seed gives other ones. Per sample with the image modality, an image
gets the decision ``per='row'`` would give it.

**Where it goes.** The decision is written to ``into`` (default ``rebalance_keep``), a
boolean column added by data evolution when missing, so several balances coexist
(``--into flat_keep``) and combine in one predicate. The pass over the table is one
per-piece function (:func:`piece_units`, run by the executor, so ``engine='ray'`` decides
the same) reading scalar columns only (never the vectors). Memory is set by a piece, not
the table: each piece's row ids, sample ids and candidate decisions go to Parquet in a
temporary spill folder as they arrive, and the global step (each sample's deciding row,
the group counts, the decisions, every row's value) runs in DuckDB within its memory
limit, spilling joins and aggregates to disk (:class:`Decisions`). The values come back
one fragment at a time, one task per fragment writes its column file, one commit.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..engine.executor import executor
from ..engine.fragments import Piece, pieces
from ..engine.spill import ScalarSpill, connect, fragment_rows, quote
from ..errors import BadInput
from ..store.columns import SCAN_BATCH_ROWS, commit_updates, update_fragment
from ..store.database import Database
from ..store.predicate import Predicate, parse
from ..store.schema import column_names
from ..store.versions import curation_step

CONFORMITY = "conformity"
DEFAULT_INTO = "rebalance_keep"
PER = ("sample", "row")
_NO_GROUP = ("embedding", "id", "_rowid")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class RebalanceResult:
    """What a rebalance decided, per group, and on which table versions.

    ``units`` are samples (``per='sample'``) or rows (``per='row'``); group ``before`` and
    ``after`` count units. ``counts`` holds, per modality, the rows and samples set true:
    what an export of ``--where <into>`` writes.
    """

    by: str
    cap: int
    seed: int
    per: str
    modality: str | None  # per sample: the deciding modality; per row: the decided one
    where: str | None  # the normalised predicate
    into: str
    bins: int | None
    units: int  # samples (or rows) decided: their deciding row passed --where
    kept_units: int
    expected_kept: float  # Σ min(c, cap) over the groups: units expected to be kept
    undecided_samples: int  # per sample: samples without a deciding row (all rows false)
    rows: int  # rows written
    kept: int  # rows set true
    counts: dict = field(default_factory=dict)  # modality -> {rows, samples} set true
    groups: list[dict] = field(default_factory=list)  # {modality, group, before, after, p}
    histograms: dict = field(default_factory=dict)  # conformity: modality -> {edges, before, after}
    table_version_read: int = 0
    table_version: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        what = f"{self.by} ({self.bins} bins)" if self.bins else self.by
        unit = "samples" if self.per == "sample" else "rows"
        how = (f"per sample (decided by the {self.modality} row)" if self.per == "sample"
               else f"per row ({self.modality} rows)" if self.modality else "per row")
        where = f", where {self.where}" if self.where else ""
        per_mod = ", ".join(f"{m} {c['rows']}" for m, c in self.counts.items()) or "none"
        lines = [(f"rebalanced table version {self.table_version_read} by {what} {how}, cap "
                  f"{self.cap}, seed {self.seed}{where}: kept {self.kept_units} of {self.units} "
                  f"{unit} (expected {self.expected_kept:.1f}); {self.into} true on {self.kept} "
                  f"of {self.rows} rows ({per_mod}); wrote version {self.table_version}")]
        by_modality: dict[str, list[dict]] = {}
        for g in self.groups:
            by_modality.setdefault(g["modality"], []).append(g)
        for m, groups in by_modality.items():
            before = [g["before"] for g in groups]
            after = [g["after"] for g in groups]
            lines.append(f"  {m}: {len(groups)} groups of {unit}; largest {max(before)} -> "
                         f"{max(after)}, smallest {min(before)} -> {min(after)}, "
                         f"max/min {_ratio(before):.3g} -> {_ratio(after):.3g}")
        if self.undecided_samples:
            passing = " passing the predicate" if self.where else ""
            lines.append(f"  {self.undecided_samples} samples with no {self.modality} row"
                         f"{passing}: {self.into} false on all their rows")
        for m, h in self.histograms.items():
            lines.append(f"  {m} conformity histogram before: {h['before']}")
            lines.append(f"  {m} conformity histogram after:  {h['after']}")
        return "\n".join(lines)


@curation_step
def rebalance(*, db=None, table: str = "embeddings", cap: int, by: str = "cluster",
              bins: int = 20, modality: str | None = None, per: str = "sample",
              where: str | None = None, into: str = DEFAULT_INTO, seed: int = 0,
              engine: str | None = None) -> RebalanceResult:
    """Keep each sample (or row) of a group of ``c`` with probability ``min(1, cap / c)``;
    writes the boolean column ``into`` in one commit (see the module docstring for the
    rules) and returns counts before and after. Everything is checked before anything is
    written. ``engine`` ``ray`` runs the pass on Ray (same decisions)."""
    if not isinstance(cap, (int, np.integer)) or isinstance(cap, bool) or cap < 1:
        raise BadInput("--cap must be an integer ≥ 1")
    if by == CONFORMITY and (not isinstance(bins, (int, np.integer)) or bins < 1):
        raise BadInput("--bins must be an integer ≥ 1")
    if per not in PER:
        raise BadInput(f"--per must be one of {', '.join(PER)}")
    database = Database(db)
    dataset = database.dataset(table)
    read_version = dataset.version
    schema = dataset.schema
    _check_key(schema, by)
    _check_into(schema, into, by)
    if where is not None and not str(where).strip():
        raise BadInput("--where is empty; leave it out to count every row")
    predicate = parse(where, schema)
    run = executor(engine)
    if per == "sample" and modality is None:
        modality = _deciding_modality(dataset, run)
    plan = Plan(per, modality, predicate, by, seed)
    bins = bins if by == CONFORMITY else None
    with ScalarSpill(_rows_schema()) as rows:
        candidates = ScalarSpill(_candidates_schema(schema.field(by).type), rows.folder)
        _scan(dataset, plan, run, rows, candidates)
        con = connect(rows.folder)
        try:
            decided = Decisions(con, rows, candidates, plan, cap, bins)
            if decided.units == 0:
                what = f" of modality {modality!r}" if modality else ""
                passing = " passing --where" if predicate is not None else ""
                raise BadInput(f"no rows{what}{passing} in table {table!r} to rebalance")
            if by == "cluster" and decided.keyed == 0:
                raise BadInput("column cluster is empty: run `curator cluster` first, or use --by")
            decided.values()

            if into not in schema.names:  # nothing can fail past here but the writes themselves
                dataset.add_columns([pa.field(into, pa.bool_())])
                dataset = database.dataset(table)
            written = commit_updates(dataset, run.map(update_fragment, decided.fragment_jobs(dataset, into)),
                                     f"curator rebalance {into} by {by} cap {cap} seed {seed}")
            return decided.result(into, read_version, written.version)
        finally:
            con.close()


# -- the plan and the pass -------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What the pass needs on every piece (pickled to Ray workers)."""

    per: str
    modality: str | None  # the deciding (per sample) or decided (per row) modality
    predicate: Predicate | None
    by: str
    seed: int

    def columns(self) -> list[str]:
        extra = self.predicate.columns if self.predicate is not None else ()
        return list(dict.fromkeys(["id", "sample_id", "modality", self.by, *extra]))


def piece_units(piece: Piece, plan: Plan) -> tuple[pa.Table, pa.Table]:
    """The pass's per-piece function, on scalar columns only. Returns ``rows``
    (``_rowid``, ``sample_id``, ``modality``, ``passes``) of the rows the rebalance writes,
    and ``candidates`` (``_rowid``, ``sample_id``, ``modality``, ``id``, ``u``, ``key``) of the
    rows that may decide: those of the modality that pass the predicate."""
    rows, candidates = [], []
    for batch in piece.batches(plan.columns(), with_row_id=True, batch_size=SCAN_BATCH_ROWS * 4):
        n = batch.num_rows
        passes = plan.predicate.mask(batch) if plan.predicate is not None else np.ones(n, bool)
        mods = batch.column("modality")
        if plan.modality is None:
            scope = np.ones(n, bool)
        else:
            scope = pc.fill_null(pc.equal(mods, plan.modality), False).to_numpy(zero_copy_only=False)
        written = np.ones(n, bool) if plan.per == "sample" else scope
        rows.append(pa.table({
            "_rowid": batch.column("_rowid").filter(pa.array(written)),
            "sample_id": batch.column("sample_id").cast(pa.string()).filter(pa.array(written)),
            "modality": mods.filter(pa.array(written)),
            "passes": pa.array(passes[written]),
        }))
        chosen = pa.array(scope & passes)
        part = batch.filter(chosen)
        candidates.append(pa.table({
            "_rowid": part.column("_rowid"),
            "sample_id": part.column("sample_id").cast(pa.string()),
            "modality": part.column("modality"),
            "id": part.column("id"),
            "u": pa.array(uniforms(part.column("id"), plan.seed)),
            "key": part.column(plan.by),
        }))
    return _concat(rows), _concat(candidates)


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    return pa.concat_tables(tables) if tables else None


def _rows_schema() -> pa.Schema:
    return pa.schema([("_rowid", pa.uint64()), ("sample_id", pa.string()), ("modality", pa.string()),
                      ("passes", pa.bool_())])


def _candidates_schema(key: pa.DataType) -> pa.Schema:
    return pa.schema([("_rowid", pa.uint64()), ("sample_id", pa.string()), ("modality", pa.string()),
                      ("id", pa.string()), ("u", pa.float64()), ("key", key)])


def _scan(dataset, plan: Plan, run, rows: ScalarSpill, candidates: ScalarSpill) -> None:
    """The pass over every piece; each piece's rows and candidates go to disk as it
    arrives, so the driver holds one piece's scalars at a time."""
    seen = False
    for r, c in run.map(piece_units, [(p, plan) for p in pieces(dataset)]):
        if r is not None:
            seen = True
            rows.add(r, "rows")
            candidates.add(c, "candidates")
    if not seen:
        raise BadInput("the table has no rows to rebalance")


def piece_modalities(piece: Piece) -> set:
    """The modalities present in a piece (the default --modality's pass)."""
    found: set = set()
    for batch in piece.batches(["modality"], batch_size=SCAN_BATCH_ROWS * 4):
        found.update(pc.unique(batch.column("modality")).to_pylist())
    return found


def _deciding_modality(dataset, run) -> str:
    """``image`` when the table has image rows, else its only modality."""
    found: set = set()
    for part in run.map(piece_modalities, [(p,) for p in pieces(dataset)]):
        found |= part
    found.discard(None)
    if "image" in found or not found:
        return "image"
    if len(found) == 1:
        return found.pop()
    raise BadInput(f"the table has no image rows and several modalities ({', '.join(sorted(found))}): "
                   "choose the deciding one with --modality")


def uniforms(ids: pa.Array, seed: int) -> np.ndarray:
    """Each id's uniform in [0, 1): top 53 bits of blake2b(f"{seed}:{id}"), little endian."""
    out = np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little")
         for i in ids.to_pylist()), np.uint64, len(ids))
    return (out >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# -- decisions, out of core ----------------------------------------------------------

class Decisions:
    """The global step in DuckDB over the spilled scalars, within its memory limit: the
    deciding row of each sample, the group counts, each unit's decision and the value of
    every written row. Intermediate results are Parquet files in the spill folder; what
    stays in Python is one entry per group.

    ``units``: deciding rows; ``keyed``: those with a non-null group key."""

    def __init__(self, con, rows: ScalarSpill, candidates: ScalarSpill, plan: Plan, cap: int,
                 bins: int | None):
        self.con, self.plan, self.cap, self.bins = con, plan, cap, bins
        self.folder = rows.folder
        rows.attach(con, "rows", "rows")
        candidates.attach(con, "candidates", "candidates")
        if plan.per == "row":
            deciding = "SELECT _rowid, sample_id, modality, u, key FROM candidates"
        else:  # each sample's candidate with the smallest id; rows without a sample are their own
            deciding = ("SELECT s._rowid, sample_id, s.modality, s.u, s.key FROM ("
                        "SELECT sample_id, arg_min({'_rowid': _rowid, 'modality': modality, "
                        "'u': u, 'key': key}, id) AS s FROM candidates WHERE sample_id IS NOT NULL "
                        "GROUP BY sample_id) UNION ALL "
                        "SELECT _rowid, sample_id, modality, u, key FROM candidates WHERE sample_id IS NULL")
        self._save("deciding", deciding)
        self.edges: dict = {}
        gkey = "key"
        if bins:
            gkey = self._bins(bins)
        self._save("grouped", f"SELECT _rowid, sample_id, modality, u, {gkey} AS gkey FROM deciding d"
                              + (" LEFT JOIN bounds b USING (modality)" if bins else ""))
        counts = con.sql("SELECT modality, gkey, count(*) AS before FROM grouped "
                             "GROUP BY ALL").to_arrow_table()
        before = counts.column("before").to_numpy().astype(np.int64)
        p = np.minimum(1.0, cap / before.astype(np.float64)) if len(before) else np.zeros(0)
        con.register("group_p", counts.append_column("p", pa.array(p, pa.float64())))
        self._save("decided", "SELECT d._rowid, d.sample_id, d.modality, d.u < g.p AS keep, "
                              "g.modality AS gm, g.gkey AS gk FROM grouped d JOIN group_p g "
                              "ON d.modality IS NOT DISTINCT FROM g.modality "
                              "AND d.gkey IS NOT DISTINCT FROM g.gkey")
        after = {(m, _plain(k)): int(n) for m, k, n in con.execute(
            "SELECT gm, gk, count(*) FILTER (WHERE keep) FROM decided GROUP BY ALL").fetchall()}
        groups = []
        for m, k, c, q in zip(counts.column("modality").to_pylist(), counts.column("gkey").to_pylist(),
                              before.tolist(), p.tolist()):
            groups.append({"modality": m, "group": _plain(k), "before": int(c),
                           "after": after.get((m, _plain(k)), 0), "p": float(q)})
        groups.sort(key=lambda g: (str(g["modality"]), g["group"] is None, _sortable(g["group"])))
        self.groups = groups
        self.units = int(before.sum())
        self.keyed = sum(g["before"] for g in groups if g["group"] is not None)
        self.kept_units = sum(g["after"] for g in groups)

    def _save(self, name: str, query: str) -> None:
        """Write ``query``'s rows to ``<name>.parquet`` and make ``name`` a view of it."""
        path = os.path.join(self.folder, f"{name}.parquet")
        self.con.execute(f"COPY ({query}) TO {quote(path)} (FORMAT parquet)")
        self.con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({quote(path)})")

    def _bins(self, bins: int) -> str:
        """The conformity bin of each deciding row: ``bins`` equal-width bins between the min
        and max of its modality (float64 arithmetic, as ``numpy`` would do it); null for a
        null or NaN conformity."""
        found = self.con.execute("SELECT modality, CAST(min(key) AS DOUBLE), CAST(max(key) AS DOUBLE) "
                                 "FROM deciding WHERE key IS NOT NULL AND NOT isnan(key) "
                                 "GROUP BY modality").fetchall()
        bounds = pa.table({"modality": pa.array([m for m, _, _ in found], pa.string()),
                           "lo": pa.array([lo for _, lo, _ in found], pa.float64()),
                           "hi": pa.array([hi for _, _, hi in found], pa.float64())})
        self.con.register("bounds", bounds)
        self.edges = {str(m): np.linspace(lo, hi, bins + 1).tolist() for m, lo, hi in found}
        return ("CASE WHEN d.key IS NULL OR isnan(d.key) OR b.lo IS NULL THEN NULL "
                f"WHEN b.hi > b.lo THEN least(CAST(trunc((CAST(d.key AS DOUBLE) - b.lo) / (b.hi - b.lo) * {int(bins)}) "
                f"AS BIGINT), {int(bins) - 1}) ELSE CAST(0 AS BIGINT) END")

    def values(self) -> None:
        """The value of every written row, partitioned by fragment under ``values/``: per
        sample, a row passing the predicate gets its sample's decision and a row without a
        sample its own (false unless it decided); per row, a deciding row its decision and
        every other row of the modality false."""
        if self.plan.per == "sample":
            query = ("SELECT r._rowid >> 32 AS fragment, r._rowid, r.modality, r.sample_id, "
                     "CASE WHEN r.sample_id IS NULL THEN coalesce(solo.keep, false) "
                     "ELSE r.passes AND k.sample_id IS NOT NULL END AS value FROM rows r "
                     "LEFT JOIN (SELECT sample_id FROM decided WHERE keep AND sample_id IS NOT NULL) k "
                     "ON r.sample_id = k.sample_id "
                     "LEFT JOIN (SELECT _rowid, keep FROM decided WHERE sample_id IS NULL) solo "
                     "ON r._rowid = solo._rowid")
        else:
            query = ("SELECT r._rowid >> 32 AS fragment, r._rowid, r.modality, r.sample_id, "
                     "coalesce(d.keep, false) AS value FROM rows r LEFT JOIN decided d ON r._rowid = d._rowid")
        path = os.path.join(self.folder, "values")
        self.con.execute(f"COPY ({query}) TO {quote(path)} (FORMAT parquet, PARTITION_BY (fragment))")
        self.con.execute("CREATE OR REPLACE VIEW written AS SELECT * FROM read_parquet("
                         f"{quote(os.path.join(path, '*', '*.parquet'))}, hive_partitioning = false)")

    def fragment_jobs(self, dataset, into: str):
        """(fragment, its rows' ``_rowid`` and ``into`` in row-id order) of each fragment
        with written rows, for :func:`update_fragment`."""
        for fragment in dataset.get_fragments():
            part = fragment_rows(os.path.join(self.folder, "values"), fragment.fragment_id, ["_rowid", "value"],
                                 "_rowid")
            if part is None:
                continue
            yield fragment, pa.table({"_rowid": part.column("_rowid").cast(pa.uint64()),
                                      into: part.column("value").cast(pa.bool_())})

    def result(self, into: str, read_version: int, version: int) -> RebalanceResult:
        plan, con = self.plan, self.con
        rows, kept = con.execute("SELECT count(*), count(*) FILTER (WHERE value) FROM written").fetchone()
        counts = {}
        for m, n, solo in con.execute("SELECT modality, count(*), count(*) FILTER (WHERE sample_id IS NULL) "
                                      "FROM written WHERE value GROUP BY modality ORDER BY modality").fetchall():
            counts[m] = {"rows": int(n), "samples": int(solo)}
        for m, n in con.execute("SELECT modality, count(*) FROM (SELECT DISTINCT modality, sample_id "
                                "FROM written WHERE value AND sample_id IS NOT NULL) GROUP BY modality").fetchall():
            counts[m]["samples"] += int(n)
        undecided = 0
        if plan.per == "sample":
            samples = con.execute("SELECT (SELECT count(*) FROM (SELECT DISTINCT sample_id FROM rows "
                                  "WHERE sample_id IS NOT NULL)) + (SELECT count(*) FROM rows "
                                  "WHERE sample_id IS NULL)").fetchone()[0]
            undecided = int(samples) - self.units
        histograms = {}
        if self.bins:
            for m in sorted({g["modality"] for g in self.groups}):
                mine = {g["group"]: g for g in self.groups if g["modality"] == m}
                histograms[m] = {
                    "edges": self.edges.get(m),
                    "before": [mine[b]["before"] if b in mine else 0 for b in range(self.bins)],
                    "after": [mine[b]["after"] if b in mine else 0 for b in range(self.bins)],
                    "null_before": mine[None]["before"] if None in mine else 0,
                    "null_after": mine[None]["after"] if None in mine else 0,
                }
        return RebalanceResult(
            by=plan.by, cap=int(self.cap), seed=plan.seed, per=plan.per, modality=plan.modality,
            where=plan.predicate.text if plan.predicate is not None else None, into=into, bins=self.bins,
            units=self.units, kept_units=self.kept_units,
            expected_kept=float(sum(min(g["before"], self.cap) for g in self.groups)),
            undecided_samples=undecided, rows=int(rows), kept=int(kept), counts=counts,
            groups=self.groups, histograms=histograms, table_version_read=read_version,
            table_version=version)


# -- checks ----------------------------------------------------------------------------

def _check_key(schema: pa.Schema, by: str) -> None:
    if not by:
        raise BadInput("--by needs cluster, conformity or a column name")
    if by not in schema.names:
        raise BadInput(f"--by {by}: no column {by!r} in the table (columns: "
                       f"{', '.join(n for n in schema.names if n != 'embedding')})")
    kind = schema.field(by).type
    if by in _NO_GROUP or pa.types.is_nested(kind) or (pa.types.is_floating(kind) and by != CONFORMITY):
        raise BadInput(f"--by {by}: cannot group by a column of type {kind} "
                       "(use a label column, cluster, or conformity with --bins)")


def _check_into(schema: pa.Schema, into: str, by: str) -> None:
    """``into`` is a boolean column a predicate can name: the default, a new name, or an
    existing boolean column that is not one of curator's own."""
    if not into or not _NAME.fullmatch(str(into)):
        raise BadInput(f"--into {into!r}: a column name of letters, digits and _ "
                       "(not starting with a digit), so that --where can name it")
    own = {c.lower(): c for c in column_names()}
    if into != DEFAULT_INTO and into.lower() in own:
        raise BadInput(f"--into {into}: {own[into.lower()]} is one of curator's own columns; "
                       "choose another name")
    if into.lower() == by.lower():
        raise BadInput(f"--into {into}: the same column as --by")
    same = [n for n in schema.names if n.lower() == into.lower()]
    if same and same[0] != into:
        raise BadInput(f"--into {into}: the table has a column {same[0]!r} (names are not case "
                       "sensitive in predicates)")
    if same and schema.field(into).type != pa.bool_():
        raise BadInput(f"--into {into}: the column holds {schema.field(into).type}, not "
                       "true/false; choose another name")
    probe = schema if same else schema.append(pa.field(into, pa.bool_()))
    try:
        parse(into, probe, what=f"--into {into}")
    except BadInput:
        raise BadInput(f"--into {into}: not usable as a predicate (a SQL keyword?); choose "
                       "another name") from None


# -- helpers ---------------------------------------------------------------------------

def _sortable(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _ratio(values: list[int]) -> float:
    nonzero = [v for v in values if v > 0]
    return max(nonzero) / min(nonzero) if nonzero else 0.0

